"""MAD-X language adapters for any language (``clir train-language-adapter``): masked language modelling on
monolingual text, the backbone and the backbone's one MLM head frozen (:mod:`clir.train.mlm_head`), only the
language adapter trained: bottleneck adapters in every layer plus an invertible adapter on the embeddings,
whose inverse is applied before the head's decoder.

An adapter is scored on a held-out dev slice against two references on the same masked tokens: the frozen
head without the adapter (``dev_loss_no_adapter``: what the adapter adds) and a unigram table of the
training text (``dev_loss_unigram``: a language model must beat it). Both land in the adapter folder's
``clir_language_adapter.json`` with ``head_sha256``, the head's identity: adapters are interchangeable under
one task adapter only when they share it, and the encoder refuses to stack or swap adapters that do not.

The output folder is an ``adapters`` library adapter folder (adapter_config.json + weights), loadable as a
language source anywhere: ``language_adapters: {de: /path/to/folder}``."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clir.config.mlm import LanguageAdapterRequest
from clir.errors import ClirError
from clir.model.adapters import LANGUAGE_ADAPTER_INFO as INFO_FILE
from clir.model.adapters import name_backbone
from clir.model.card import write_language_adapter_card
from clir.safe_load import read_json
from clir.train import distributed, mlm
from clir.train.mlm_head import HEAD_INFO, attach_inverse, head_module, load_mlm
from clir.train.mlm_loop import LoopSettings, train_mlm
from clir.workdir import WorkDir

log = logging.getLogger(__name__)


#: the verb's request (its home is config); the old name kept for callers
LanguageAdapterArgs = LanguageAdapterRequest


@dataclass
class LanguageAdapterResult:
    out: Path
    steps: int
    #: mean MLM loss of the first and the last logged interval
    first_loss: float
    last_loss: float
    texts_per_s: float
    seconds: float
    head_sha256: str
    #: mean MLM loss per masked dev token: the adapter, the frozen head alone, a unigram table
    dev_loss: float
    dev_loss_no_adapter: float
    dev_loss_unigram: float
    dev_texts: int
    #: this process's rank under torchrun (0 in a single process): rank 0 reports for the run
    rank: int = 0


def _check_args(args: LanguageAdapterArgs) -> None:
    if not args.lang or not args.lang.replace("-", "").replace("_", "").isalnum():
        raise ClirError(f"--lang {args.lang!r}: expected a language code such as de or pt-br")
    for key in ("max_steps", "batch_size", "max_length", "checkpoint_every"):
        if getattr(args, key) < 1:
            raise ClirError(f"--{key.replace('_', '-')} must be >= 1")
    if not 0 < args.mlm_probability < 1:
        raise ClirError("--mlm-probability must be in (0, 1)")
    if not args.lr > 0:
        raise ClirError("--lr must be > 0")
    if args.save_dtype not in ("fp32", "fp16"):
        raise ClirError(f"--save-dtype {args.save_dtype!r}: expected fp32 or fp16")
    if args.precision not in ("auto", "fp32", "bf16"):
        raise ClirError(f"--precision {args.precision!r}: expected auto, fp32 or bf16")
    args.dev.check()


def _run_record(args: LanguageAdapterArgs, backbone: str, world: int) -> dict[str, Any]:
    """What a resumed run must share with the run that wrote its checkpoints: the global batch, not the
    per-process one (a run resumes on another world size when the global batch is the same)."""
    skip = {"out", "overwrite", "resume", "device", "threads", "log_every", "checkpoint_every", "batch_size"}
    record = {k: v for k, v in args.flat().items() if k not in skip and k != "dev"}
    return {"backbone": backbone, **record, "global_batch": args.batch_size * world, "dev": args.dev.__dict__}


def _arch(args: LanguageAdapterArgs):
    return args.arch


def _check_head_split(head: str | None, dev: mlm.DevSettings) -> None:
    """A head trained here held out its dev slices by one rule; an adapter scored on another slice could be
    scored on text the head was trained on."""
    try:
        info = read_json(Path(head) / HEAD_INFO) if head else {}
    except (ClirError, OSError, ValueError):
        return  # not a head folder: loading it says so
    if isinstance(info, dict) and info.get("dev_split") not in (None, dev.__dict__):
        raise ClirError(
            f"--head {head} held out its dev slice with {info['dev_split']}, this run with {dev.__dict__}: use "
            "the head's --dev-fraction/--dev-seed/--dev-max, or the dev losses would count text the head saw"
        )


def train_language_adapter(
    args: LanguageAdapterArgs, *, show_progress: bool | None = None
) -> LanguageAdapterResult:
    """Train ``args.lang``'s adapter against the backbone's frozen head, score it and its references on the
    held-out slice, and write the adapter folder with ``clir_language_adapter.json``."""
    _check_args(args)
    dist = distributed.setup(args.device)  # under torchrun: this rank's place (one process otherwise)
    workdir = WorkDir(Path(args.out).expanduser())  # rank 0 locks it (OUT.lock) for the whole run
    try:
        return _train(args, dist, workdir, show_progress)
    finally:
        workdir.unlock()


def _train(
    args: LanguageAdapterArgs, dist: distributed.Dist, workdir: WorkDir, show_progress: bool | None
) -> LanguageAdapterResult:
    """:func:`train_language_adapter` in this rank's place."""
    import adapters

    out, backbone, tokenizer, device = mlm.open_run(args)
    if dist.enabled:
        distributed.apply_threads(args.threads, dist)
        device = mlm.pick_device(dist.device)
    source = mlm.TextSource(args.text)
    _arch(args).to_adapters_config()  # a bad --non-linearity or reduction factor fails before any work
    _check_head_split(args.head, args.dev)
    dev, dev_texts = mlm.prepare_dev(tokenizer, source, args.dev, args.max_length, args.mlm_probability)
    record = _run_record(args, backbone, dist.world)
    work = workdir.partial
    dist.on_main(lambda: mlm.open_work(workdir, record, resume=args.resume, overwrite=args.overwrite))

    model, head_info = load_mlm(backbone, args.head)
    adapters.init(model)
    attach_inverse(model)
    head = head_module(model)
    model.to(device)
    packed = args.packed and mlm.packs(model, tokenizer, device)
    refs = dist.broadcast(
        dist.on_main(lambda: _references(args, work, model, head, tokenizer, source, dev, device, packed))
    )
    assert refs is not None

    _add_adapter(args, model, device)
    settings = LoopSettings.of(args, bf16=mlm.use_bf16(args.precision, device), packed=packed)
    split = args.dev.split()

    def texts() -> Iterator[str]:
        return split.train(mlm.texts_forever(source, block=args.shuffle_block, seed=args.seed))

    run = train_mlm(
        model,
        head,
        tokenizer,
        texts,
        settings,
        work / "adapter",
        device,
        desc=f"mlm {args.lang}",
        show_progress=show_progress,
        dist=dist,
    )

    def finish() -> dict[str, Any]:
        weights = work / "weights"
        loss = _save(args, model, head, dev, device, packed, weights)
        info = _info(args, head_info, settings, run, refs, loss, len(dev_texts), dist.world)
        text = json.dumps(info, indent=2, ensure_ascii=False) + "\n"
        (weights / INFO_FILE).write_text(text, encoding="utf-8")
        write_language_adapter_card(weights, info)  # README.md, AdapterHub's model-card layout
        workdir.finish(weights, record=mlm.RUN_FILE, ignore_errors=True)
        return info

    info = dist.broadcast(dist.on_main(finish))  # rank 0 scores and writes; every rank returns the result
    assert info is not None
    hist = run["loss"] or [{"loss": float("nan")}]
    return LanguageAdapterResult(
        out=out,
        steps=run["steps"],
        first_loss=hist[0]["loss"],
        last_loss=hist[-1]["loss"],
        texts_per_s=run["texts_per_s"] or 0.0,
        seconds=run["seconds"],
        head_sha256=head_info.sha256,
        dev_loss=info["dev_loss"],
        dev_loss_no_adapter=refs["dev_loss_no_adapter"],
        dev_loss_unigram=refs["dev_loss_unigram"],
        dev_texts=len(dev_texts),
        rank=dist.rank,
    )


