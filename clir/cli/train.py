"""``clir train``: contrastive training of a dual encoder from a config file."""

from __future__ import annotations

import argparse
import json
import logging

from clir.config.build_flags import TRAIN_FLAGS, train_request
from clir.config.flags import add_flags
from clir.config.requests import TrainRequest

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
    add_flags(p, TRAIN_FLAGS)


def request(args: argparse.Namespace) -> TrainRequest:
    return train_request(args)


def run(args: argparse.Namespace) -> int:
    from clir.errors import ClirError

    req = request(args)
    cfg = req.train_config()
    if req.dry_run:
        from clir.train import training_plan

        plan = training_plan(cfg, out=req.out, resume=req.resume)
        print(json.dumps(plan.to_dict(), indent=2) if args.json else plan.format())
        if plan.problems:
            raise ClirError(f"the dry run found {len(plan.problems)} problem(s): " + "; ".join(plan.problems))
        return 0

    from clir.model.checks import torch_device
    from clir.train import train
    from clir.train.distributed import teardown

    torch_device(req.device)  # before the run folder is touched
    try:
        res = train(
            cfg,
            out=req.out,
            resume=req.resume,
            overwrite=req.overwrite,
            stop_after=req.stop_after,
            device=req.device,
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
