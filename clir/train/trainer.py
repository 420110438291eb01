"""Contrastive training of a DualEncoder (``clir train``): full fine-tuning, a task adapter, or a task adapter
stacked on a frozen language adapter (MAD-X).

The output folder doubles as the run folder: while training it holds ``checkpoints/step-N/`` (written under a
temporary name, then renamed), ``train_log.jsonl`` and ``train_config.yaml``; at the end the model folder
(``clir_model.yaml`` + adapters, or the backbone in full mode) is assembled beside it and swapped in, so a
crash never leaves a half-written model and ``--resume`` always finds the last complete checkpoint.

A checkpoint holds the trainable weights, optimiser, scheduler, loss scaler, RNG states and the data
position (in a data-only format, clir/train/checkpoint.py), so a resumed run reproduces an uninterrupted one
with the same seed bit for bit."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clir.atomic import atomic_write_text, swap_into_place
from clir.config import Routing, TrainConfig, to_dict
from clir.errors import ClirError
from clir.model.resolve import MODEL_FILE
from clir.train.checkpoint import (
    CKPT_DIR,
    legacy_checkpoints,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

log = logging.getLogger(__name__)

LOG_FILE = "train_log.jsonl"
CONFIG_FILE = "train_config.yaml"
#: what a run folder may hold before the final model is swapped in
_RUN_ENTRIES = {CKPT_DIR, LOG_FILE, CONFIG_FILE}


@dataclass
class TrainResult:
    out: Path
    #: optimiser steps done (in total, across resumes)
    step: int
    #: False when the run stopped early (``stop_after`` or Ctrl-C) and can be resumed
    finished: bool
    #: mean loss of the last logged interval
    loss: float | None
    #: training triples per second in this process (checkpoint writing excluded)
    triples_per_s: float
    seconds: float
    checkpoint: Path | None = None


# ---------------------------------------------------------------------- run folder
def _prepare_out(out: Path, *, resume: bool, overwrite: bool) -> Path | None:
    """Check what ``out`` holds against the flags; return the checkpoint to resume from, if any."""
    if out.exists() and not out.is_dir():
        raise ClirError(f"--out {out} exists and is not a folder")
    legacy = legacy_checkpoints(out)
    if legacy and not overwrite:
        raise ClirError(
            f"{legacy[-1]} is a checkpoint in the old pickle format, which clir no longer loads (unpickling "
            "can run code): start over with --overwrite"
        )
    ckpts = list_checkpoints(out)
    finished = (out / MODEL_FILE).is_file()
    if resume and ckpts:
        return ckpts[-1]
    if resume and finished and not overwrite:
        raise ClirError(
            f"{out} holds a finished model and no checkpoint to resume from; pass --overwrite to train again"
        )
    if ckpts and not overwrite and not resume:
        raise ClirError(
            f"{out} has checkpoints of an unfinished run (last: {ckpts[-1].name}): pass --resume to continue "
            "it, or --overwrite to start over"
        )
    if finished and not overwrite:
        raise ClirError(
            f"{out} already holds a trained model; pass --overwrite to replace it (the old model stays until "
            "the new one is written)"
        )
    if out.is_dir() and not finished and not overwrite:
        strangers = sorted(p.name for p in out.iterdir() if p.name not in _RUN_ENTRIES)
        if strangers:
            raise ClirError(
                f"--out {out} is a folder with other content ({', '.join(strangers[:5])}); give a new folder "
                "or pass --overwrite"
            )
    if resume:
        log.info("no checkpoint in %s: starting from scratch", out)
    if (out / CKPT_DIR).exists():
        shutil.rmtree(out / CKPT_DIR)
    (out / LOG_FILE).unlink(missing_ok=True)
    return None


def _config_record(cfg: TrainConfig) -> dict[str, Any]:
    data = to_dict(cfg)
    data["resolved"] = {
        "lr": cfg.lr,
        "temperature": cfg.temperature,
        "warmup_steps": cfg.warmup_steps,
        "effective_batch_size": cfg.optim.batch_size * cfg.optim.grad_accum,
        "train_lang": cfg.train_lang,
    }
    return data


def _check_same_run(saved: dict[str, Any], cfg: TrainConfig, ckpt: Path) -> None:
    """A resumed run must use the settings that produced the checkpoint, or it would not equal one run."""
    now = to_dict(cfg)
    diffs = []
    for section in ("model", "data", "optim"):
        a, b = saved.get(section, {}), now[section]
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                diffs.append(f"{section}.{key}: {a.get(key)!r} -> {b.get(key)!r}")
    if diffs:
        raise ClirError(
            f"--resume: the config differs from the one that wrote {ckpt} ({'; '.join(diffs[:6])}); resume with "
            "the same settings, or start a new run with --overwrite / another --out"
        )


# ---------------------------------------------------------------------- model setup
def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def trainable_parameters(encoder) -> list[tuple[str, Any]]:
    """(name, parameter) of everything the optimiser updates, named ``<model index>.<parameter name>``."""
    return [
        (f"{i}.{n}", p)
        for i, m in enumerate(encoder.models())
        for n, p in m.named_parameters()
        if p.requires_grad
    ]


def setup_trainable(encoder, adapter_init: str = "identity") -> list[tuple[str, Any]]:
    """Put the encoder in training mode with exactly the intended weights trainable.

    full: every backbone weight; task/madx: only the task adapter(s) — ``train_adapter`` freezes the backbone
    (embeddings included) and any language adapter, which stays a fixed part of ``Stack(lang, task)``."""
    import torch

    cfg = encoder.config
    if cfg.adapter_mode == "full":
        for m in encoder.models():
            m.train()
            for p in m.parameters():
                p.requires_grad_(True)
    else:
        model = encoder.query_model
        names = encoder.task_adapter_names()
        model.train_adapter(names[0] if len(names) == 1 else names)
        if adapter_init == "identity":
            # A zero up-projection makes a fresh adapter the identity: training starts from the backbone's
            # own embeddings instead of a random perturbation of them (what matters for strong encoders).
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if ".adapter_up." in n and any(f".adapters.{t}." in n for t in names):
                        p.zero_()
    named = trainable_parameters(encoder)
    if not named:
        raise ClirError("nothing to train: no parameter requires gradients")
    return named


def _optimizer(named: list[tuple[str, Any]], lr: float, weight_decay: float):
    import torch

    # no weight decay on biases and LayerNorm weights (the usual BERT recipe)
    decay = [p for _, p in named if p.ndim >= 2]
    no_decay = [p for _, p in named if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def _amp(precision: str, device) -> tuple[Any, bool]:
    """(autocast dtype or None, use a loss scaler)."""
    import torch

    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None, False
    if precision == "fp16" or (precision == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16, True
    return torch.bfloat16, False


def _restore(saved, ckpt: Path, named, optimizer, scheduler, scaler) -> tuple[int, dict[str, int]]:
    """Load a checkpoint's state into the live objects; returns (step, data position)."""
    import torch

    by_name = dict(named)
    model = saved["model"]
    missing = sorted(set(by_name) - set(model))
    if missing:
        raise ClirError(f"checkpoint {ckpt} lacks weights for {missing[:3]}: it belongs to another model")
    try:
        with torch.no_grad():
            for name, p in by_name.items():
                p.copy_(model[name].to(p.device))
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if scaler is not None and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        set_rng_state(saved["rng"])
        data = {"epoch": int(saved["data"]["epoch"]), "index": int(saved["data"]["index"])}
        return int(saved["step"]), data
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ClirError(
            f"checkpoint {ckpt} does not fit this run ({msg}): delete it to resume from an earlier one, or "
            "start over with --overwrite"
        ) from None


