"""Training checkpoints in a data-only format: nothing read back from disk can run code.

A checkpoint folder ``checkpoints/step-N/`` holds ``tensors.safetensors`` (weights, optimiser moments, RNG
states) and ``state.json`` (everything else: step, data position, scheduler and scaler scalars, the config)
in which each tensor is a reference into the safetensors file. Pickle (``torch.save``'s format) is never
read: unpickling a crafted file executes arbitrary code. Python and NumPy RNG states are plain numbers and
survive JSON exactly, so a resumed run still reproduces an uninterrupted one bit for bit."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from clir.errors import ClirError
from clir.safe_load import read_json

CKPT_DIR = "checkpoints"
STATE_FILE = "state.json"
TENSORS_FILE = "tensors.safetensors"
#: what checkpoints of clir < 0.2 held (a pickle): recognised only to refuse it by name
LEGACY_FILE = "state.pt"

# markers of values JSON has no type for; a dict with str keys that starts with "$" is stored as items
_TENSOR, _ARRAY, _TUPLE, _ITEMS = "$tensor", "$ndarray", "$tuple", "$items"


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints of the run folder ``out``, oldest first."""
    root = out / CKPT_DIR
    if not root.is_dir():
        return []
    done = [
        p
        for p in root.iterdir()
        if p.is_dir()
        and p.name.startswith("step-")
        and p.name[5:].isdigit()
        and (p / STATE_FILE).is_file()
        and (p / TENSORS_FILE).is_file()
    ]
    return sorted(done, key=lambda p: int(p.name[5:]))


def legacy_checkpoints(out: Path) -> list[Path]:
    """Checkpoint files in the old pickle format (never loaded)."""
    root = out / CKPT_DIR
    return sorted(root.glob(f"step-*/{LEGACY_FILE}")) if root.is_dir() else []


# ---------------------------------------------------------------------- encoding
def _encode(obj: Any, tensors: dict[str, Any], path: str) -> Any:
    import torch

    if isinstance(obj, (torch.Tensor, np.ndarray)):
        key = path if path not in tensors else f"{path}#{len(tensors)}"
        if isinstance(obj, np.ndarray):
            tensors[key] = torch.from_numpy(np.ascontiguousarray(obj).copy())
            return {_ARRAY: key}
        tensors[key] = obj.detach().to("cpu").contiguous().clone()
        return {_TENSOR: key}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {_TUPLE: [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: _encode(v, tensors, f"{path}.{k}") for k, v in obj.items()}
        if not all(k is None or isinstance(k, (bool, int, float, str)) for k in obj):
            raise TypeError(f"checkpoint: unsupported dict key at {path}")
        return {_ITEMS: [[k, _encode(v, tensors, f"{path}.{k}")] for k, v in obj.items()]}
    raise TypeError(f"checkpoint: cannot store a {type(obj).__name__} at {path}")


def _decode(obj: Any, tensors: dict[str, Any]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1:
        ((key, val),) = obj.items()
        if key == _TENSOR:
            return tensors[val]
        if key == _ARRAY:
            return tensors[val].numpy()
        if key == _TUPLE:
            return tuple(_decode(v, tensors) for v in val)
        if key == _ITEMS:
            return {k: _decode(v, tensors) for k, v in val}
    return {k: _decode(v, tensors) for k, v in obj.items()}


# ---------------------------------------------------------------------- files
def save_checkpoint(out: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` as ``checkpoints/step-N`` (under a temporary name, then renamed); keep the last
    ``keep`` checkpoints."""
    from safetensors.torch import save_file

    root = out / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f"step-{step:08d}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    tensors: dict[str, Any] = {}
    doc = _encode(state, tensors, "s")
    save_file(tensors, str(tmp / TENSORS_FILE))
    (tmp / STATE_FILE).write_text(json.dumps(doc), encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob("*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def load_checkpoint(ckpt: Path) -> dict[str, Any]:
    """Read a checkpoint folder back; a damaged one is a :class:`ClirError` naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    hint = "delete that step folder to resume from an earlier checkpoint, or start over with --overwrite"
    try:
        tensors = load_file(str(ckpt / TENSORS_FILE))
    except (OSError, SafetensorError, ValueError) as e:
        raise ClirError(f"checkpoint {ckpt / TENSORS_FILE} is unreadable ({_short(e)}): {hint}") from None
    path = ckpt / STATE_FILE
    try:
        doc = read_json(path, what="a checkpoint state", allow_nan=True)  # a diverged loss is NaN
        state = _decode(doc, tensors)
        if not isinstance(state, dict) or not {"step", "data", "model", "optimizer", "rng"} <= set(state):
            raise ValueError("not a clir training state")
    except ClirError as e:
        raise ClirError(
            f"checkpoint {path} is unreadable ({str(e).removeprefix(f'{path}: ')}): {hint}"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ClirError(f"checkpoint {path} is unreadable ({_short(e)}): {hint}") from None
    wrong = _position_problem(state, ckpt)
    if wrong:
        raise ClirError(
            f"checkpoint {ckpt} does not fit this run ({wrong}): delete it to resume from an earlier one, or "
            "start over with --overwrite"
        )
    return state


def _position_problem(state: dict[str, Any], ckpt: Path) -> str | None:
    """What is wrong with where a checkpoint resumes: the step its folder is named after (``step-N``), and
    for ``clir train`` a data position of non-negative integers."""
    step = state["step"]
    if not _count(step):
        return f"step {step!r:.40} is not a step number"
    if ckpt.name.startswith("step-") and ckpt.name[5:].isdigit() and int(ckpt.name[5:]) != step:
        return f"step {step} in a folder named {ckpt.name}"
    data = state["data"]
    if isinstance(data, dict) and "epoch" in data:
        for key in ("epoch", "index"):
            if not _count(data.get(key)):
                return f"data.{key} {data.get(key)!r:.40} is not a position"
    return None


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 53


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


# ---------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