def _add_adapter(args: LanguageAdapterArgs, model, device) -> None:
    """Add ``args.lang``'s adapter (seeded initial weights) as the only trainable part of ``model``."""
    import torch

    torch.manual_seed(args.seed)
    model.add_adapter(args.lang, config=_arch(args).to_adapters_config())
    model.train_adapter(args.lang)
    model.to(device)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if not trainable or any(f".{args.lang}." not in n for n in trainable):  # the head must stay frozen
        raise ClirError(f"internal: only {args.lang}'s adapter should train, not {trainable[:3]}")


def _save(args: LanguageAdapterArgs, model, head, dev, device, packed: bool, weights: Path) -> float:
    """Save the adapter (in ``args.save_dtype``) into ``weights``; returns its dev loss, scored on the
    weights as saved (rounded to fp16 first when saved in fp16)."""
    import torch

    adapter_params = [p for n, p in model.named_parameters() if f".{args.lang}." in n]
    if args.save_dtype == "fp16":
        with torch.no_grad():
            for p in adapter_params:
                p.copy_(p.half().float())
    loss = mlm.dev_loss(model, head, dev, device, packed=packed)
    if args.save_dtype == "fp16":
        for p in adapter_params:
            p.data = p.data.half()
    model.save_adapter(str(weights), args.lang, with_head=False)
    name_backbone(weights, args.backbone)
    return loss


