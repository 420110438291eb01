"""The one frozen masked-LM head that every language adapter of a backbone trains against, as in MAD-X.

The head is the common anchor that makes language adapters interchangeable under one task adapter: each
adapter learns to hand the frozen head representations it can read, so adapters of different languages end
in the same output space. A backbone with a pretrained head (mBERT, XLM-R) uses it. A backbone without one
(multilingual-e5-small is a plain BertModel) gets one trained once by ``clir train-mlm-head`` (backbone frozen,
no adapter, pooled text of all languages), saved as a small folder, and passed to every
``clir train-language-adapter --head DIR``. Its identity is ``head_sha256``, a hash of every head weight
(the decoder tied to the word embeddings included, so a head also names its backbone).

MAD-X's invertible adapter maps the embeddings forward at the input; at the output, its inverse is applied
to the hidden states right before the head's decoder (the tied output embeddings), after the head's
transform, as AdapterHub's flexible heads do (:func:`attach_inverse`)."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clir.errors import ClirError

log = logging.getLogger(__name__)

HEAD_WEIGHTS = "mlm_head.safetensors"
HEAD_INFO = "clir_mlm_head.json"


@dataclass(frozen=True)
class HeadInfo:
    sha256: str
    #: "pretrained" (the backbone's own), a head folder's path, or "fresh" (untrained: only to train one)
    source: str


def head_module(model):
    """The MLM head of a masked-LM model as one module applied to hidden states."""
    prefix = model.base_model_prefix
    heads = [m for name, m in model.named_children() if name != prefix]
    if len(heads) != 1:
        raise ClirError(f"{type(model).__name__}: cannot find its masked-LM head as one module")
    return heads[0]


def head_sha256(model) -> str:
    """sha256 over the head's weights (name order, fp32 bytes), the tied decoder weight included."""
    h = hashlib.sha256()
    for name, p in sorted(head_module(model).named_parameters(remove_duplicate=False), key=lambda x: x[0]):
        t = p.detach().to("cpu").float().contiguous()
        h.update(f"{name}:{tuple(t.shape)}\x00".encode())
        h.update(t.numpy().data)
    return h.hexdigest()


def _own_head_params(model) -> dict[str, Any]:
    """The head's weights that are not the backbone's (the decoder weight is the word embeddings)."""
    tied = model.get_input_embeddings().weight
    return {n: p for n, p in head_module(model).named_parameters() if p is not tied}


def load_mlm(backbone: str, head: str | None = None, *, fresh_ok: bool = False) -> tuple[Any, HeadInfo]:
    """(masked-LM model, its head) for ``backbone``, every weight frozen. ``head``: a folder written by
    ``clir train-mlm-head`` (required for a backbone without a pretrained head, unless ``fresh_ok``: a fresh
    head tied to the word embeddings, to train one)."""
    from transformers import AutoModelForMaskedLM

    try:
        model, info = AutoModelForMaskedLM.from_pretrained(backbone, output_loading_info=True)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ClirError(f"could not load the backbone {backbone!r} with a masked-LM head: {first}") from None
    prefix = model.base_model_prefix
    fresh = any(not k.startswith(prefix + ".") for k in info["missing_keys"])
    model.tie_weights()  # the decoder shares the word embeddings
    for p in model.parameters():
        p.requires_grad_(False)
    if head is not None:
        source = _load_head(model, Path(head), backbone)
    elif not fresh:
        source = "pretrained"
    elif fresh_ok:
        source = "fresh"
    else:
        raise ClirError(
            f"{backbone!r} has no pretrained masked-LM head: train the one head all its language adapters share "
            "with `clir train-mlm-head --backbone ... --text ... --out HEAD` and pass --head HEAD"
        )
    return model, HeadInfo(head_sha256(model), source)


def _load_head(model, folder: Path, backbone: str) -> str:
    import torch
    from safetensors.torch import load_file

    from clir.safe_load import read_json

    weights, info_file = folder / HEAD_WEIGHTS, folder / HEAD_INFO
    if not weights.is_file() or not info_file.is_file():
        raise ClirError(f"--head {folder}: not a head folder ({HEAD_WEIGHTS} and {HEAD_INFO} expected)")
    try:
        saved = load_file(str(weights))
        info = read_json(info_file)
    except (ClirError, OSError, ValueError) as e:
        raise ClirError(f"--head {folder}: unreadable ({e})") from None
    own = _own_head_params(model)
    if set(saved) != set(own) or any(saved[n].shape != p.shape for n, p in own.items()):
        raise ClirError(f"--head {folder}: its weights do not fit {backbone!r}'s masked-LM head")
    with torch.no_grad():
        for n, p in own.items():
            p.copy_(saved[n])
    if not isinstance(info, dict) or info.get("head_sha256") != head_sha256(model):
        raise ClirError(
            f"--head {folder}: its head_sha256 does not match once loaded on {backbone!r} (a head made for "
            "another backbone, or a damaged folder)"
        )
    return str(folder)


def save_head(model, folder: Path, info: dict[str, Any]) -> None:
    """Write the head's own weights (fp32) and ``info`` (with ``head_sha256``) into ``folder``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {n: p.detach().cpu().contiguous() for n, p in _own_head_params(model).items()}, folder / HEAD_WEIGHTS
    )
    full = {**info, "head_sha256": head_sha256(model)}
    (folder / HEAD_INFO).write_text(json.dumps(full, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def attach_inverse(model) -> None:
    """Apply the active invertible adapter's inverse to the decoder's input, as MAD-X does: logits =
    decoder(inverse(transform(hidden))). ``adapters`` registers only the forward map for models built with
    ``AutoModelForMaskedLM`` + ``adapters.init``. Without an active invertible adapter it is the identity."""
    decoder = model.get_output_embeddings()
    if decoder is None:
        raise ClirError(f"{type(model).__name__}: no output embeddings to apply the inverse before")
    if getattr(decoder, "_clir_inverse", False):
        return
    base = model.base_model

    def inverse(module, args):
        if not hasattr(base, "invertible_adapters"):  # no invertible adapter was ever added
            return None
        x = args[0]
        flat = x.dim() == 2  # the masked positions only: the coupling blocks take (batch, length, hidden)
        y = base.invertible_adapters_forward(x.unsqueeze(0) if flat else x, rev=True)
        return (y[0] if flat else y, *args[1:])

    decoder.register_forward_pre_hook(inverse)
    decoder._clir_inverse = True
