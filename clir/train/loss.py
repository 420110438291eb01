"""The DPR-style contrastive loss: each query against its positive, the other queries' positives and every
hard negative in the batch."""

from __future__ import annotations

from collections.abc import Sequence


def false_negative_mask(positives: Sequence[Sequence[str]], passages: Sequence[str], own: Sequence[int]):
    """``mask[i, j]`` is True where passage ``j`` is a known positive of query ``i`` but not its target.

    Triples files often repeat a query with the same positive (one line per hard negative); without the mask,
    copies of query i's own positive in the batch would be pushed away as negatives."""
    import torch

    mask = torch.zeros(len(positives), len(passages), dtype=torch.bool)
    index: dict[str, list[int]] = {}
    for j, text in enumerate(passages):
        index.setdefault(text, []).append(j)
    for i, pos in enumerate(positives):
        for text in set(pos):
            for j in index.get(text, ()):
                if j != own[i]:
                    mask[i, j] = True
    return mask


def contrastive_loss(q, p, targets, temperature: float, mask=None):
    """Cross-entropy of ``q @ p.T / temperature`` with ``targets[i]`` the index of query i's positive in p.

    ``mask`` (bool, same shape as the scores) removes candidates from the softmax."""
    import torch
    import torch.nn.functional as F

    scores = (q.float() @ p.float().T) / temperature
    if mask is not None:
        scores = scores.masked_fill(mask.to(scores.device), torch.finfo(scores.dtype).min)
    return F.cross_entropy(scores, targets.to(scores.device))
