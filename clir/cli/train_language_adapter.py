"""``clir train-language-adapter``: a MAD-X language adapter by masked language modelling."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clir.cli.common import positive_int

HELP = "train a language adapter (MAD-X) by masked language modelling on monolingual text"
DESCRIPTION = """Train a language adapter for any language: masked language modelling on monolingual text
with the backbone frozen (a backbone without an MLM head gets a fresh one tied to its word embeddings).
The output folder (adapter_config.json + weights) is a language source for madx models:
`language_adapters: {de: DIR}`.

  clir train-language-adapter --lang de --text ../shared/data/collections/tatoeba/deu \\
      --backbone multilingual-e5-small --out adapters/e5-de --max-steps 500
  clir train-language-adapter --lang it --text irds:neumarco/it --backbone bert-base-multilingual-cased \\
      --out adapters/mbert-it

A dev slice (--dev-fraction, by a seeded hash of each text) is held out; the adapter's dev MLM loss is
reported beside a head-only baseline trained on the same budget (--no-baseline skips it): with a fresh head,
the adapter is trained only when its dev loss is clearly below the baseline's. Checkpoints go to OUT.partial;
--resume continues an interrupted run.

--text: a text file (one text a line), a .jsonl/.tsv docs file, a collection folder (its docs) or irds:<id>."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lang", required=True, help="language code the adapter is for (e.g. de)")
    p.add_argument(
        "--text", required=True, help="monolingual text: file, docs .jsonl/.tsv, collection folder, irds:<id>"
    )
    p.add_argument(
        "--backbone", required=True, help="Hugging Face folder or hub id, or a registered model name"
    )
    p.add_argument("--out", required=True, help="adapter folder to write")
    p.add_argument("--max-steps", type=positive_int, default=1000)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-length", type=positive_int, default=128, help="tokens per text")
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
    p.add_argument("--mlm-probability", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--precision", choices=["auto", "fp32", "bf16"], default="auto", help="auto: bf16 on GPU, fp32 on CPU"
    )
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument(
        "--dev-fraction",
        type=float,
        default=0.05,
        help="share of the text held out (seeded hash of each text) to report dev MLM loss (default 0.05)",
    )
    p.add_argument("--dev-max", type=positive_int, default=500, help="at most this many dev texts")
    p.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also train the MLM head alone (no adapter) on the same budget and report its dev loss: the "
        "adapter is trained when its dev loss is below that (default on)",
    )
    p.add_argument("--checkpoint-every", type=positive_int, default=50, help="steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in OUT.partial")
    p.add_argument(
        "--threads",
        type=positive_int,
        help="CPU threads (default: torch's); fix it to repeat a CPU run bit for bit on other machines",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")


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
        dev_fraction=args.dev_fraction,
        dev_max=args.dev_max,
        baseline=args.baseline,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        threads=args.threads,
    )


#: what clir.train.language_adapter keeps in OUT.partial and reads back on --resume
RESUME_RECORDS = ("run.json", "adapter.json", "head-only.json")


def run(args: argparse.Namespace) -> int:
    from clir.atomic import disk_errors
    from clir.model.checks import backbone_config, check_weight_files
    from clir.model.folder import load_tokenizer
    from clir.safe_load import read_json
    from clir.train import train_language_adapter
    from clir.train.language_adapter import resolve_backbone

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
    with disk_errors(work, f"checkpoints in {work} are intact: free space, then --resume continues"):
        res = train_language_adapter(typed)
    print(
        json.dumps(
            {
                "out": str(res.out),
                "lang": args.lang,
                "steps": res.steps,
                "first_loss": round(res.first_loss, 4),
                "last_loss": round(res.last_loss, 4),
                "fresh_head": res.fresh_head,
                "dev_texts": res.dev_texts,
                "dev_loss": round(res.dev_loss, 4),
                "head_only_dev_loss": None
                if res.baseline_dev_loss is None
                else round(res.baseline_dev_loss, 4),
                "texts_per_s": round(res.texts_per_s, 1),
                "seconds": round(res.seconds, 1),
            }
        )
    )
    return 0
