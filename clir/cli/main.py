"""``clir`` entry point: one sub-command per user verb.

Each verb lives in ``clir/cli/<verb>.py`` and exposes ``HELP``, ``add_arguments(parser)`` and ``run(args)``;
those modules import nothing heavy at top level, so ``clir --help`` is instant."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from clir.errors import ClirError
from clir.version import __version__

# (verb, module); order is the order of `clir --help`. `index merge` is dispatched inside `index`.
VERBS: list[tuple[str, str]] = [
    ("index", "clir.cli.index"),
    ("search", "clir.cli.search"),
    ("evaluate", "clir.cli.evaluate"),
    ("experiment", "clir.cli.experiment"),
    ("train", "clir.cli.train"),
    ("train-mlm-head", "clir.cli.train_mlm_head"),
    ("train-language-adapter", "clir.cli.train_language_adapter"),
    ("serve", "clir.cli.serve"),
    ("models", "clir.cli.models"),
]

log = logging.getLogger("clir")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clir",
        description="Cross-language dense retrieval with adapters: index, search, evaluate, train, serve.",
    )
    parser.add_argument("--version", action="version", version=f"clir {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, modname in VERBS:
        mod = importlib.import_module(modname)
        p = sub.add_parser(
            verb,
            aliases=getattr(mod, "ALIASES", []),
            help=mod.HELP,
            description=getattr(mod, "DESCRIPTION", mod.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def _merge_parser() -> argparse.ArgumentParser:
    """`clir index merge` gets a parser of its own: `clir index` itself takes options, not sub-verbs."""
    from clir.cli import index

    p = argparse.ArgumentParser(prog="clir index merge", description=index.MERGE_HELP)
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("-q", "--quiet", action="store_true")
    index.add_merge_arguments(p)
    p.set_defaults(_run=index.run_merge, verb="index merge")
    return p


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    if verbose < 2:
        # third-party chatter (hub retries, tokenizer notices) is noise at INFO
        for name in (
            "transformers",
            "adapters",
            "httpx",
            "urllib3",
            "numba",
            "faiss",
            "ir_datasets",
            "filelock",
        ):
            logging.getLogger(name).setLevel(logging.ERROR if not verbose else logging.WARNING)
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    verb_at = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if verb_at is not None and argv[verb_at : verb_at + 2] == ["index", "merge"]:
        parser = _merge_parser()
        argv = argv[:verb_at] + argv[verb_at + 2 :]
    args = parser.parse_args(argv)
    if not getattr(args, "verb", None):
        parser.print_help()
        return 0
    _setup_logging(args.verbose, args.quiet)
    if args.verb in _deprecated_verbs():
        log.warning("clir %s is deprecated: use clir %s", args.verb, _deprecated_verbs()[args.verb])
    try:
        return int(args._run(args) or 0)
    except ClirError as e:
        print(f"clir {args.verb}: error: {_one_line(str(e))}", file=sys.stderr)
        return 1
    except OSError as e:
        # the file system refused (no space, a path that cannot be created, permissions): the user's to fix
        log.debug("OS error", exc_info=True)
        where = f": {e.filename}" if e.filename else ""
        print(f"clir {args.verb}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"clir {args.verb}: interrupted", file=sys.stderr)
        return 130


def _deprecated_verbs() -> dict[str, str]:
    """Deprecated verb spellings -> the verb's name (a verb module's ``DEPRECATED_ALIASES``)."""
    out = {}
    for verb, modname in VERBS:
        for alias in getattr(importlib.import_module(modname), "DEPRECATED_ALIASES", []):
            out[alias] = verb
    return out


def _one_line(text: str) -> str:
    """Error messages are one line (they may quote user input that holds newlines)."""
    return " ".join(text.split("\n"))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