def _truncate_log(path: Path, step: int) -> None:
    """Drop log records past the resumed checkpoint (they will be written again)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    atomic_write_text(path, "".join(line + "\n" for line in keep))


class _GracefulStop:
    """First Ctrl-C: finish the current step, save a checkpoint, stop. A second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def __enter__(self) -> _GracefulStop:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True
        log.warning("interrupt: stopping after this step (Ctrl-C again to abort without a checkpoint)")
        signal.signal(signal.SIGINT, self._old or signal.default_int_handler)

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


# ---------------------------------------------------------------------- the loop
def train(
    cfg: TrainConfig,
    *,
    out: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    stop_after: int | None = None,
    device: str | None = None,
    on_step: Callable[[int, float], None] | None = None,
    show_progress: bool | None = None,
    encoder=None,
) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data`` and write the model folder ``out`` (default ``cfg.out``).

    ``stop_after``: stop (with a checkpoint) once that many optimiser steps are done, keeping the schedule of
    the whole run, so ``resume=True`` later finishes it. ``on_step(step, loss)`` runs after every step.
    ``encoder``: train this DualEncoder (built from ``cfg.model``) in place instead of building one."""
    import torch

    from clir.data.triples import TripleStream, open_triples
    from clir.model.encoder import DualEncoder
    from clir.progress import progress
    from clir.train.loss import contrastive_loss, false_negative_mask

    target = out or cfg.out
    if not target:
        raise ClirError("no output folder: give --out DIR or `out:` in the config")
    out = Path(target).expanduser()
    ckpt = _prepare_out(out, resume=resume, overwrite=overwrite)
    saved = None
    if ckpt is not None:
        saved = load_checkpoint(ckpt)
        _check_same_run(saved.get("config") or {}, cfg, ckpt)
    source = open_triples(cfg.data.triples)
    if hasattr(source, "ensure_available"):
        source.ensure_available()  # fail before the model loads, with one message naming every file
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / CONFIG_FILE, _yaml({**_config_record(cfg), "out": str(out)}))

    opt_cfg = cfg.optim
    _seed_everything(opt_cfg.seed)
    if opt_cfg.threads:
        torch.set_num_threads(opt_cfg.threads)
    model_cfg = cfg.model
    if model_cfg.adapter_mode == "madx":
        # training texts are in the source language: train on Stack(source, task) whatever inference routes
        model_cfg = dataclasses.replace(model_cfg, routing=Routing("source", "source"))
    lengths = {
        k: getattr(cfg.data, k)
        for k in ("max_query_length", "max_passage_length")
        if getattr(cfg.data, k) is not None
    }
    if lengths:
        model_cfg = dataclasses.replace(model_cfg, **lengths)
    if encoder is None:
        encoder = DualEncoder(model_cfg, device=device)
    elif (
        encoder.config.adapter_mode != cfg.model.adapter_mode or encoder.config.backbone != cfg.model.backbone
    ):
        raise ClirError("the encoder passed to train() was not built from cfg.model")
    else:
        encoder.config = model_cfg
    named = setup_trainable(encoder, opt_cfg.adapter_init)
    params = [p for _, p in named]
    n_train = sum(p.numel() for p in params)
    n_all = sum(p.numel() for m in encoder.models() for p in m.parameters())
    log.info(
        "training %s parameters of %s (%.2f%%), mode %s, lr %g, temperature %g",
        f"{n_train:,}",
        f"{n_all:,}",
        100 * n_train / max(n_all, 1),
        cfg.model.adapter_mode,
        cfg.lr,
        cfg.temperature,
    )
    optimizer = _optimizer(named, cfg.lr, opt_cfg.weight_decay)
    from transformers import get_linear_schedule_with_warmup

    scheduler = get_linear_schedule_with_warmup(optimizer, cfg.warmup_steps, opt_cfg.max_steps)
    amp_dtype, use_scaler = _amp(opt_cfg.precision, encoder.device)
    scaler = torch.amp.GradScaler(encoder.device.type) if use_scaler else None
    if opt_cfg.compile:
        for m in encoder.models():
            m.compile()

    step, data_state = 0, {"epoch": 0, "index": 0}
    if saved is not None:
        assert ckpt is not None  # a saved state comes from a checkpoint folder
        step, data_state = _restore(saved, ckpt, named, optimizer, scheduler, scaler)
        _truncate_log(out / LOG_FILE, step)
        log.info(
            "resumed from %s (step %d, epoch %d, record %d)",
            ckpt,
            step,
            data_state["epoch"],
            data_state["index"],
        )
    del saved

    stream = TripleStream(
        source,
        negatives=cfg.data.negatives,
        shuffle_block=cfg.data.shuffle_block,
        seed=opt_cfg.seed,
        epoch=data_state["epoch"],
        index=data_state["index"],
    )
    examples = iter(stream)
    lang = cfg.train_lang
    temperature = cfg.temperature
    autocast = (
        (lambda: torch.autocast(encoder.device.type, dtype=amp_dtype))
        if amp_dtype is not None
        else contextlib.nullcontext
    )

    def state(at: int) -> dict[str, Any]:
        return {
            "step": at,
            "data": stream.state(),
            "model": {n: p.detach().to("cpu").clone() for n, p in named},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": rng_state(),
            "config": to_dict(cfg),
        }

    end = opt_cfg.max_steps if stop_after is None else min(opt_cfg.max_steps, stop_after)
    bar = progress(total=opt_cfg.max_steps, desc="train", unit="step") if show_progress is not False else None
    if bar is not None and step:
        bar.update(step)
    logf = open(out / LOG_FILE, "a", encoding="utf-8")
    t_start = time.perf_counter()
    busy, n_triples = 0.0, 0
    interval_loss, interval_steps, interval_triples, interval_busy = 0.0, 0, 0, 0.0
    last_loss: float | None = None
    last_ckpt: Path | None = None
    stopped = False
    try:
        with _GracefulStop() as stopper:
            while step < end:
                t0 = time.perf_counter()
                step_loss = 0.0
                for _ in range(opt_cfg.grad_accum):
                    batch = [next(examples) for _ in range(opt_cfg.batch_size)]
                    queries = [e.query for e in batch]
                    passages = [e.positive for e in batch] + [n for e in batch for n in e.negatives]
                    own = list(range(len(batch)))
                    mask = false_negative_mask([e.positives for e in batch], passages, own)
                    with autocast():
                        qv = encoder.forward(encoder.tokenize(queries, "query"), "query", lang)
                        pv = encoder.forward(encoder.tokenize(passages, "passage"), "passage", lang)
                        loss = contrastive_loss(qv, pv, torch.tensor(own), temperature, mask)
                    loss = loss / opt_cfg.grad_accum
                    (scaler.scale(loss) if scaler is not None else loss).backward()
                    step_loss += float(loss.detach())
                if not np.isfinite(step_loss):
                    raise ClirError(
                        f"loss is {step_loss} at step {step + 1}: lower optim.lr or use precision fp32"
                    )
                if scaler is not None:
                    scaler.unscale_(optimizer)
                grad_norm = (
                    float(torch.nn.utils.clip_grad_norm_(params, opt_cfg.max_grad_norm))
                    if opt_cfg.max_grad_norm
                    else None
                )
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                dt = time.perf_counter() - t0
                done = opt_cfg.batch_size * opt_cfg.grad_accum
                busy += dt
                n_triples += done
                interval_loss += step_loss
                interval_steps += 1
                interval_triples += done
                interval_busy += dt
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{step_loss:.4f}", triples_s=f"{done / dt:.1f}")
                if step % cfg.log_every == 0 or step == end:
                    last_loss = interval_loss / interval_steps
                    rec = {
                        "step": step,
                        "epoch": stream.epoch,
                        "loss": round(last_loss, 6),
                        "lr": scheduler.get_last_lr()[0],
                        "grad_norm": None if grad_norm is None else round(grad_norm, 6),
                        "triples_per_s": round(interval_triples / interval_busy, 2),
                        "elapsed_s": round(time.perf_counter() - t_start, 2),
                    }
                    logf.write(json.dumps(rec) + "\n")
                    logf.flush()
                    interval_loss, interval_steps, interval_triples, interval_busy = 0.0, 0, 0, 0.0
                stop_now = stopper.requested or (step == end and end < opt_cfg.max_steps)
                if (step % cfg.checkpoint.every == 0 and step < opt_cfg.max_steps) or stop_now:
                    last_ckpt = save_checkpoint(out, step, state(step), cfg.checkpoint.keep)
                if on_step is not None:
                    on_step(step, step_loss)
                if stop_now:
                    stopped = True
                    break
    finally:
        logf.close()
        if bar is not None:
            bar.close()
        for m in encoder.models():
            m.eval()
        encoder.config = cfg.model  # inference routing as configured
        encoder.weights_changed()
    seconds = time.perf_counter() - t_start
    tps = n_triples / busy if busy > 0 else 0.0
    if stopped or step < opt_cfg.max_steps:
        log.info(
            "stopped at step %d/%d; checkpoint %s (--resume continues)", step, opt_cfg.max_steps, last_ckpt
        )
        if stopper.requested:
            raise KeyboardInterrupt
        return TrainResult(out, step, False, last_loss, tps, seconds, last_ckpt)

    # the model folder: built beside the run folder, then swapped in
    staging = out.with_name(out.name + ".final")
    if staging.exists():
        shutil.rmtree(staging)
    encoder.save(staging)
    for name in (LOG_FILE, CONFIG_FILE):
        if (out / name).is_file():
            shutil.copy2(out / name, staging / name)
    if cfg.checkpoint.keep_after_training and (out / CKPT_DIR).is_dir():
        (out / CKPT_DIR).rename(staging / CKPT_DIR)
    swap_into_place(staging, out)
    log.info("wrote %s (%d steps, %.1f triples/s)", out, step, tps)
    return TrainResult(out, step, True, last_loss, tps, seconds, None)


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
