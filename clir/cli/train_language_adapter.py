"""``clir train-language-adapter``: a MAD-X language adapter by masked language modelling."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clir.cli.common import positive_int

HELP = "train a language adapter (MAD-X) by masked language modelling on monolingual text"
DESCRIPTION = """Train a language adapter for any language: masked language modelling on monolingual text
with the backbone and its one MLM head frozen, only the adapter trained (MAD-X: bottleneck adapters with
reduction factor 2 and an invertible adapter, whose inverse is applied before the head's decoder).
The output folder (adapter_config.json + weights) is a language source for madx models:
`language_adapters: {de: DIR}`.

  clir train-mlm-head --backbone multilingual-e5-small --out heads/e5 \\
      --text en=irds:clir/ud/en --text de=irds:clir/ud/de --text ru=irds:clir/ud/ru
  clir train-language-adapter --lang de --text irds:clir/ud/de --backbone multilingual-e5-small \\
      --head heads/e5 --out adapters/e5-de --max-steps 1000
  clir train-language-adapter --lang it --text irds:neumarco/it --backbone bert-base-multilingual-cased \\
      --out adapters/mbert-it

Every language adapter of a backbone trains against the same frozen head: the backbone's own pretrained
one, or, for a backbone without one (multilingual-e5-small), the head `clir train-mlm-head` made (--head).
A dev slice (--dev-fraction, by a hash of each text seeded with --dev-seed) is held out; the adapter's dev
MLM loss is reported beside the frozen head without the adapter and a unigram table of the training text.
Checkpoints go to OUT.partial; --resume continues an interrupted run.

Data parallel: `torchrun --nproc_per_node N -m clir train-language-adapter ...` trains on N processes, each
on --batch-size texts of every global batch of N x --batch-size (gloo on CPUs, NCCL on GPUs); it takes the
same steps as one process at --batch-size N x b (every process draws the global batch's masks, and dropout
is keyed by each text's place in it). Rank 0 writes OUT; a run resumes on another N when the global batch is the same.

--text: a text file (one text a line), a .jsonl/.tsv docs file, a collection folder (its docs) or irds:<id>."""


def add_dev_arguments(p: argparse.ArgumentParser) -> None:
    """The held-out slice: the same for the shared head and every adapter of a backbone."""
    p.add_argument(
        "--dev-fraction", type=float, default=0.05, help="share of the text held out (default 0.05)"
    )
    p.add_argument("--dev-seed", type=int, default=0, help="seeds which texts are held out (default 0)")
    p.add_argument("--dev-max", type=positive_int, default=500, help="at most this many dev texts")


def add_run_arguments(p: argparse.ArgumentParser, *, steps: int, batch: int, lr: float, every: int) -> None:
    p.add_argument("--max-steps", type=positive_int, default=steps)
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=batch,
        help=f"texts per step, per process under torchrun (default {batch})",
    )
    p.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default {lr:g})")
    p.add_argument("--max-length", type=positive_int, default=128, help="tokens per text")
    p.add_argument("--mlm-probability", type=float, default=0.15)
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="bf16 autocast for training steps; auto: where the device computes bf16 natively (GPUs, CPUs with "
        "AVX512-BF16 or AMX); dev losses are always fp32",
    )
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument(
        "--packed",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run each batch packed, without padding, where the model's attention allows (default on)",
    )
    p.add_argument("--checkpoint-every", type=positive_int, default=every, help="steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in OUT.partial")
    p.add_argument(
        "--threads",
        type=positive_int,
        help="CPU threads (default: torch's); fix it to repeat a CPU run bit for bit on other machines",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    add_dev_arguments(p)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lang", required=True, help="language code the adapter is for (e.g. de)")
    p.add_argument(
        "--text", required=True, help="monolingual text: file, docs .jsonl/.tsv, collection folder, irds:<id>"
    )
    p.add_argument(
        "--backbone", required=True, help="Hugging Face folder or hub id, or a registered model name"
    )
    p.add_argument(
        "--head",
        help="the shared MLM head folder (`clir train-mlm-head`); default: the backbone's pretrained head",
    )
    p.add_argument("--out", required=True, help="adapter folder to write")
    add_run_arguments(p, steps=1000, batch=16, lr=1e-4, every=50)
    p.add_argument(
        "--invertible",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="add invertible adapters on the embeddings (MAD-X; default on)",
    )
    p.add_argument(
        "--reduction-factor", type=float, default=2, help="bottleneck reduction factor (default 2)"
    )
    p.add_argument("--non-linearity", default="relu")
    p.add_argument("--seed", type=int, default=42, help="adapter initialisation, masks and text order")
    p.add_argument(
        "--save-dtype",
        choices=["fp32", "fp16"],
        default="fp32",
        help="dtype of the saved weights (fp16: half the size; the dev loss is scored on the rounded weights)",
    )


def dev_settings(args: argparse.Namespace):
    from clir.train.mlm import DevSettings

    dev = DevSettings(fraction=args.dev_fraction, seed=args.dev_seed, limit=args.dev_max)
    dev.check()
    return dev


def adapter_args(args: argparse.Namespace):
    """The typed arguments of a parsed command line (also what the experiment grid builds with)."""
    from clir.config.model import check_activation, check_reduction
    from clir.data.collections import check_lang
    from clir.model.checks import torch_device
    from clir.train import LanguageAdapterArgs

    # what would fail once OUT.partial exists (or allocate terabytes) is refused first
    check_reduction(args.reduction_factor, None, "--reduction-factor")
    check_activation(args.non_linearity, "--non-linearity")
    check_lang(args.lang, "--lang")
    torch_device(args.device)
    return LanguageAdapterArgs(
        lang=args.lang,
        text=args.text,
        backbone=args.backbone,
        head=args.head,
        out=args.out,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        max_length=args.max_length,
        invertible=args.invertible,
        reduction_factor=args.reduction_factor,
        non_linearity=args.non_linearity,
        mlm_probability=args.mlm_probability,
        seed=args.seed,
        precision=args.precision,
        device=args.device,
        overwrite=args.overwrite,
        dev=dev_settings(args),
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        threads=args.threads,
        packed=args.packed,
        save_dtype=args.save_dtype,
    )


#: what clir.train.language_adapter keeps in OUT.partial and reads back on --resume
RESUME_RECORDS = ("run.json", "references.json")


def run(args: argparse.Namespace) -> int:
    from clir.atomic import disk_errors
    from clir.model.checks import backbone_config, check_weight_files
    from clir.model.folder import load_tokenizer
    from clir.safe_load import read_json
    from clir.train import train_language_adapter
    from clir.train.distributed import teardown
    from clir.train.mlm import resolve_backbone

    typed = adapter_args(args)
    backbone = resolve_backbone(args.backbone)
    if Path(backbone).is_dir():  # a crafted folder is refused before any weight (a hub id: on loading)
        backbone_config(backbone)
        load_tokenizer(backbone)
        check_weight_files(Path(backbone))
    out = Path(args.out).expanduser()
    work = out.with_name(out.name + ".partial")
    if args.resume:  # the records a resumed run reads back, within clir's JSON limits
        for name in RESUME_RECORDS:
            if (work / name).is_file():
                read_json(work / name)
    try:
        with disk_errors(work, f"checkpoints in {work} are intact: free space, then --resume continues"):
            res = train_language_adapter(typed)
    finally:
        teardown()
    if res.rank != 0:
        return 0  # under torchrun rank 0 reports for the run
    print(
        json.dumps(
            {
                "out": str(res.out),
                "lang": args.lang,
                "steps": res.steps,
                "head_sha256": res.head_sha256,
                "first_loss": round(res.first_loss, 4),
                "last_loss": round(res.last_loss, 4),
                "dev_texts": res.dev_texts,
                "dev_loss": round(res.dev_loss, 4),
                "dev_loss_no_adapter": round(res.dev_loss_no_adapter, 4),
                "dev_loss_unigram": round(res.dev_loss_unigram, 4),
                "texts_per_s": round(res.texts_per_s, 1),
                "seconds": round(res.seconds, 1),
            }
        )
    )
    return 0
