"""The flags of the verbs an experiment grid builds with (``train``, ``train-language-adapter``,
``train-mlm-head``), as data, and their requests. ``clir/cli/<verb>.py`` adds these flags to its parser and
maps them with the same function; a grid config's ``args`` go through :func:`request_from_flags`. So a flag
means the same, with the same default, in a config as on the command line."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from clir.config.flags import Flag, parse_flags, positive_int
from clir.config.mlm import DevSettings, LanguageAdapterRequest, MlmHeadRequest
from clir.config.model import check_activation, check_reduction
from clir.config.requests import TrainRequest
from clir.errors import ClirError

Request = TrainRequest | LanguageAdapterRequest | MlmHeadRequest

TRAIN_FLAGS: tuple[Flag, ...] = (
    Flag("--config", required=True, help="training config YAML (see configs/train/)"),
    Flag("--out", help="output model folder (default: the config's `out`)"),
    Flag("--max-steps", type=positive_int, help="optimiser steps of the run (overrides optim.max_steps)"),
    Flag("--resume", action="store_true", help="continue from the last checkpoint in the output folder"),
    Flag("--overwrite", action="store_true", help="start over even if the output folder holds a run"),
    Flag(
        "--dry-run",
        action="store_true",
        help="validate the config, list what is local and what would be downloaded; train nothing (offline)",
    ),
    Flag("--json", action="store_true", help="with --dry-run: print the plan as JSON"),
    Flag(
        "--stop-after",
        type=positive_int,
        metavar="N",
        help="stop with a checkpoint after N steps of the run (for time-limited jobs; --resume continues)",
    ),
    Flag("--triples", help="training triples (overrides data.triples)"),
    Flag("--batch-size", type=positive_int, help="overrides optim.batch_size"),
    Flag("--lr", type=float, help="overrides optim.lr"),
    Flag("--seed", type=int, help="overrides optim.seed"),
    Flag(
        "--language-adapter",
        action="append",
        default=[],
        metavar="LANG=SOURCE",
        help="overrides model.language_adapters[LANG] (a folder or hub id; repeatable), e.g. the English "
        "adapter a madx run trains on",
    ),
    Flag("--device", help="torch device (default: cuda when available, else cpu)"),
)

#: the held-out slice: the same for the shared head and every adapter of a backbone
DEV_FLAGS: tuple[Flag, ...] = (
    Flag("--dev-fraction", type=float, default=0.05, help="share of the text held out (default 0.05)"),
    Flag("--dev-seed", type=int, default=0, help="seeds which texts are held out (default 0)"),
    Flag("--dev-max", type=positive_int, default=500, help="at most this many dev texts"),
)


def mlm_run_flags(*, steps: int, batch: int, lr: float, every: int) -> tuple[Flag, ...]:
    """The run flags both MLM trainers take, with each trainer's defaults."""
    return (
        Flag("--max-steps", type=positive_int, default=steps),
        Flag(
            "--batch-size",
            type=positive_int,
            default=batch,
            help=f"texts per step, per process under torchrun (default {batch})",
        ),
        Flag("--lr", type=float, default=lr, help=f"peak learning rate (default {lr:g})"),
        Flag("--max-length", type=positive_int, default=128, help="tokens per text"),
        Flag("--mlm-probability", type=float, default=0.15),
        Flag(
            "--precision",
            choices=("auto", "fp32", "bf16"),
            default="auto",
            help="bf16 autocast for training steps; auto: where the device computes bf16 natively (GPUs, CPUs "
            "with AVX512-BF16 or AMX); dev losses are always fp32",
        ),
        Flag("--device", help="torch device (default: cuda when available, else cpu)"),
        Flag(
            "--packed",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="run each batch packed, without padding, where the model's attention allows (default on)",
        ),
        Flag("--checkpoint-every", type=positive_int, default=every, help="steps between checkpoints"),
        Flag("--resume", action="store_true", help="continue from the checkpoints in OUT.partial"),
        Flag(
            "--threads",
            type=positive_int,
            help="CPU threads (default: torch's); fix it to repeat a CPU run bit for bit on other machines",
        ),
        Flag("--overwrite", action="store_true", help="replace an existing --out folder"),
        *DEV_FLAGS,
    )


_BACKBONE = Flag(
    "--backbone", required=True, help="Hugging Face folder or hub id, or a registered model name"
)
_TEXT_HELP = "monolingual text: file, docs .jsonl/.tsv, collection folder, irds:<id>"

