"""Keyed dropout: each text's dropout masks are a function of (its key, the dropout call, the element's place
in the text), not of a random generator's state.

Why: with torch's generator, a text's masks depend on what else is in its batch and in which process it is
encoded, so N processes at batch b never equal one process at batch N x b, a packed batch never equals a
padded one, and GradCache's second forward needs the generator state saved and restored per chunk. With keyed
masks all of these give the same masks by construction, and a resumed run needs no generator state for them.

The bits come from a 32-bit integer hash (wrapping int32 arithmetic, the same on CPUs and GPUs; checked
against a pure-Python reference in the tests), vectorised over the tensor: on a 2-core CPU it costs less than
``torch.nn.functional.dropout``'s own generator. Attention-probability dropout (``dropout_p`` of
``scaled_dot_product_attention``) is computed explicitly (scores, softmax, keyed mask, product), since the
fused kernels draw their own bits.

:class:`KeyedDropout` is a TorchFunctionMode over one forward of a batch whose texts are laid out either
padded (text i is row i) or packed (texts end to end in one row, ``lengths`` each). The n-th dropout call
of the forward is call n for every text, so a text's masks are the same in any batch, chunk or process,
provided its key is. Packed attention runs in a few buckets of similar lengths (:func:`buckets`), not one
call per text, which on a GPU would be a kernel launch each."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_GOLDEN = 0x9E3779B97F4A7C15
_M64 = (1 << 64) - 1


def text_key(*parts: int | str) -> int:
    """A 64-bit key for a text from what identifies it in a run (seed, step, role, global index, ...)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _splitmix64(x: int) -> int:
    x = (x + _GOLDEN) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _int32(u: int) -> int:
    return u - (1 << 32) if u >= 1 << 31 else u


