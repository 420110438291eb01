"""The checkpointed training loop both trainers run: ``clir train``'s contrastive steps
(clir/train/trainer.py) and the masked-LM steps of language adapters and the MLM head (clir/train/mlm_loop.py).

The skeleton is shared: resume from the last complete checkpoint (:func:`load_last`), steps up to an end
with a progress bar, a log record every ``log_every`` steps, a data-only checkpoint every
``checkpoint_every`` steps (rank 0 writes it, clir/train/checkpoint.py), and an early stop (``stop_after``,
Ctrl-C) that leaves a checkpoint to resume from. What one step does, what a log record and a checkpoint
hold are the trainer's (:class:`Steps`); the final model is the trainer's to write, swapped into place
through its :class:`clir.workdir.WorkDir`. The loop itself draws no random numbers, so a run's numerics are
its steps' alone."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from clir.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from clir.train.distributed import Dist

log = logging.getLogger(__name__)


class Steps(Protocol):
    """What a trainer supplies to the loop."""

    @property
    def step(self) -> int:
        """Optimiser steps done (across resumes)."""
        ...

    def train_step(self) -> tuple[float, dict[str, str]]:
        """One optimiser step (advancing :attr:`step`): its loss and the progress bar's postfix."""
        ...

    def log_interval(self) -> None:
        """Close the logging interval just ended (a log record, a loss curve point)."""
        ...

    def checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint holds (rank 0 only): ``step``, ``data``, ``model``, ``optimizer``, ``rng``..."""
        ...


@dataclass(frozen=True)
class LoopPlan:
    max_steps: int
    checkpoint_every: int
    log_every: int
    #: checkpoints kept (the last ones)
    keep: int
    #: the progress bar's label
    desc: str
    #: stop here, with a checkpoint, when short of ``max_steps`` (None: ``max_steps``)
    end: int | None = None
    show_progress: bool | None = None


@dataclass(frozen=True)
class LoopEnd:
    #: the loop stopped short of ``max_steps`` (Ctrl-C, or ``end``) with a checkpoint to resume from
    stopped: bool
    #: the last checkpoint written in this run, if any
    checkpoint: Path | None


class GracefulStop:
    """First Ctrl-C: finish the current step, save a checkpoint, stop. A second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def __enter__(self) -> GracefulStop:
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


def load_last(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """The last complete checkpoint under ``folder`` and its state (read as data only), or None."""
    ckpts = list_checkpoints(folder)
    return (ckpts[-1], load_checkpoint(ckpts[-1])) if ckpts else None


def save(steps: Steps, folder: Path, keep: int, dist: Dist) -> Path | None:
    """Rank 0 writes a checkpoint of the run as it stands (keeping the last ``keep``); every rank learns
    its path."""

    def write() -> Path:
        return save_checkpoint(folder, steps.step, steps.checkpoint_state(), keep)

    return dist.broadcast(dist.on_main(write))


def run_loop(
    steps: Steps,
    plan: LoopPlan,
    folder: Path,
    dist: Dist,
    *,
    stopper: GracefulStop | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> LoopEnd:
    """Steps up to ``plan.end``, each logged and checkpointed (into ``folder``) as planned. A stop request
    seen by any rank stops every rank after the same step (``stopper``: only then do the ranks exchange a
    flag each step). ``on_step(step, loss)`` runs after every step and its checkpoint."""
    from clir.progress import progress

    end = plan.max_steps if plan.end is None else plan.end
    show = plan.show_progress is not False and dist.is_main
    bar = progress(total=plan.max_steps, desc=plan.desc, unit="step") if show else None
    if bar is not None and steps.step:
        bar.update(steps.step)
    last: Path | None = None
    try:
        while steps.step < end:
            loss, postfix = steps.train_step()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(**postfix)
            if steps.step % plan.log_every == 0 or steps.step == end:
                steps.log_interval()
            if stopper is not None and dist.any(stopper.requested):
                stopper.requested = True  # Ctrl-C reached one rank: every rank stops after this step
            stop_now = (stopper is not None and stopper.requested) or (steps.step == end < plan.max_steps)
            if (steps.step % plan.checkpoint_every == 0 and steps.step < plan.max_steps) or stop_now:
                last = save(steps, folder, plan.keep, dist)
            if on_step is not None:
                on_step(steps.step, loss)
            if stop_now:
                return LoopEnd(True, last)
        return LoopEnd(False, last)
    finally:
        if bar is not None:
            bar.close()
