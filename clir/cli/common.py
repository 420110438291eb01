"""Arguments shared by several verbs: the encoder and its overrides (Tevatron's convention: flags win over
the model folder's settings)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from clir.config.flags import positive_int  # noqa: F401  (verbs import it from here)

log = logging.getLogger("clir.cli")

MODEL_FLAGS = (
    "pooling",
    "normalize",
    "query_prefix",
    "passage_prefix",
    "max_query_length",
    "max_passage_length",
    "precision",
)


def add_model_args(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    g = p.add_argument_group("encoder (flags override the model folder's settings)")
    g.add_argument(
        "--model",
        required=required,
        help="a clir model folder, a registered name (see `clir models list`), a Hugging Face backbone folder "
        "or hub id",
    )
    g.add_argument("--pooling", choices=["cls", "mean"])
    g.add_argument(
        "--normalize", dest="normalize", action="store_true", default=None, help="L2-normalise vectors"
    )
    g.add_argument("--no-normalize", dest="normalize", action="store_false")
    g.add_argument("--query-prefix", help='text put before each query (e5: "query: ")')
    g.add_argument("--passage-prefix", help='text put before each passage (e5: "passage: ")')
    g.add_argument("--max-query-length", type=int)
    g.add_argument("--max-passage-length", type=int)
    g.add_argument(
        "--query-routing",
        choices=["source", "target", "none"],
        help="language adapter under the task adapter for queries (madx models)",
    )
    g.add_argument(
        "--doc-routing",
        choices=["source", "target", "none"],
        help="language adapter for documents: source keeps the training language's, target swaps in the "
        "document language's (madx models)",
    )
    g.add_argument(
        "--precision", choices=["auto", "fp32", "bf16", "fp16"], help="autocast precision (default auto)"
    )
    g.add_argument("--device", help="torch device (default: cuda when available, else cpu)")


def given(args: argparse.Namespace, keys: tuple[str, ...]) -> dict[str, Any]:
    """The flags among ``keys`` the user set (None means not given: a file's or model's setting stays)."""
    return {k: v for k in keys if (v := getattr(args, k, None)) is not None}


def model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    out = given(args, MODEL_FLAGS)
    routing = {}
    if getattr(args, "query_routing", None):
        routing["query"] = args.query_routing
    if getattr(args, "doc_routing", None):
        routing["doc"] = args.doc_routing
    if routing:
        out["routing"] = routing
    return out


def deprecated_alias(
    p: argparse.ArgumentParser | argparse._ArgumentGroup, old: str, new: str, **kwargs: Any
) -> None:
    """``old`` still works as a spelling of ``new`` (same ``dest``), hidden from --help; using it logs a
    deprecation warning naming ``new``."""
    action = kwargs.pop("action", "store")
    base = {"store": argparse._StoreAction, "store_const": argparse._StoreConstAction}[action]

    class Deprecated(base):  # type: ignore[valid-type,misc]
        def __call__(self, parser, namespace, values, option_string=None):
            log.warning("%s is deprecated: use %s", option_string, new)
            vars(namespace).setdefault(_SPELLED, {})[self.dest] = option_string
            super().__call__(parser, namespace, values, option_string)

    p.add_argument(old, action=Deprecated, help=argparse.SUPPRESS, **kwargs)


_SPELLED = "_deprecated_spellings"


def spelled(args: argparse.Namespace, dest: str, flag: str) -> str:
    """``flag``, or the deprecated spelling the user typed for ``dest`` (error messages name what was typed)."""
    return getattr(args, _SPELLED, {}).get(dest, flag)