LANGUAGE_ADAPTER_FLAGS: tuple[Flag, ...] = (
    Flag("--lang", required=True, help="language code the adapter is for (e.g. de)"),
    Flag("--text", required=True, help=_TEXT_HELP),
    _BACKBONE,
    Flag(
        "--head",
        help="the shared MLM head folder (`clir train-mlm-head`); default: the backbone's pretrained head",
    ),
    Flag("--out", required=True, help="adapter folder to write"),
    *mlm_run_flags(steps=1000, batch=16, lr=1e-4, every=50),
    Flag(
        "--invertible",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="add invertible adapters on the embeddings (MAD-X; default on)",
    ),
    Flag("--reduction-factor", type=float, default=2, help="bottleneck reduction factor (default 2)"),
    Flag("--non-linearity", default="relu"),
    Flag("--seed", type=int, default=42, help="adapter initialisation, masks and text order"),
    Flag(
        "--save-dtype",
        choices=("fp32", "fp16"),
        default="fp32",
        help="dtype of the saved weights (fp16: half the size; the dev loss is scored on the rounded weights)",
    ),
)

MLM_HEAD_FLAGS: tuple[Flag, ...] = (
    Flag(
        "--text",
        action="append",
        required=True,
        metavar="LANG=SOURCE",
        help="a language's text (file, docs .jsonl/.tsv, collection folder, irds:<id>); repeat per language",
    ),
    _BACKBONE,
    Flag("--out", required=True, help="head folder to write"),
    *mlm_run_flags(steps=2000, batch=32, lr=1e-3, every=100),
    Flag("--seed", type=int, default=0, help="head initialisation, masks and text order"),
)


def train_request(ns: argparse.Namespace) -> TrainRequest:
    return TrainRequest(
        config=ns.config,
        out=ns.out,
        max_steps=ns.max_steps,
        resume=ns.resume,
        overwrite=ns.overwrite,
        dry_run=ns.dry_run,
        stop_after=ns.stop_after,
        triples=ns.triples,
        batch_size=ns.batch_size,
        lr=ns.lr,
        seed=ns.seed,
        language_adapters=tuple(ns.language_adapter),
        device=ns.device,
    )


def dev_settings(ns: argparse.Namespace) -> DevSettings:
    dev = DevSettings(fraction=ns.dev_fraction, seed=ns.dev_seed, limit=ns.dev_max)
    dev.check()
    return dev


def mlm_run_settings(ns: argparse.Namespace) -> dict[str, Any]:
    """The request fields :func:`mlm_run_flags` set: the same in both MLM trainers' requests."""
    return {
        "max_steps": ns.max_steps,
        "batch_size": ns.batch_size,
        "lr": ns.lr,
        "max_length": ns.max_length,
        "mlm_probability": ns.mlm_probability,
        "precision": ns.precision,
        "device": ns.device,
        "packed": ns.packed,
        "checkpoint_every": ns.checkpoint_every,
        "resume": ns.resume,
        "threads": ns.threads,
        "overwrite": ns.overwrite,
        "dev": dev_settings(ns),
    }


def language_adapter_request(ns: argparse.Namespace) -> LanguageAdapterRequest:
    # refused before any work: what would fail once OUT.partial exists (or allocate terabytes)
    check_reduction(ns.reduction_factor, None, "--reduction-factor")
    check_activation(ns.non_linearity, "--non-linearity")
    return LanguageAdapterRequest(
        lang=ns.lang,
        text=ns.text,
        backbone=ns.backbone,
        head=ns.head,
        out=ns.out,
        invertible=ns.invertible,
        reduction_factor=ns.reduction_factor,
        non_linearity=ns.non_linearity,
        seed=ns.seed,
        save_dtype=ns.save_dtype,
        **mlm_run_settings(ns),
    )


def mlm_head_request(ns: argparse.Namespace) -> MlmHeadRequest:
    return MlmHeadRequest(
        texts=list(ns.text),
        backbone=ns.backbone,
        out=ns.out,
        seed=ns.seed,
        **mlm_run_settings(ns),
    )


#: verb -> (its flags, the request they map to)
BUILD_VERBS: dict[str, tuple[tuple[Flag, ...], Callable[[argparse.Namespace], Request]]] = {
    "train": (TRAIN_FLAGS, train_request),
    "train-language-adapter": (LANGUAGE_ADAPTER_FLAGS, language_adapter_request),
    "train-mlm-head": (MLM_HEAD_FLAGS, mlm_head_request),
}


def request_from_flags(verb: str, argv: list[str]) -> Request:
    """The request ``clir VERB ARGV`` would run: a bad or unknown flag is a ClirError naming it (never an exit)."""
    if verb not in BUILD_VERBS:
        raise ClirError(f"cannot build with `clir {verb}`: use {', '.join(BUILD_VERBS)}")
    flags, to_request = BUILD_VERBS[verb]
    return to_request(parse_flags(verb, flags, argv))
