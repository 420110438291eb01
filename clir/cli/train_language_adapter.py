"""``clir train-language-adapter``: a MAD-X language adapter by masked language modelling."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clir.config.build_flags import LANGUAGE_ADAPTER_FLAGS, language_adapter_request
from clir.config.flags import add_flags
from clir.config.mlm import LanguageAdapterRequest

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


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_flags(p, LANGUAGE_ADAPTER_FLAGS)


def request(args: argparse.Namespace) -> LanguageAdapterRequest:
    """The typed request of a parsed command line (the grid builds it from a config's args the same way)."""
    from clir.data.collections import check_lang
    from clir.model.checks import torch_device

    req = language_adapter_request(args)
    # refused before OUT.partial exists, in the flags' words
    check_lang(req.lang, "--lang")
    torch_device(req.device)
    return req


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

    typed = request(args)
    backbone = resolve_backbone(typed.backbone)
    if Path(backbone).is_dir():  # a crafted folder is refused before any weight (a hub id: on loading)
        backbone_config(backbone)
        load_tokenizer(backbone)
        check_weight_files(Path(backbone))
    out = Path(typed.out).expanduser()
    work = out.with_name(out.name + ".partial")
    if typed.resume:  # the records a resumed run reads back, within clir's JSON limits
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
                "lang": typed.lang,
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
