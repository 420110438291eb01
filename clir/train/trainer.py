"""Contrastive training of a DualEncoder (``clir train``): full fine-tuning, a task adapter, or a task adapter
stacked on a frozen language adapter (MAD-X).

The output folder doubles as the run folder (clir/train/run_folder.py): while training it holds
``checkpoints/step-N/`` (written under a temporary name, then renamed), ``train_log.jsonl`` and
``train_config.yaml``; at the end the model folder (``clir_model.yaml`` + adapters, or the backbone in full
mode) is assembled beside it and swapped in, so a crash never leaves a half-written model and ``--resume``
always finds the last complete checkpoint.

A checkpoint holds the trainable weights, optimiser, scheduler, loss scaler, RNG states and the data
position (in a data-only format, clir/train/checkpoint.py), so a resumed run reproduces an uninterrupted one
with the same seed bit for bit.

Under ``torchrun --nproc_per_node N -m clir train`` the same loop runs in N processes
(clir/train/distributed.py): each encodes its share of every global batch, rank 0 alone writes the run
folder, and the step itself (clir/train/contrastive.py) makes N processes at batch b compute what one
process at batch N x b does. The loop around the steps (progress, log and checkpoint cadence, the early
stop) is clir/train/loop.py's, shared with the MLM trainers; the run folder is a clir.workdir.WorkDir, locked
(``OUT.lock``) for the whole run."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from clir.atomic import disk_errors
from clir.config import Routing, TrainConfig, to_dict
from clir.errors import ClirError
from clir.model.modes import adapter_mode
from clir.model.protocol import Encoder
from clir.train import distributed
from clir.train.checkpoint import rng_state
from clir.train.contrastive import ContrastiveStep
from clir.train.distributed import Dist
from clir.train.loop import GracefulStop, LoopPlan, load_last, run_loop
from clir.train.optim import Optimisation
from clir.train.run_folder import (
    LOG_FILE,
    check_same_run,
    discard_unstarted,
    prepare_out,
    run_workdir,
    truncate_log,
    write_config,
    write_model,
)
from clir.workdir import WorkDir

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    out: Path
    #: optimiser steps done (in total, across resumes)
    step: int
    #: False when the run stopped early (``stop_after`` or Ctrl-C) and can be resumed
    finished: bool
    #: mean loss of the last logged interval
    loss: float | None
    #: training triples per second, over all processes (checkpoint writing excluded)
    triples_per_s: float
    seconds: float
    checkpoint: Path | None = None
    #: this process's rank under torchrun (0 in a single process): rank 0 wrote the folder and reports
    rank: int = 0


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators, as a training run starts."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def training_encoder(cfg: TrainConfig, encoder: Encoder, device: str | None) -> Any:
    """The encoder to train, configured for training: MAD-X trains on ``Stack(source, task)`` whatever the
    inference routing, and the data section's token limits apply."""
    from clir.model.encoder import DualEncoder

    model_cfg = cfg.model
    if adapter_mode(model_cfg).routes_languages:
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
        return DualEncoder(model_cfg, device=device)
    if encoder.config.adapter_mode != cfg.model.adapter_mode or encoder.config.backbone != cfg.model.backbone:
        raise ClirError("the encoder passed to train() was not built from cfg.model")
    encoder.config = model_cfg
    return encoder


@dataclass
class _Meter:
    """Loss and throughput: in total (for the result) and per logging interval (for the log)."""

    t_start: float
    busy: float = 0.0
    triples: int = 0
    interval_loss: float = 0.0
    interval_steps: int = 0
    interval_triples: int = 0
    interval_busy: float = 0.0

    def add(self, loss: float, triples: int, seconds: float) -> None:
        self.busy += seconds
        self.triples += triples
        self.interval_loss += loss
        self.interval_steps += 1
        self.interval_triples += triples
        self.interval_busy += seconds

    def close_interval(self) -> tuple[float, float]:
        """(mean loss, triples per second) of the interval, which starts afresh."""
        out = (self.interval_loss / self.interval_steps, self.interval_triples / self.interval_busy)
        self.interval_loss, self.interval_steps, self.interval_triples, self.interval_busy = 0.0, 0, 0, 0.0
        return out

    def triples_per_s(self) -> float:
        return self.triples / self.busy if self.busy > 0 else 0.0


