"""The masked-LM training that the shared MLM head (``clir train-mlm-head``) and the language adapters
(``clir train-language-adapter``) both run: seeded masks, keyed dropout, AdamW with linear warm-up and
decay; the checkpointed loop (data-only checkpoints, an exact resume) is :mod:`clir.train.loop`'s.

Under ``torchrun`` (:mod:`clir.train.distributed`) every rank reads the same stream, tokenises and masks the
whole global batch of ``batch_size x world`` texts with the same generator, and trains on its contiguous
share; dropout is keyed by (seed, step, global index) and the loss is normalised by the global count of
masked tokens, so N processes at batch b take the steps of one process at batch N x b."""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from clir.train import mlm
from clir.train.distributed import Dist, allreduce_grads
from clir.train.loop import LoopPlan, load_last, run_loop

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopSettings:
    max_steps: int
    batch_size: int
    lr: float
    warmup_ratio: float
    max_length: int
    mlm_probability: float
    seed: int
    checkpoint_every: int
    log_every: int
    #: bf16 autocast for the training forward (dev losses are always fp32)
    bf16: bool = False
    #: encode each batch packed (no padding), where the model's attention allows it
    packed: bool = False

    @classmethod
    def of(cls, args: Any, *, bf16: bool, packed: bool) -> LoopSettings:
        """The loop settings of a trainer's arguments (fields of the same names)."""
        names = [f for f in cls.__dataclass_fields__ if f not in ("bf16", "packed")]
        return cls(**{f: getattr(args, f) for f in names}, bf16=bf16, packed=packed)


@dataclass
class MlmRun:
    """The optimiser, schedule, mask RNG, step and loss history of a run: what its checkpoints hold."""

    named: list[tuple[str, Any]]
    optimizer: Any
    scheduler: Any
    gen: Any  # the torch.Generator that draws the MLM masks
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    interval: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @classmethod
    def start(cls, s: LoopSettings, named: list[tuple[str, Any]], folder: Path) -> MlmRun:
        """A fresh run, or the one the last checkpoint in ``folder`` holds."""
        import torch
        from transformers import get_linear_schedule_with_warmup

        optimizer = torch.optim.AdamW([p for _, p in named], lr=s.lr, weight_decay=0.0)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(s.warmup_ratio * s.max_steps), s.max_steps)
        run = cls(named, optimizer, scheduler, torch.Generator().manual_seed(s.seed))
        found = load_last(folder)
        if found is not None:
            run._restore(*found)
        return run

    def _restore(self, ckpt: Path, saved: dict[str, Any]) -> None:
        import torch

        from clir.train.checkpoint import set_rng_state

        with torch.no_grad():
            for n, p in self.named:
                p.copy_(saved["model"][n])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.gen.set_state(saved["rng"]["mask"])
        set_rng_state(saved["rng"]["global"])
        self.step, self.history = int(saved["step"]), list(saved["history"])
        self.seconds = float(saved["seconds"])
        self.interval = [float(x) for x in saved["interval"]]
        log.info("resumed at step %d from %s", self.step, ckpt)

    def state(self, s: LoopSettings, seconds: float, world: int = 1) -> dict[str, Any]:
        """What a checkpoint of the run holds."""
        from clir.train.checkpoint import rng_state

        return {
            "step": self.step,
            "data": {"texts": self.step * s.batch_size * world, "world": world},
            "model": {n: p.detach().cpu().clone() for n, p in self.named},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {"mask": self.gen.get_state(), "global": rng_state()},  # dropout draws from the global one
            "history": self.history,
            "interval": self.interval,
            "seconds": seconds,
        }


