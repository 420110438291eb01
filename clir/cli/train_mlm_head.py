"""``clir train-mlm-head``: the one MLM head every language adapter of a headless backbone trains against."""

from __future__ import annotations

import argparse
import json

from clir.cli.train_language_adapter import add_run_arguments, dev_settings

HELP = "train the shared MLM head of a backbone that ships without one (for its language adapters)"
DESCRIPTION = """Train the one masked-LM head that every language adapter of a backbone will share, frozen (MAD-X
trains all language adapters against the same pretrained head: that common anchor is what makes them
interchangeable under one task adapter). Needed only for a backbone without a pretrained head, such as
multilingual-e5-small: the backbone stays frozen, no adapter is added, and the head (transform, LayerNorm,
output bias; the decoder is tied to the word embeddings) learns on the pooled text of every language, one
text of each in turn. Each language's dev slice is held out by the rule the adapters use (keep the same
--dev-* settings for both), and the folder's clir_mlm_head.json records head_sha256 and each language's dev
loss beside a unigram table's.

  clir train-mlm-head --backbone multilingual-e5-small --out heads/e5 \\
      --text en=mono/en.txt --text de=mono/de.txt --text ru=mono/ru.txt --text zh=mono/zh.txt --text fa=mono/fa.txt
  clir train-language-adapter --lang de --text mono/de.txt --backbone multilingual-e5-small --head heads/e5 ..."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--text",
        action="append",
        required=True,
        metavar="LANG=SOURCE",
        help="a language's text (file, docs .jsonl/.tsv, collection folder, irds:<id>); repeat per language",
    )
    p.add_argument(
        "--backbone", required=True, help="Hugging Face folder or hub id, or a registered model name"
    )
    p.add_argument("--out", required=True, help="head folder to write")
    add_run_arguments(p, steps=2000, batch=32, lr=1e-3, every=100)
    p.add_argument("--seed", type=int, default=0, help="head initialisation, masks and text order")


def head_args(args: argparse.Namespace):
    from clir.train.head_training import MlmHeadArgs
    from clir.train.mlm import pick_device, use_bf16

    return MlmHeadArgs(
        texts=args.text,
        backbone=args.backbone,
        out=args.out,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        max_length=args.max_length,
        mlm_probability=args.mlm_probability,
        seed=args.seed,
        dev=dev_settings(args),
        checkpoint_every=args.checkpoint_every,
        bf16=use_bf16(args.precision, pick_device(args.device)),
        packed=args.packed,
        device=args.device,
        threads=args.threads,
        overwrite=args.overwrite,
        resume=args.resume,
    )


def run(args: argparse.Namespace) -> int:
    import os

    from clir.errors import ClirError
    from clir.train.head_training import train_mlm_head

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # N copies would race to write one folder
        raise ClirError("clir train-mlm-head runs in one process: start it without torchrun")
    info = train_mlm_head(head_args(args))
    print(json.dumps({k: info[k] for k in ("head_sha256", "steps", "seconds", "languages")}))
    return 0
