"""``clir train-mlm-head``: the one MLM head a backbone without a pretrained head gets (see
:mod:`clir.train.mlm_head`), trained with the backbone frozen and no adapter on the pooled text of every
language its adapters will be trained on (one text of each language in turn). Each language's dev slice is
held out by the same rule the adapters use, so no adapter's dev loss is scored on text the head saw."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from clir.config.mlm import MlmHeadRequest
from clir.errors import ClirError
from clir.safe_load import read_json
from clir.train import mlm
from clir.train.mlm_head import HEAD_INFO, attach_inverse, head_module, load_mlm, save_head
from clir.train.mlm_loop import LoopSettings, train_mlm
from clir.workdir import WorkDir

log = logging.getLogger(__name__)


#: the verb's request (its home is config); the old name kept for callers
MlmHeadArgs = MlmHeadRequest


def _sources(texts: list[str]) -> list[tuple[str, str]]:
    out = []
    for spec in texts:
        lang, sep, src = spec.partition("=")
        out.append((lang, src) if sep and lang and "/" not in lang else (Path(spec).stem, spec))
    if not out:
        raise ClirError("--text: give at least one text source")
    return out


#: additive smoothing of the unigram table the output bias starts from
BIAS_SMOOTHING = 0.1


def _unigram_bias(model, tokenizer, texts: list[Iterator[str]], max_length: int) -> None:
    """Start the output bias at the log unigram distribution of the pooled training text (a fresh bias of
    zeros is a uniform 250k-word distribution: Adam moves each entry ~lr a step, so it would take thousands
    of steps to reach the unigram level before any context could help)."""
    import math

    import torch

    from clir.train.mlm import unigram_counts

    counts = unigram_counts(tokenizer, (t for stream in texts for t in stream), max_length=max_length)
    bias = model.get_output_embeddings().bias
    if bias is None:
        return
    # and the transform's output starts at zero, so the head starts exactly at the unigram table: a random
    # transform adds logits of a few nats' spread across 250k words, which costs more than the table gains
    for m in head_module(model).modules():
        if isinstance(m, torch.nn.LayerNorm):
            with torch.no_grad():
                m.weight.zero_()
                m.bias.zero_()
    table = torch.full_like(bias, BIAS_SMOOTHING)
    for token, c in counts.items():
        table[token] += c
    with torch.no_grad():
        bias.copy_(table.log() - math.log(float(table.sum())))


def train_mlm_head(args: MlmHeadArgs, *, show_progress: bool | None = None) -> dict[str, Any]:
    """Train the shared head and write its folder; returns its info (``head_sha256``, per-language dev
    losses of the head and of the unigram reference)."""
    workdir = WorkDir(Path(args.out).expanduser())  # locked (OUT.lock) for the whole run
    try:
        return _train_head(args, workdir, show_progress)
    finally:
        workdir.unlock()


def _train_head(args: MlmHeadArgs, workdir: WorkDir, show_progress: bool | None) -> dict[str, Any]:
    import torch

    out, backbone, tokenizer, device = mlm.open_run(args)
    langs = [(lang, mlm.TextSource(src)) for lang, src in _sources(args.texts)]
    dev = {
        lang: mlm.prepare_dev(tokenizer, src, args.dev, args.max_length, args.mlm_probability)
        for lang, src in langs
    }
    settings = LoopSettings.of(args, bf16=mlm.use_bf16(args.precision, device), packed=args.packed)
    record = {
        "backbone": backbone,
        "texts": args.texts,
        "settings": settings.__dict__,
        "dev": args.dev.__dict__,
    }
    work = mlm.open_work(workdir, record, resume=args.resume, overwrite=args.overwrite)

    torch.manual_seed(args.seed)
    model, _ = load_mlm(backbone, fresh_ok=True)
    attach_inverse(model)
    head = head_module(model)
    tied = model.get_input_embeddings().weight
    for p in head.parameters():
        p.requires_grad_(p is not tied)
    split = args.dev.split()
    _unigram_bias(model, tokenizer, [split.train(src.records()) for _, src in langs], args.max_length)
    model.to(device)
    packed = settings.packed and mlm.packs(model, tokenizer, device)
    settings = LoopSettings(**{**settings.__dict__, "packed": packed})

    def texts() -> Iterator[str]:
        streams = [split.train(mlm.texts_forever(src, block=10000, seed=args.seed)) for _, src in langs]
        return mlm.round_robin(streams)

    run = train_mlm(
        model,
        head,
        tokenizer,
        texts,
        settings,
        work / "run",
        device,
        desc="mlm head",
        show_progress=show_progress,
    )
    per_lang = {
        lang: _scores(args, model, head, tokenizer, src, dev[lang], device, packed) for lang, src in langs
    }
    info = {
        "backbone": args.backbone,  # as given: the resolved cache folder is this machine's
        "texts": dict(_sources(args.texts)),
        "seed": args.seed,
        "steps": run["steps"],
        "batch_size": args.batch_size,
        "lr": args.lr,
        "dev_split": args.dev.__dict__,
        "languages": per_lang,
        "seconds": run["seconds"],
        "packed": packed,
        "loss": run["loss"],
    }
    weights = work / "weights"
    save_head(model, weights, info)
    workdir.finish(weights, record=mlm.RUN_FILE, ignore_errors=True)
    return read_json(out / HEAD_INFO)


def _scores(args: MlmHeadArgs, model, head, tokenizer, src, dev, device, packed: bool) -> dict[str, Any]:
    """A language's dev loss under the trained head, beside its unigram table's on the same masked tokens."""
    batches, dev_texts = dev
    split = args.dev.split()
    unigram, k = mlm.unigram_loss(tokenizer, split.train(src.records()), batches, max_length=args.max_length)
    scores = {
        "dev_texts": len(dev_texts),
        "dev_loss": round(mlm.dev_loss(model, head, batches, device, packed=packed), 5),
        "dev_loss_unigram": round(unigram, 5),
        "unigram_smoothing": k,
    }
    log.info("head dev loss %s: %s", src.name, scores)
    return scores
