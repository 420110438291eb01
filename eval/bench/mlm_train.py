"""Benchmark: one training step of a language adapter (masked LM, e5-small frozen, MAD-X adapter under the
frozen shared MLM head) and of the shared head itself, on real German sentences, with and without each speed
lever, alternating contenders in one run.

Levers: logits only at the masked positions (vs the whole 250k-word output layer at every position, as
``AutoModelForMaskedLM(labels=...)`` computes them), packed batches (texts end to end, no padding: what
``clir train-language-adapter`` runs by default) and bf16 autocast.

    python -m eval.bench.mlm_train [--rounds 3] [--batch-size 16]      # ~3-5 minutes on 2 cores
    python -m eval.bench.mlm_train --curve 60     # + dev loss at equal steps: padded fp32 vs packed bf16

``--curve N`` trains the German adapter N steps against the committed shared head
(shipped/paper-small-v2/head) twice, as clir did before packing (padded, fp32) and with both levers (packed,
bf16 autocast), and reports the dev losses at equal steps beside the wall time of each run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
from typing import Any

from eval.bench import common

log = logging.getLogger(__name__)
TITLE = "Language-adapter training step (masked LM)"


@dataclasses.dataclass
class Batch:
    """e5-small with a German MAD-X adapter under the MLM head, and one masked batch as training draws it."""

    model: Any
    head: Any
    ids: Any
    mask: Any
    labels: Any
    keys: list[int]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1, help="torch threads (training pins one per process)")
    p.add_argument("--no-write", action="store_true", help="print, do not update RESULTS.md")
    p.add_argument("--curve", type=int, default=0, help="also train N steps each way and compare dev losses")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    common.quiet_libraries()
    common.require_shared()
    load = common.load_avg()
    b = training_batch(args)
    today = "adapter: masked positions only, padded, fp32 (clir before packing)"
    contenders = {
        "adapter: logits at every position (transformers default), padded, fp32": step(b, False, False),
        today: step(b, True, False),
        "adapter: masked positions only, packed, fp32 (clir default)": step(b, True, False, packed=True),
        "adapter: masked positions only, packed, bf16 autocast (--precision bf16)": step(
            b, True, True, packed=True
        ),
        "shared head (train-mlm-head): padded, fp32": step(b, True, False, adapter=False),
        "shared head (train-mlm-head): packed, fp32 (default)": step(
            b, True, False, packed=True, adapter=False
        ),
    }
    times = common.alternate(contenders, args.rounds)
    curve = _curve(args) if args.curve else None
    before = common.median(times[today])
    rows = [
        [name, common.median(t), args.batch_size / common.median(t), before / common.median(t)]
        for name, t in times.items()
    ]
    body = "\n\n".join(
        [
            f"One optimiser step's forward + backward, batch {args.batch_size} German UD sentences "
            f"({int(b.mask.sum())} tokens, {int((b.labels != -100).sum())} masked, padded to "
            f"{b.mask.shape[0] * b.mask.shape[1]}), multilingual-e5-small with a MAD-X language adapter "
            "(seq_bn_inv, reduction 2) under a frozen MLM head tied to the 250k-word embeddings, and the head "
            f"alone as `clir train-mlm-head` trains it; median of {args.rounds} alternating rounds.",
            common.table(["variant", "s / step", "texts / s", "speed-up vs padded fp32"], rows),
            NOTE,
            *([curve_text(curve, args.curve, args.batch_size)] if curve else []),
            common.conditions(load),
        ]
    )
    print(body)
    if not args.no_write:
        common.save_json("mlm_train", {"times": times, "curve": curve, "machine": common.machine()})
        common.write_section(TITLE, body)
    return 0


NOTE = (
    "Packed batches lay the batch's texts end to end with attention per text "
    "(`clir.model.packing`), so no compute goes to padding: UD sentences vary in length, and a padded "
    "batch is as wide as its longest. Packed and padded give the same loss and gradients within fp32 "
    "rounding (tests/test_language_adapter.py), so dev loss at equal steps is equal by construction. "
    "CPU training pins one thread per process (`--threads 1`): under load, two OpenMP threads per "
    "process spin-wait against other jobs. bf16 autocast is the default (`--precision auto`) where the "
    "device computes bf16 natively (GPUs; CPUs with AVX512-BF16 or AMX)."
)


def training_batch(args: argparse.Namespace) -> Batch:
    """The model and batch every contender steps on: a fresh head stands in for the shared one (same
    shapes), and the batch is a seeded sample of the German text, so its lengths vary as in training."""
    import random

    import adapters
    import torch
    from transformers import AutoTokenizer

    from clir.config import AdapterArch
    from clir.train import mlm
    from clir.train.mlm_head import attach_inverse, head_module, load_mlm

    backbone = str(common.E5_DIR)
    tok = AutoTokenizer.from_pretrained(backbone)
    torch.manual_seed(0)
    model, _ = load_mlm(backbone, fresh_ok=True)
    adapters.init(model)
    attach_inverse(model)
    model.add_adapter("de", config=AdapterArch(config="seq_bn_inv", reduction_factor=2).to_adapters_config())
    head = head_module(model)
    lines = (common.SHARED / "data" / "mono" / "de.txt").read_text(encoding="utf-8").splitlines()
    torch.set_num_threads(args.threads)
    enc = mlm.tokenize(tok, random.Random(0).sample(lines, args.batch_size), 128)
    ids, labels = mlm.mask_tokens(enc, tok, 0.15, torch.Generator().manual_seed(0))
    keys = list(range(args.batch_size))  # keyed dropout, as the trainer runs it
    return Batch(model, head, ids, enc["attention_mask"], labels, keys)


def step(b: Batch, masked_only: bool, bf16: bool, packed: bool = False, adapter: bool = True):
    """One forward + backward of the adapter (or, with ``adapter=False``, of the shared head alone)."""
    import torch

    from clir.train import mlm

    model = b.model

    def run():
        if adapter:
            model.train_adapter("de")  # the adapter trains; backbone and head frozen
        else:
            model.set_active_adapters(None)
            for n, prm in model.named_parameters():
                prm.requires_grad_(n.startswith("cls.") and prm is not model.get_input_embeddings().weight)
        model.train()
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            if masked_only:
                loss, n = mlm.masked_loss(
                    model, b.head, b.ids, b.mask, b.labels, encoder_grad=adapter, packed=packed, keys=b.keys
                )
                loss = loss / n
            else:
                loss = model(input_ids=b.ids, attention_mask=b.mask, labels=b.labels).loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    return run


def _curve(args: argparse.Namespace) -> list[dict]:
    """Dev loss at equal steps: the German adapter trained ``args.curve`` steps padded in fp32 and packed in
    bf16 (the same seed, texts, masks and dropout keys), each scored on the same dev tokens in fp32."""
    import tempfile

    from clir.train.language_adapter import LanguageAdapterArgs, train_language_adapter

    head = common.REPO / "shipped" / "paper-small-v2" / "head"
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, packed, precision in (
            ("padded, fp32", False, "fp32"),
            ("packed, bf16 autocast", True, "bf16"),
        ):
            res = train_language_adapter(
                LanguageAdapterArgs(
                    lang="de",
                    text=str(common.SHARED / "data" / "mono" / "de.txt"),
                    backbone=str(common.E5_DIR),
                    head=str(head),
                    out=f"{tmp}/{packed}",
                    max_steps=args.curve,
                    batch_size=args.batch_size,
                    lr=1e-3,
                    seed=0,
                    threads=args.threads,
                    packed=packed,
                    precision=precision,
                    checkpoint_every=10**6,
                ),
                show_progress=False,
            )
            runs.append(
                {
                    "variant": name,
                    "dev_loss": res.dev_loss,
                    "no_adapter": res.dev_loss_no_adapter,
                    "seconds": res.seconds,
                    "texts_per_s": res.texts_per_s,
                    "train_loss": res.last_loss,
                }
            )
    return runs


def curve_text(runs: list[dict], steps: int, batch: int) -> str:
    """The dev-loss-at-equal-steps table of :func:`_curve`'s runs."""
    base = runs[0]["seconds"]
    rows = [
        [r["variant"], r["dev_loss"], r["no_adapter"], r["train_loss"], r["seconds"], base / r["seconds"]]
        for r in runs
    ]
    head = ["run", "dev loss", "no-adapter dev loss", "last train loss", "training s", "speed-up"]
    return "\n\n".join(
        [
            f"Dev loss at equal steps: the German adapter trained {steps} steps x {batch} UD sentences (lr "
            "1e-3, seed 0, keyed dropout) against the committed shared head, each way, one after the other; "
            "dev loss in fp32 on the same held-out masked tokens; training s: the training loop's wall time "
            "(dev scoring excluded).",
            common.table(head, rows),
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
