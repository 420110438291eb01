"""What a contrastive run trains and how: which weights are trainable (per adapter mode), the optimiser
and its schedule, mixed precision with a loss scaler where fp16 needs one, and the optimiser's part of a
checkpoint (saved and restored)."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clir.config import TrainConfig
from clir.errors import ClirError
from clir.model.modes import adapter_mode
from clir.model.protocol import Encoder
from clir.train.checkpoint import set_rng_state

log = logging.getLogger(__name__)


def trainable_parameters(encoder: Encoder) -> list[tuple[str, Any]]:
    """(name, parameter) of everything the optimiser updates, named ``<model index>.<parameter name>``."""
    return [
        (f"{i}.{n}", p)
        for i, m in enumerate(encoder.models())
        for n, p in m.named_parameters()
        if p.requires_grad
    ]


def setup_trainable(encoder: Encoder, adapter_init: str = "identity") -> list[tuple[str, Any]]:
    """Put the encoder in training mode with exactly the intended weights trainable.

    full: every backbone weight; task/madx: only the task adapter(s) — ``train_adapter`` freezes the backbone
    (embeddings included) and any language adapter, which stays a fixed part of ``Stack(lang, task)``."""
    import torch

    if adapter_mode(encoder.config).trains_backbone:
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


@dataclass
class Optimisation:
    """The trainable weights with their optimiser, schedule, loss scaler and autocast dtype."""

    named: list[tuple[str, Any]]
    optimizer: Any
    scheduler: Any
    scaler: Any  # torch.amp.GradScaler, or None (no fp16)
    amp_dtype: Any  # the autocast dtype, or None (fp32)

    @classmethod
    def build(cls, cfg: TrainConfig, encoder: Encoder) -> Optimisation:
        """Make ``cfg.optim``'s weights of ``encoder`` trainable and set up everything that updates them."""
        import torch
        from transformers import get_linear_schedule_with_warmup

        opt_cfg = cfg.optim
        named = setup_trainable(encoder, opt_cfg.adapter_init)
        n_train = sum(p.numel() for _, p in named)
        n_all = sum(p.numel() for m in encoder.models() for p in m.parameters())
        amp_dtype, use_scaler = _amp(opt_cfg.precision, encoder.device)
        log.info(
            "training %s parameters of %s (%.2f%%), mode %s, lr %g, temperature %g, %s",
            f"{n_train:,}",
            f"{n_all:,}",
            100 * n_train / max(n_all, 1),
            cfg.model.adapter_mode,
            cfg.lr,
            cfg.temperature,
            "fp32" if amp_dtype is None else f"{str(amp_dtype).removeprefix('torch.')} autocast",
        )
        optimizer = _optimizer(named, cfg.lr, opt_cfg.weight_decay)
        scheduler = get_linear_schedule_with_warmup(optimizer, cfg.warmup_steps, opt_cfg.max_steps)
        scaler = torch.amp.GradScaler(encoder.device.type) if use_scaler else None
        if opt_cfg.compile:
            for m in encoder.models():
                m.compile()
        return cls(named, optimizer, scheduler, scaler, amp_dtype)

    @property
    def params(self) -> list[Any]:
        return [p for _, p in self.named]

    def autocast(self, device: Any) -> contextlib.AbstractContextManager[Any]:
        import torch

        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.amp_dtype)

    def backward(self, loss: Any) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, max_grad_norm: float | None) -> float | None:
        """One optimiser step on the accumulated gradients (clipped to ``max_grad_norm``); returns their norm."""
        import torch

        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = (
            float(torch.nn.utils.clip_grad_norm_(self.params, max_grad_norm)) if max_grad_norm else None
        )
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def state(self) -> dict[str, Any]:
        """The weights and optimiser parts of a checkpoint."""
        return {
            "model": {n: p.detach().to("cpu").clone() for n, p in self.named},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def restore(self, saved: dict[str, Any], ckpt: Path) -> tuple[int, dict[str, int]]:
        """Load a checkpoint's state into the live objects; returns (step, data position)."""
        return _restore(saved, ckpt, self.named, self.optimizer, self.scheduler, self.scaler)


def _optimizer(named: list[tuple[str, Any]], lr: float, weight_decay: float):
    import torch

    # no weight decay on biases and LayerNorm weights (the usual BERT recipe)
    decay = [p for _, p in named if p.ndim >= 2]
    no_decay = [p for _, p in named if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def _amp(precision: str, device) -> tuple[Any, bool]:
    """(autocast dtype or None, use a loss scaler). ``auto``: bf16 where the hardware computes it natively
    (a GPU with bf16, else fp16 with a loss scaler; a CPU with AVX512-BF16 or AMX: 1.48x packed fp32 per step on
    e5-small with the same dev loss, eval/bench/RESULTS.md), fp32 elsewhere."""
    import torch

    from clir.model.precision import cpu_has_bf16

    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"
    if precision == "fp32":
        return None, False
    if precision == "fp16":
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
