"""Which float precision the encoder computes in, and the low-precision weight copies it reuses between
``encode()`` calls (bit-identical to plain autocast, without casting every weight again per call)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

_cpu_bf16: bool | None = None


def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX): there bf16 autocast is ~1.7x faster."""
    global _cpu_bf16
    if _cpu_bf16 is None:
        try:
            flags = Path("/proc/cpuinfo").read_text()
            _cpu_bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
        except OSError:
            _cpu_bf16 = False
    return _cpu_bf16


def autocast_dtype(precision: str, device: Any) -> Any:
    """The autocast dtype the ``precision`` setting picks for encoding on ``device`` (None: plain fp32)."""
    import torch

    if precision == "fp32" or (precision == "auto" and device.type == "cpu" and not cpu_has_bf16()):
        return None
    if precision == "fp16" or (
        precision == "auto" and device.type == "cuda" and not torch.cuda.is_bf16_supported()
    ):
        return torch.float16
    return torch.bfloat16


def cast_linear_params(
    model: Any, dtype: Any, cache: dict[tuple[int, Any], dict[str, Any]]
) -> dict[str, Any]:
    """Low-precision copies of ``model``'s Linear weights and biases, reused across encode() calls through
    ``cache`` (the encoder's, keyed by model and dtype).

    Autocast casts every Linear weight again on each call (its cast cache dies with the context): for
    e5-small on this 2-core CPU ~1.5 of the ~14 CPU-ms a one-query encode costs (eval/bench/RESULTS.md),
    which search and serving pay per request. Autocast leaves tensors that
    are already in its dtype alone and casts fp32 ones with the same rounding, so feeding these copies
    (torch.func.functional_call) gives bit-identical vectors. A copy is renewed when its parameter is
    replaced, moved or updated in place (training bumps ``_version``)."""
    import torch

    key = (id(model), dtype)
    old = cache.get(key, {})
    new: dict[str, tuple[Any, int, int, Any]] = {}
    for mod_name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        for pname in ("weight", "bias"):
            p = getattr(mod, pname, None)
            if p is None or p.dtype != torch.float32:
                continue
            name = f"{mod_name}.{pname}" if mod_name else pname
            # parameters made under inference_mode (a language adapter loaded lazily by encode) keep
            # no version counter: those are cast afresh each call (-1 never matches)
            version = -1 if p.is_inference() else p._version
            hit = old.get(name)
            if hit is None or version < 0 or hit[0] is not p or hit[1] != version or hit[2] != p.data_ptr():
                hit = (p, version, p.data_ptr(), p.detach().to(dtype))
            new[name] = hit
    cache[key] = new  # rebuilt each call: copies of removed modules are dropped
    return {name: hit[3] for name, hit in new.items()}


def forward_with(model: Any, params: dict[str, Any], inputs: dict[str, Any]) -> Any:
    """``model(**inputs)`` with ``params`` (copies from :func:`cast_linear_params`) in place of its own
    weights; empty ``params``: the model as it is."""
    import torch

    if not params:
        return model(**inputs)
    # tie_weights=False: the copies are Linear weights (a tied one, like an MLM decoder's, is swapped where
    # autocast would cast it); skipping the search for ties saves ~1.4 ms a call
    return torch.func.functional_call(model, params, args=(), kwargs=inputs, strict=False, tie_weights=False)