@dataclass
class _Run:
    """A training run in progress: what every step reads and updates."""

    cfg: TrainConfig
    out: Path
    encoder: Encoder
    opt: Optimisation
    stream: Any  # clir.data.triples.TripleStream
    examples: Iterator[Any]
    step: int
    meter: _Meter
    dist: Dist
    stepper: ContrastiveStep
    last_loss: float | None = None
    #: the last step's gradient norm (logged)
    grad_norm: float | None = None
    #: ``train_log.jsonl``, open on rank 0 while the loop runs
    logf: TextIO | None = None

    @property
    def global_batch(self) -> int:
        """Triples per micro-batch over all processes."""
        return self.cfg.optim.batch_size * self.dist.world

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "data": self.stream.state(),
            **self.opt.state(),
            "rng": rng_state(),
            "config": to_dict(self.cfg),
            "world_size": self.dist.world,
        }

    def train_step(self) -> tuple[float, dict[str, str]]:
        """One optimiser step (clir.train.loop.Steps), timed for the throughput."""
        t0 = time.perf_counter()
        step_loss, self.grad_norm = _train_step(self)
        self.step += 1
        dt = time.perf_counter() - t0
        done = self.global_batch * self.cfg.optim.grad_accum
        self.meter.add(step_loss, done, dt)
        return step_loss, {"loss": f"{step_loss:.4f}", "triples_s": f"{done / dt:.1f}"}

    def log_interval(self) -> None:
        _log_interval(self, self.logf, self.grad_norm)


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
    ``encoder``: train this DualEncoder (built from ``cfg.model``) in place instead of building one.

    Under torchrun (``WORLD_SIZE`` > 1) every process calls this; see clir/train/distributed.py."""
    dist = _join(cfg, device)
    work, ckpt, saved, source, created = _open_run(cfg, out, resume=resume, overwrite=overwrite, dist=dist)
    folder = work.out
    try:
        with disk_errors(
            folder, "checkpoints already written are intact: free space, then --resume continues"
        ):
            return _train(
                cfg, dist, (folder, ckpt, saved, source), stop_after, device, on_step, show_progress, encoder
            )
    except BaseException:
        if dist.is_main:
            discard_unstarted(folder, created=created)
        raise
    finally:
        work.unlock()


def _train(
    cfg: TrainConfig,
    dist: Dist,
    run_files: tuple[Path, Path | None, dict[str, Any] | None, Any],
    stop_after: int | None,
    device: str | None,
    on_step: Callable[[int, float], None] | None,
    show_progress: bool | None,
    encoder: Encoder,
) -> TrainResult:
    """:func:`train` once its run folder is open: (folder, checkpoint, its state, triples source)."""
    from clir.data.triples import TripleStream

    folder, ckpt, saved, source = run_files
    opt_cfg = cfg.optim
    seed_everything(opt_cfg.seed)
    distributed.apply_threads(opt_cfg.threads, dist)
    encoder = training_encoder(cfg, encoder, dist.device or device)
    opt = Optimisation.build(cfg, encoder)
    step, data_state = 0, {"epoch": 0, "index": 0}
    if saved is not None:
        assert ckpt is not None  # a saved state comes from a checkpoint folder
        step, data_state = opt.restore(saved, ckpt)
        if dist.is_main:
            truncate_log(folder / LOG_FILE, step)
        log.info("resumed from %s (step %d, epoch %d, record %d)", ckpt, step, *data_state.values())
    del saved

    stream = TripleStream(
        source,
        negatives=cfg.data.negatives,
        shuffle_block=cfg.data.shuffle_block,
        seed=opt_cfg.seed,
        epoch=data_state["epoch"],
        index=data_state["index"],
    )
    stepper = ContrastiveStep(cfg, encoder, opt, dist)
    run = _Run(
        cfg, folder, encoder, opt, stream, iter(stream), step, _Meter(time.perf_counter()), dist, stepper
    )
    end = opt_cfg.max_steps if stop_after is None else min(opt_cfg.max_steps, stop_after)
    plan = LoopPlan(
        opt_cfg.max_steps,
        cfg.checkpoint.every,
        cfg.log_every,
        cfg.checkpoint.keep,
        "train",
        end,
        show_progress,
    )
    try:
        with GracefulStop() as stopper, _log_file(run):
            ended = run_loop(run, plan, folder, dist, stopper=stopper, on_step=on_step)
    finally:
        for m in encoder.models():
            m.eval()
        encoder.config = cfg.model  # inference routing as configured
        encoder.weights_changed()
    seconds = time.perf_counter() - run.meter.t_start
    tps = run.meter.triples_per_s()
    if ended.stopped or run.step < opt_cfg.max_steps:
        log.info(
            "stopped at step %d/%d; checkpoint %s (--resume continues)",
            run.step,
            opt_cfg.max_steps,
            ended.checkpoint,
        )
        if stopper.requested:
            raise KeyboardInterrupt
        return TrainResult(folder, run.step, False, run.last_loss, tps, seconds, ended.checkpoint, dist.rank)
    dist.on_main(lambda: write_model(encoder, folder, keep_checkpoints=cfg.checkpoint.keep_after_training))
    log.info("wrote %s (%d steps, %.1f triples/s)", folder, run.step, tps)
    return TrainResult(folder, run.step, True, run.last_loss, tps, seconds, None, dist.rank)


def _join(cfg: TrainConfig, device: str | None) -> Dist:
    """This process's place in the run (one process, or a rank under torchrun); only rank 0 reports."""
    dist = distributed.setup(device)
    if not dist.is_main:
        logging.getLogger("clir").setLevel(logging.WARNING)
    if dist.enabled:
        log.info(
            "%d processes (%s), %s thread(s) each; global batch %d x %d",
            dist.world,
            dist.backend,
            distributed.thread_count(cfg.optim.threads, dist) or "default",
            cfg.optim.batch_size,
            dist.world,
        )
    return dist