def call_params(key: int, call: int) -> tuple[int, int]:
    """(odd multiplier, offset) of a text's ``call``-th dropout, as signed int32: element ``i`` of the
    text's mask hashes ``i * multiplier + offset`` (a bijection per text, so no two elements of one mask
    share an input)."""
    mixed = _splitmix64(key ^ ((call * _GOLDEN) & _M64))
    return _int32((mixed & 0xFFFFFFFF) | 1), _int32(mixed >> 32)


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (shift-multiply rounds) of an int32 tensor, wrapping; shifts are logical."""
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * 0x21F0AAAD
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * 0x735A2D97
    return x ^ ((x >> 15) & 0x1FFFF)


def mix32_reference(u: int) -> int:
    """:func:`mix32` on one unsigned 32-bit value, in plain Python (the tests' reference)."""
    m = 0xFFFFFFFF
    u ^= u >> 16
    u = (u * 0x21F0AAAD) & m
    u ^= u >> 15
    u = (u * 0x735A2D97) & m
    return u ^ (u >> 15)


def keep_threshold(p: float) -> int:
    """Hashes (as signed int32, uniform over [-2^31, 2^31)) at or above this are kept: a fraction 1 - p."""
    return round(p * 2**32) - 2**31


def keep_mask(index: torch.Tensor, mult: torch.Tensor, offset: torch.Tensor, p: float) -> torch.Tensor:
    """Bool mask over ``index`` (int32 element numbers within each text), ``mult``/``offset`` broadcast per
    text: True where the element is kept."""
    return mix32(index * mult + offset) >= keep_threshold(p)


def buckets(lengths: Sequence[int]) -> list[tuple[int, int]]:
    """Consecutive texts of a packed row grouped for attention: (first text, end) spans whose lengths stay
    above half of the span's first (longest when the row is sorted longest first), so padding a bucket to
    its longest text at most quadruples its attention work, and a row takes a few calls, not one per text."""
    out: list[tuple[int, int]] = []
    for i, n in enumerate(lengths):
        if out and lengths[out[-1][0]] >= n > lengths[out[-1][0]] // 2:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out


class KeyedDropout(TorchFunctionMode):
    """Within the block, dropout in the texts' forward uses keyed masks (see the module docstring).

    ``keys``: one per text, in layout order; ``lengths``: each text's tokens; ``packed``: texts end to end in
    one row (attention then runs per text, in :func:`buckets` of similar lengths padded to their longest)
    rather than one padded row each. Training only: the packed vectors equal padded ones within float
    tolerance, not bit for bit (inference packs with :class:`clir.model.packing.SegmentedAttention`)."""

    def __init__(self, keys: Sequence[int], lengths: Sequence[int], *, packed: bool) -> None:
        super().__init__()
        if len(keys) != len(lengths):
            raise ValueError("one key per text")
        self.keys = list(keys)
        self.lengths = list(lengths)
        self.packed = packed
        self.total = sum(lengths)
        self.calls = 0
        self._cache: dict[tuple[Any, ...], Any] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.dropout:
            return self._dropout(*args, **kwargs)
        if func is F.scaled_dot_product_attention:
            return self._attend(*args, **kwargs)
        return func(*args, **kwargs)

    # ------------------------------------------------------------------ per-call parameters
    def _params(self, texts: range | Sequence[int], device) -> tuple[torch.Tensor, torch.Tensor]:
        """(multipliers, offsets) of this call for ``texts`` (int32 tensors, one value per text)."""
        pairs = [call_params(self.keys[t], self.calls) for t in texts]
        mult = torch.tensor([m for m, _ in pairs], dtype=torch.int32, device=device)
        offset = torch.tensor([o for _, o in pairs], dtype=torch.int32, device=device)
        return mult, offset

    def _tokens(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Per token of the packed row: its text's number and its position in the text."""
        key = ("tokens", device)
        if key not in self._cache:
            text = [i for i, n in enumerate(self.lengths) for _ in range(n)]
            pos = [j for n in self.lengths for j in range(n)]
            self._cache[key] = (
                torch.tensor(text, dtype=torch.long, device=device),
                torch.tensor(pos, dtype=torch.int32, device=device),
            )
        return self._cache[key]

    def _bucket_index(self, first: int, end: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(token index (texts, width) into the packed row, clamped within each text; validity mask) of the
        texts ``first:end`` padded to the longest."""
        key = ("bucket", first, end, device)
        if key not in self._cache:
            starts = [sum(self.lengths[:t]) for t in range(first, end)]
            width = max(self.lengths[first:end])
            idx = [
                [s + min(j, n - 1) for j in range(width)]
                for s, n in zip(starts, self.lengths[first:end], strict=True)
            ]
            valid = [[j < n for j in range(width)] for n in self.lengths[first:end]]
            self._cache[key] = (
                torch.tensor(idx, dtype=torch.long, device=device),
                torch.tensor(valid, dtype=torch.bool, device=device),
            )
        return self._cache[key]

    # ------------------------------------------------------------------ hidden-state dropout
    def _dropout(self, x, p=0.5, training=True, inplace=False):
        if not training or p == 0.0:
            return x
        if p >= 1.0:
            return x * 0.0
        width = x.shape[-1]
        mult, offset = self._params(range(len(self.keys)), x.device)
        self.calls += 1
        if self.packed:
            if x.dim() != 3 or x.shape[0] != 1 or x.shape[1] != self.total:
                raise ValueError(
                    f"keyed dropout: {tuple(x.shape)} is not the packed row of {self.total} tokens"
                )
            text, pos = self._tokens(x.device)
            index = pos[:, None] * width + torch.arange(width, dtype=torch.int32, device=x.device)
            keep = keep_mask(index, mult[text][:, None], offset[text][:, None], p).unsqueeze(0)
        else:
            if x.dim() != 3 or x.shape[0] != len(self.keys):
                raise ValueError(f"keyed dropout: {tuple(x.shape)} is not a padded batch of {len(self.keys)}")
            rows = torch.arange(x.shape[1], dtype=torch.int32, device=x.device)
            index = rows[:, None] * width + torch.arange(width, dtype=torch.int32, device=x.device)
            keep = keep_mask(index.unsqueeze(0), mult[:, None, None], offset[:, None, None], p)
        return x * keep.to(x.dtype) * (1.0 / (1.0 - p))

    # ------------------------------------------------------------------ attention
    def _attend(self, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
        if is_causal or kw:
            raise ValueError("keyed dropout: causal or grouped attention is not supported")
        if not self.packed:
            if dropout_p == 0.0:
                return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
            n = torch.tensor(self.lengths, dtype=torch.int32, device=q.device)
            out = self._attention(q, k, v, attn_mask, dropout_p, scale, range(len(self.keys)), n)
            self.calls += 1
            return out
        if attn_mask is not None:
            raise ValueError("keyed dropout: the packed row takes no attention mask")
        if not (q.shape[0] == k.shape[0] == 1 and q.shape[-2] == k.shape[-2] == self.total):
            raise ValueError(f"attention over {tuple(q.shape)} is not one packed row of {self.total} tokens")
        out = []
        for first, end in buckets(self.lengths):
            idx, valid = self._bucket_index(first, end, q.device)

            def per_text(x, idx=idx):
                return x[0][:, idx].transpose(0, 1)  # (texts, heads, width, dim)

            mask = valid[:, None, None, :]
            if dropout_p == 0.0:
                o = F.scaled_dot_product_attention(
                    per_text(q), per_text(k), per_text(v), attn_mask=mask, scale=scale
                )
            else:
                n = torch.tensor(self.lengths[first:end], dtype=torch.int32, device=q.device)
                o = self._attention(
                    per_text(q), per_text(k), per_text(v), mask, dropout_p, scale, range(first, end), n
                )
            out.append(o.transpose(1, 2)[valid])  # (tokens, heads, dim), in row order
        if dropout_p != 0.0:
            self.calls += 1
        return torch.cat(out).transpose(0, 1).unsqueeze(0)

    def _attention(self, q, k, v, attn_mask, p, scale, texts: range, n: torch.Tensor):
        """Softmax attention with keyed dropout on the probabilities of ``texts`` (batch rows of q/k/v),
        element (head h, query i, key j) numbered ``(h * n + i) * n + j`` with ``n`` the text's length, so a
        padded row numbers its real elements as the packed text does."""
        scores = (q @ k.transpose(-2, -1)) * (scale if scale is not None else 1.0 / math.sqrt(q.shape[-1]))
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                # the dtype's lowest, not -inf: a row with no key left gives zeros, not NaNs (padding)
                scores = scores.masked_fill(~attn_mask, torch.finfo(scores.dtype).min)
            else:
                scores = scores + attn_mask
        probs = torch.softmax(scores, dim=-1)
        heads, rows, cols = probs.shape[1:]
        dev = q.device
        nn_ = n[:, None, None, None]
        h = torch.arange(heads, dtype=torch.int32, device=dev)[None, :, None, None]
        i = torch.arange(rows, dtype=torch.int32, device=dev)[None, None, :, None]
        j = torch.arange(cols, dtype=torch.int32, device=dev)[None, None, None, :]
        mult, offset = self._params(texts, dev)
        keep = keep_mask((h * nn_ + i) * nn_ + j, mult[:, None, None, None], offset[:, None, None, None], p)
        probs = probs * keep.to(probs.dtype) * (1.0 / (1.0 - p))
        return probs.to(v.dtype) @ v
