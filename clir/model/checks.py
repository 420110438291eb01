"""What a model's files and settings must satisfy before anything is allocated: a backbone's ``config.json``
(sizes a crafted file can set to 10^6 hidden units or 10^10 words, asking for terabytes), an adapter's
``adapter_config.json`` (a reduction factor of 1e-9 is a bottleneck of 10^11 units), and the torch device
a ``--device`` names. Each is refused with a ClirError naming the file and the value."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from clir.config.model import check_activation, check_reduction
from clir.errors import ClirError
from clir.safe_load import read_json

#: per size of a backbone's config: the largest value any encoder clir can serve has use for (the largest
#: public encoders: hidden 8192, 128 layers, 256k words, 128k positions)
BACKBONE_BOUNDS = {
    "hidden_size": 32768,
    "num_hidden_layers": 512,
    "num_attention_heads": 1024,
    "intermediate_size": 262144,
    "vocab_size": 4_194_304,
    "max_position_embeddings": 1_048_576,
    "type_vocab_size": 1024,
}


#: settings of a backbone's config that are small non-negative numbers (epsilons, dropout rates); a string
#: there fails only at the first forward pass
FRACTIONS = (
    "layer_norm_eps",
    "rms_norm_eps",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "initializer_range",
)


def _size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_backbone_config(config: Any, where: str) -> None:
    """Sizes of a loaded ``transformers`` config against :data:`BACKBONE_BOUNDS`, its activation against
    transformers' own, and its weights against this machine's memory."""
    from transformers.activations import ACT2FN

    sizes: dict[str, int] = {}
    for key, high in BACKBONE_BOUNDS.items():
        value = getattr(config, key, None)
        if value is None:
            continue
        low = 0 if key == "type_vocab_size" else 1
        if not _size(value) or not low <= value <= high:
            raise ClirError(f"{where}: {key} {value!r:.40} is outside {low}..{high}")
        sizes[key] = value
    hidden, heads = sizes.get("hidden_size"), sizes.get("num_attention_heads")
    if hidden and heads and hidden % heads:
        raise ClirError(f"{where}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
    act = getattr(config, "hidden_act", None)
    if act is not None and (not isinstance(act, str) or act not in ACT2FN):
        raise ClirError(f"{where}: hidden_act {act!r:.40} is not an activation transformers knows")
    for key in FRACTIONS:
        value = getattr(config, key, None)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1
        ):
            raise ClirError(f"{where}: {key} {value!r:.40} is not a number in [0, 1)")
    need = 4 * _parameters(sizes)  # float32 weights, what from_pretrained allocates
    have = _memory()
    if have and need > have:
        raise ClirError(
            f"{where}: its weights need about {need / 1e9:.0f} GB, more than this machine's {have / 1e9:.0f} GB"
        )


def _parameters(s: dict[str, int]) -> int:
    """A BERT-shaped model's parameter count from its sizes (embeddings + attention and feed-forward)."""
    h = s.get("hidden_size", 0)
    inter = s.get("intermediate_size", 4 * h)
    embed = (s.get("vocab_size", 0) + s.get("max_position_embeddings", 0) + s.get("type_vocab_size", 0)) * h
    return embed + s.get("num_hidden_layers", 0) * (4 * h * h + 2 * h * inter)


def _memory() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def backbone_config(path: str) -> Any:
    """The checked config of the backbone at ``path`` (a folder or a hub id), read before its weights:
    a local ``config.json`` within the JSON limits, then its sizes (:func:`check_backbone_config`)."""
    from transformers import AutoConfig

    local = Path(path).expanduser() / "config.json"
    if local.is_file():
        read_json(local, what="a model config")  # depth and size first: transformers parses without limits
    config = AutoConfig.from_pretrained(path)
    check_backbone_config(config, str(local) if local.is_file() else path)
    return config


def check_weight_files(folder: Path) -> None:
    """The safetensors files of a model folder have readable headers (what a loader would choke on first)."""
    from safetensors import safe_open

    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), "pt"):
                pass
        except Exception as e:  # safetensors' own error type, or an OSError
            raise ClirError(f"{path}: not readable weights ({str(e).strip()[:200]})") from None


def check_adapter_folder(folder: str | Path, hidden: int | None) -> None:
    """A saved adapter's ``adapter_config.json``, before ``adapters`` builds what it describes."""
    path = Path(folder) / "adapter_config.json"
    if not path.is_file():
        return  # adapters itself says what is missing
    data = read_json(path, what="an adapter config")
    config = data.get("config") if isinstance(data, dict) else None
    if not isinstance(config, dict):
        raise ClirError(f"{path}: no 'config' mapping (not an adapter folder?)")
    if "reduction_factor" in config:
        check_reduction(config["reduction_factor"], hidden, str(path))
    check_activation(config.get("non_linearity"), str(path))
    saved = data.get("hidden_size")
    if hidden is not None and saved is not None and saved != hidden:
        raise ClirError(f"{path}: made for hidden size {saved!r:.20}, but this model's is {hidden}")


def torch_device(spec: str | None) -> Any:
    """The torch device ``spec`` names (default: cuda when available, else cpu); one that does not exist on
    this machine is refused here, not on the first tensor moved to it."""
    import torch

    if not spec:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError, TypeError):
        raise ClirError(f"--device {spec!r:.40}: not a torch device (cpu, cuda, cuda:1, mps ...)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise ClirError(f"--device {spec}: no CUDA GPU is visible on this machine (use cpu)")
        if device.index is not None and device.index >= count:
            raise ClirError(
                f"--device {spec}: this machine has {count} CUDA GPU(s) (cuda:0..cuda:{count - 1})"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ClirError(f"--device {spec}: MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ClirError(f"--device {spec}: clir runs on cpu, cuda or mps")
    return device


def position_limit(mc: Any, config: Any) -> int | None:
    """The tokens a text may have in this model (its position table; None when it has none). Token limits
    above it fail inside the model (or pass unnoticed on short texts): refused here, before any text is
    encoded; a default above a small model's limit is capped when tokenizing instead."""
    import dataclasses

    limit = getattr(mc, "max_position_embeddings", None)
    if not limit:
        return None
    if "roberta" in str(getattr(mc, "model_type", "")) or "camembert" in str(mc.model_type):
        limit -= (mc.pad_token_id or 0) + 1  # RoBERTa positions start after the padding index
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    for key in ("max_query_length", "max_passage_length"):
        value = getattr(config, key)
        if value is not None and not 1 <= value <= limit and value != defaults.get(key):
            raise ClirError(f"{key.replace('_', '-')} {value} is outside 1..{limit}, this model's limit")
    return int(limit)
