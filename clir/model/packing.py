"""Packed encoding: the texts of a batch laid end to end in one row, with no padding and no attention mask
(what variable-length attention kernels do on GPUs).

Why: a padded batch spends compute on padding and, under bf16 autocast, rounds each vector differently at
each padded width, so batches could only hold texts of one width (a server micro-batch of 16 mixed-length
queries took several forwards). Packed, a text's tokens go through the same row-wise operations (embeddings,
linear layers, layer norms) whatever shares the row, and attention runs per text
(:class:`SegmentedAttention`): a text encodes to the same vector alone or in any pack, provided the linear
layers' kernels do not round by the number of rows they get (AMX bf16 kernels do: row blocks,
:mod:`clir.model.rowblocks`).

It needs a model whose attention calls ``torch.nn.functional.scaled_dot_product_attention`` with no mask
(the ``sdpa`` implementation of BERT-family models, adapters included) and that takes explicit position ids.
:func:`packs_like_padding` checks that on the model itself; a model that fails it is encoded padded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

#: Largest difference per component allowed between a packed and a padded fp32 encoding in the probe.
PROBE_TOLERANCE = 1e-4
_PROBE_TEXTS = ("a short one", "a somewhat longer text, to give the two texts different lengths")


class NotPackable(RuntimeError):
    """The model's attention cannot be split per text (a mask, causal attention or unexpected shapes)."""


class SegmentedAttention(TorchFunctionMode):
    """Within the block, ``scaled_dot_product_attention`` over a packed row attends within each text only:
    each run of equal-length texts becomes one (texts, heads, length, dim) call, as a padded batch of that
    width would be, minus the padding. ``blocks``: (in, out features) -> rows per product, for Linear
    weights whose products round by their row count (:mod:`clir.model.rowblocks`)."""

    def __init__(self, lengths: Sequence[int], blocks: dict[tuple[int, int], int] | None = None) -> None:
        super().__init__()
        self.blocks = blocks or {}
        self.total = sum(lengths)
        self.runs: list[tuple[int, int, int]] = []  # (first token, length, texts)
        start = 0
        for n in lengths:
            if self.runs and self.runs[-1][1] == n and self.runs[-1][0] + n * self.runs[-1][2] == start:
                first, _, count = self.runs[-1]
                self.runs[-1] = (first, n, count + 1)
            else:
                self.runs.append((start, n, 1))
            start += n

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return self._attend(*args, **kwargs)
        if func is F.linear and self.blocks:
            return self._linear(*args, **kwargs)
        return func(*args, **kwargs)

    def _linear(self, x, weight, bias=None):
        return blocked_linear(x, weight, bias, self.blocks.get((weight.shape[-1], weight.shape[0])))

    def _attend(self, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kw):
        if attn_mask is not None or is_causal:
            raise NotPackable("the model passes an attention mask or causal attention")
        if not (q.shape[0] == k.shape[0] == 1 and q.shape[-2] == k.shape[-2] == self.total):
            raise NotPackable(f"attention over {tuple(q.shape)} is not one packed row of {self.total} tokens")
        out = []
        for first, length, count in self.runs:
            span = slice(first, first + length * count)

            def per_text(x, span=span, count=count, length=length):
                return x[0, :, span].unflatten(1, (count, length)).transpose(0, 1)  # (texts, heads, len, dim)

            o = F.scaled_dot_product_attention(
                per_text(q), per_text(k), per_text(v), dropout_p=dropout_p, **kw
            )
            out.append(o.transpose(0, 1).flatten(1, 2))
        return torch.cat(out, dim=1).unsqueeze(0)


def blocked_linear(x, weight, bias, rows: int | None):
    """``F.linear`` over at most ``rows`` rows (the second-last dimension) at a time (None or 0: at once)."""
    if not rows or x.shape[-2] <= rows:
        return F.linear(x, weight, bias)
    return torch.cat([F.linear(part, weight, bias) for part in x.split(rows, dim=-2)], dim=-2)


