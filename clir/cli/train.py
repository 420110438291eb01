"""``clir train``: contrastive training of a dual encoder from a config file."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging

from clir.cli.common import positive_int

HELP = "train a dual encoder (full fine-tuning, task adapter or MAD-X) on triples"
DESCRIPTION = """Train a dual encoder on (query, positive, negative) triples with a contrastive loss (in-batch
and hard negatives). The output folder is a model folder that index/search/serve/eval load directly; in adapter
modes it holds only the adapters and the encoder settings.

  clir train --config configs/train/e5-small-task-wikiqa.yaml --max-steps 200
  clir train --config configs/train/mbert-madx-msmarco.yaml --dry-run
  clir train --config configs/train/mbert-task-msmarco.yaml --resume
  torchrun --nproc_per_node 8 -m clir train --config configs/train/mbert-task-msmarco.yaml   # 8 GPUs, DDP

Triples: a JSONL file ({"query", "positive", "negative"} or {"query", "positives": [...], "negatives": [...]})
or irds:<id> with docpairs (irds:msmarco-passage/train/triples-small), streamed.
Checkpoints go to OUT/checkpoints every checkpoint.every steps; --resume continues the last one exactly.
Ctrl-C stops after the current step with a checkpoint.
Under torchrun each process trains on its share of every global batch (optim.batch_size per process, negatives
shared across processes: optim.cross_device_negatives); rank 0 writes OUT (docs/training-at-scale.md)."""

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="training config YAML (see configs/train/)")
    p.add_argument("--out", help="output model folder (default: the config's `out`)")
    p.add_argument(
        "--max-steps", type=positive_int, help="optimiser steps of the run (overrides optim.max_steps)"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue from the last checkpoint in the output folder"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="start over even if the output folder holds a run"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the config, list what is local and what would be downloaded; train nothing (offline)",
    )
    p.add_argument("--json", action="store_true", help="with --dry-run: print the plan as JSON")
    p.add_argument(
        "--stop-after",
        type=positive_int,
        metavar="N",
        help="stop with a checkpoint after N steps of the run (for time-limited jobs; --resume continues)",
    )
    p.add_argument("--triples", help="training triples (overrides data.triples)")
    p.add_argument("--batch-size", type=positive_int, help="overrides optim.batch_size")
    p.add_argument("--lr", type=float, help="overrides optim.lr")
    p.add_argument("--seed", type=int, help="overrides optim.seed")
    p.add_argument(
        "--language-adapter",
        action="append",
        default=[],
        metavar="LANG=SOURCE",
        help="overrides model.language_adapters[LANG] (a folder or hub id; repeatable), e.g. the English "
        "adapter a madx run trains on",
    )
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")


def load_config(args: argparse.Namespace):
    from clir.config import load_train_config

    cfg = load_train_config(args.config)
    optim = {}
    if args.max_steps is not None:
        optim["max_steps"] = args.max_steps
    if args.batch_size is not None:
        optim["batch_size"] = args.batch_size
    if args.lr is not None:
        optim["lr"] = args.lr
    if args.seed is not None:
        optim["seed"] = args.seed
    if optim:
        cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, **optim))
        cfg.optim.validate()
    if args.triples:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, triples=args.triples))
    if getattr(args, "language_adapter", None):
        from clir.errors import ClirError

        langs = dict(cfg.model.language_adapters)
        for item in args.language_adapter:
            lang, sep, source = item.partition("=")
            if not sep or not lang.strip() or not source.strip():
                raise ClirError(f"--language-adapter {item!r}: give LANG=SOURCE (e.g. en=models/lang/en)")
            langs[lang.strip()] = source.strip()
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, language_adapters=langs))
        cfg.model.validate()
    return cfg


def run(args: argparse.Namespace) -> int:
    from clir.errors import ClirError

    cfg = load_config(args)
    if args.dry_run:
        from clir.train import training_plan

        plan = training_plan(cfg, out=args.out, resume=args.resume)
        print(json.dumps(plan.to_dict(), indent=2) if args.json else plan.format())
        if plan.problems:
            raise ClirError(f"the dry run found {len(plan.problems)} problem(s): " + "; ".join(plan.problems))
        return 0

    from clir.model.checks import torch_device
    from clir.train import train
    from clir.train.distributed import teardown

    torch_device(args.device)  # before the run folder is touched
    try:
        res = train(
            cfg,
            out=args.out,
            resume=args.resume,
            overwrite=args.overwrite,
            stop_after=args.stop_after,
            device=args.device,
        )
    finally:
        teardown()
    if res.rank != 0:
        return 0  # under torchrun rank 0 reports for the run
    print(
        json.dumps(
            {
                "out": str(res.out),
                "finished": res.finished,
                "step": res.step,
                "loss": None if res.loss is None else round(res.loss, 5),
                "triples_per_s": round(res.triples_per_s, 2),
                "seconds": round(res.seconds, 1),
                "checkpoint": str(res.checkpoint) if res.checkpoint else None,
            }
        )
    )
    return 0