def _open_run(
    cfg: TrainConfig, out: str | Path | None, *, resume: bool, overwrite: bool, dist: Dist
) -> tuple[WorkDir, Path | None, dict[str, Any] | None, Any, bool]:
    """(the run folder's WorkDir, checkpoint to resume from, its state, triples source, whether the folder is
    new): the folder locked (rank 0 holds ``OUT.lock`` until :func:`train` returns) and checked against the
    flags, the checkpoint against ``cfg``, the triples' files found, all before the model loads; then the
    run's config is written. Rank 0 does the checks and writes, and hands the checkpoint to the others."""
    from clir.data.triples import open_triples

    target = out or cfg.out
    if not target:
        raise ClirError("no output folder: give --out DIR or `out:` in the config")
    work = run_workdir(Path(target).expanduser())
    folder = work.out

    def check_and_prepare() -> tuple[Path | None, dict[str, Any] | None, bool]:
        work.lock(what="training run")
        try:
            work.recover(what="model")
            found = load_last(folder) if prepare_out(folder, resume=resume, overwrite=overwrite) else None
            ckpt, saved = found if found is not None else (None, None)
            if ckpt is not None and saved is not None:
                check_same_run(
                    saved.get("config") or {},
                    cfg,
                    ckpt,
                    saved_world=int(saved.get("world_size", 1)),
                    world=dist.world,
                )
            source = open_triples(cfg.data.triples)
            if hasattr(source, "ensure_available"):
                source.ensure_available()  # fail before the model loads, with one message naming every file
            created = not folder.exists()
            folder.mkdir(parents=True, exist_ok=True)
            write_config(folder, cfg)
        except BaseException:
            work.unlock()
            raise
        return ckpt, saved, created

    ckpt, saved, created = dist.broadcast(dist.on_main(check_and_prepare) or (None, None, False))
    source = open_triples(cfg.data.triples)
    if hasattr(source, "ensure_available") and not dist.is_main:
        source.ensure_available()  # rank 0 fetched them; another machine may not see its files
    return work, ckpt, saved, source, created


@contextlib.contextmanager
def _log_file(run: _Run) -> Iterator[None]:
    """``train_log.jsonl`` open for appending while the loop runs (rank 0: one record a log interval)."""
    if not run.dist.is_main:
        yield
        return
    with open(run.out / LOG_FILE, "a", encoding="utf-8") as run.logf:
        try:
            yield
        finally:
            run.logf = None


def _train_step(run: _Run) -> tuple[float, float | None]:
    """One optimiser step over ``grad_accum`` global micro-batches of contrastive loss (this process encodes
    its share, clir/train/contrastive.py); returns (loss, gradient norm)."""
    optim_cfg = run.cfg.optim
    batches = [[next(run.examples) for _ in range(run.global_batch)] for _ in range(optim_cfg.grad_accum)]
    step_loss = run.stepper.run(batches, run.step)
    if not np.isfinite(step_loss):
        raise ClirError(f"loss is {step_loss} at step {run.step + 1}: lower optim.lr or use precision fp32")
    return step_loss, run.opt.step(optim_cfg.max_grad_norm)


def _log_interval(run: _Run, logf: TextIO | None, grad_norm: float | None) -> None:
    """One ``train_log.jsonl`` record (rank 0): the interval's mean loss and throughput, the learning rate."""
    run.last_loss, triples_per_s = run.meter.close_interval()
    if logf is None:
        return
    rec = {
        "step": run.step,
        "epoch": run.stream.epoch,
        "loss": round(run.last_loss, 6),
        "lr": run.opt.scheduler.get_last_lr()[0],
        "grad_norm": None if grad_norm is None else round(grad_norm, 6),
        "triples_per_s": round(triples_per_s, 2),
        "elapsed_s": round(time.perf_counter() - run.meter.t_start, 2),
    }
    logf.write(json.dumps(rec) + "\n")
    logf.flush()