def _info(
    args, head_info, settings: LoopSettings, run, refs, loss: float, dev_texts: int, world: int
) -> dict[str, Any]:
    """What ``clir_language_adapter.json`` records (``batch_size``: texts per step over all processes)."""
    return {
        "lang": args.lang,
        "backbone": args.backbone,  # as given (a registered name travels; the resolved cache folder does not)
        "text": args.text,
        "head": head_info.source,
        "head_sha256": head_info.sha256,
        "arch": _arch(args).__dict__,
        "seed": args.seed,
        "steps": run["steps"],
        "batch_size": args.batch_size * world,
        "processes": world,
        "lr": args.lr,
        "mlm_probability": args.mlm_probability,
        "dropout": "keyed",  # masks keyed by (seed, step, text): the same for any number of processes
        "precision": "bf16" if settings.bf16 else "fp32",
        "save_dtype": args.save_dtype,
        "packed": settings.packed,
        "train_texts": refs["train_texts"],
        "texts_seen": run["steps"] * args.batch_size * world,
        "dev": {**args.dev.__dict__, "texts": dev_texts},
        "dev_loss": round(loss, 5),
        "dev_loss_no_adapter": refs["dev_loss_no_adapter"],
        "dev_loss_unigram": refs["dev_loss_unigram"],
        "unigram_smoothing": refs["unigram_smoothing"],
        "trainable_parameters": run["trainable_parameters"],
        "seconds": run["seconds"],
        "texts_per_s": run["texts_per_s"],
        "loss": run["loss"],
    }


def _references(args, work: Path, model, head, tokenizer, source, dev, device, packed) -> dict[str, Any]:
    """The two references on the dev tokens (computed once per work folder): the frozen head without an
    adapter, and the unigram table of the training text."""
    saved = work / "references.json"
    if saved.is_file():
        return read_json(saved)
    train_texts = 0

    def counted():
        nonlocal train_texts
        for t in args.dev.split().train(source.records()):
            train_texts += 1
            yield t

    unigram, k = mlm.unigram_loss(tokenizer, counted(), dev, max_length=args.max_length)
    refs = {
        "dev_loss_no_adapter": round(mlm.dev_loss(model, head, dev, device, packed=packed), 5),
        "dev_loss_unigram": round(unigram, 5),
        "unigram_smoothing": k,
        "train_texts": train_texts,
    }
    saved.write_text(json.dumps(refs, indent=2) + "\n", encoding="utf-8")
    return refs