def pack(model: Any, ids: Sequence[Sequence[int]], device: Any) -> tuple[dict[str, Any], list[int]]:
    """Model inputs for ``ids`` (token ids of each text) in one row, and each text's length. Positions restart
    at every text (RoBERTa-style models count them from ``padding_idx + 1``); token types are explicit zeros,
    since a model's buffered defaults stop at its position limit and a pack can be longer."""
    lengths = [len(t) for t in ids]
    flat = torch.tensor([i for t in ids for i in t], dtype=torch.long, device=device).unsqueeze(0)
    positions = torch.cat([torch.arange(n, device=device) for n in lengths]).unsqueeze(0)
    embeddings = getattr(model, "embeddings", None)
    padding_idx = getattr(embeddings, "padding_idx", None)
    if padding_idx is not None:  # RoBERTa, XLM-R: positions start after the padding index
        positions = positions + padding_idx + 1
    inputs = {"input_ids": flat, "position_ids": positions}
    if getattr(embeddings, "token_type_embeddings", None) is not None:
        inputs["token_type_ids"] = torch.zeros_like(flat)
    return inputs, lengths


def hidden_packed(
    model: Any,
    inputs: dict[str, Any],
    lengths: Sequence[int],
    params: dict[str, Any],
    blocks: dict[tuple[int, int], int] | None = None,
):
    """The last hidden states of a packed row. ``params``: weights to run with instead of the model's own
    (low-precision copies; empty for none); ``blocks``: see :class:`SegmentedAttention`. A lone text that
    fits every block needs no mode: skipping it saves its per-operation dispatch (~5 ms a forward on
    e5-small) and gives the same vector."""

    from clir.model.precision import forward_with

    if len(lengths) == 1 and all(lengths[0] <= n for n in (blocks or {}).values()):
        return forward_with(model, params, inputs).last_hidden_state
    with SegmentedAttention(lengths, blocks):
        return forward_with(model, params, inputs).last_hidden_state


def pool_packed(hidden, lengths: Sequence[int], pooling: str):
    """One vector per text of a packed row (fp32): its first token (``cls``) or the mean of its tokens."""
    rows = hidden[0]
    out = []
    start = 0
    for n in lengths:
        out.append(rows[start] if pooling == "cls" else rows[start : start + n].sum(0) / n)
        start += n
    return torch.stack(out).float()


def packs_like_padding(model: Any, ids: Sequence[Sequence[int]], pad_id: int, device: Any) -> bool:
    """Whether ``model`` gives the same token states packed as in a padded batch (fp32, two texts of
    different lengths ``ids``): False for attention that cannot be split per text or ignores positions.
    Runs in eval mode (a model in training mode would compare two dropout draws)."""
    training = bool(getattr(model, "training", False))
    if training:
        model.eval()
    try:
        return _packs_like_padding(model, ids, pad_id, device)
    finally:
        if training:
            model.train()


def _packs_like_padding(model: Any, ids: Sequence[Sequence[int]], pad_id: int, device: Any) -> bool:
    with (
        torch.inference_mode(),
        torch.autocast(device.type if hasattr(device, "type") else "cpu", enabled=False),
    ):
        try:
            inputs, lengths = pack(model, ids, device)
            packed = hidden_packed(model, inputs, lengths, {})
        except (NotPackable, RuntimeError, TypeError, ValueError):
            return False
        width = max(lengths)
        padded_ids = torch.full((len(ids), width), pad_id, dtype=torch.long, device=device)
        mask = torch.zeros_like(padded_ids)
        for row, t in enumerate(ids):
            padded_ids[row, : len(t)] = torch.tensor(list(t), dtype=torch.long)
            mask[row, : len(t)] = 1
        padded = model(input_ids=padded_ids, attention_mask=mask).last_hidden_state
        start = 0
        for row, n in enumerate(lengths):
            if not torch.allclose(
                packed[0, start : start + n], padded[row, :n], atol=PROBE_TOLERANCE, rtol=0
            ):
                return False
            start += n
    return True


def probe_ids(tokenizer: Any, prefix: str) -> list[list[int]]:
    """Token ids of the probe's two texts, as the encoder would tokenize them."""
    return [list(tokenizer(prefix + t)["input_ids"]) for t in _PROBE_TEXTS]