@dataclass
class _MlmSteps:
    """A run's steps as the checkpointed loop takes them (clir.train.loop.Steps)."""

    run: MlmRun
    s: LoopSettings
    one_step: Callable[[], float]
    world: int
    t0: float = field(default_factory=time.perf_counter)

    @property
    def step(self) -> int:
        return self.run.step

    def elapsed(self) -> float:
        return self.run.seconds + time.perf_counter() - self.t0

    def train_step(self) -> tuple[float, dict[str, str]]:
        loss = self.one_step()
        self.run.interval.append(loss)
        return loss, {"loss": f"{loss:.3f}"}

    def log_interval(self) -> None:
        run = self.run
        run.history.append({"step": run.step, "loss": round(sum(run.interval) / len(run.interval), 5)})
        run.interval = []

    def checkpoint_state(self) -> dict[str, Any]:
        return self.run.state(self.s, self.elapsed(), self.world)


def train_mlm(
    model,
    head,
    tokenizer,
    texts: Callable[[], Iterator[str]],
    s: LoopSettings,
    folder: Path,
    device,
    *,
    desc: str,
    show_progress: bool | None,
    dist: Dist | None = None,
) -> dict[str, Any]:
    """Train the parameters of ``model`` that require grad by masked LM on ``texts()`` (an endless stream),
    resuming from ``folder``'s last checkpoint. Returns the run's record: steps, seconds, speed, loss curve.
    ``dist``: this process's place under torchrun (rank 0 alone writes checkpoints)."""
    dist = dist or Dist()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    run = MlmRun.start(s, named, folder)
    per_step = s.batch_size * dist.world
    stream = itertools.islice(texts(), run.step * per_step, None)
    model.train()
    one_step = partial(_step, s, model, head, tokenizer, stream, device, run, dist)
    steps = _MlmSteps(run, s, one_step, dist.world)
    plan = LoopPlan(s.max_steps, s.checkpoint_every, s.log_every, 1, desc, show_progress=show_progress)
    run_loop(steps, plan, folder, dist)
    seconds = steps.elapsed()
    return {
        "trainable_parameters": sum(p.numel() for _, p in named),
        "steps": run.step,
        "seconds": round(seconds, 1),
        "texts_per_s": round(run.step * per_step / seconds, 2) if seconds > 0 else None,
        "loss": run.history,
    }


def _step(
    s: LoopSettings, model, head, tokenizer, texts: Iterator[str], device, run: MlmRun, dist: Dist
) -> float:
    """One optimiser step of masked-LM loss on the next global batch of texts; returns its loss."""
    import torch

    from clir.train.dropout import text_key

    batch = [next(texts) for _ in range(s.batch_size * dist.world)]
    enc = mlm.tokenize(tokenizer, batch, s.max_length)
    ids, labels = mlm.mask_tokens(enc, tokenizer, s.mlm_probability, run.gen)  # the global batch's masks
    rows = dist.share(range(len(batch)))
    mine = slice(rows[0], rows[-1] + 1)
    attention = enc["attention_mask"][mine]
    width = int(attention.sum(1).max())  # this share's own padding
    # the encoder needs gradients only when something inside it trains (an adapter); a head alone does not
    encoder_grad = any(p.requires_grad for p in model.base_model.parameters())
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if s.bf16 else contextlib.nullcontext()
    with autocast:
        loss_sum, _ = mlm.masked_loss(
            model,
            head,
            ids[mine, :width].to(device),
            attention[:, :width].to(device),
            labels[mine, :width].to(device),
            encoder_grad=encoder_grad,
            packed=s.packed,
            keys=[text_key(s.seed, "mlm", run.step, i) for i in rows],
        )
    # masked tokens of the global batch: every rank drew all of its masks, so no exchange is needed; each
    # rank's loss is its share of one mean
    total = int((labels != -100).sum())
    # DDP-style averaging of the gradients over ranks: scaled by the world size, their mean is the gradient
    # of the global batch's mean loss
    (loss_sum * (dist.world / max(total, 1))).backward()
    params = [p for _, p in run.named]
    allreduce_grads(params, dist)
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    return dist.sum(float(loss_sum.detach())) / max(total, 1)
