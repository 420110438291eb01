"""Per-layer CKA of a madx model's document routings, for the analysis: the same sampled documents encoded
through the source language's adapter and through each other document routing of the model's rows (the
target language's adapter, a wrong language's, an untrained one, none), each layer's token states mean-pooled,
and linear CKA between the source routing's and the other's, layer by layer (:func:`layer_cka`). Written by
the runner to ``runs/<collection>__<model>.cka.json``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from clir.config import Routing
from clir.model.protocol import Encoder


def layer_means(
    enc: Encoder, texts: Sequence[str], lang: str | None, routing: Routing, *, batch_size: int = 16
) -> list[np.ndarray]:
    """Each layer's mean-pooled token states (embeddings first, then every transformer layer) of ``texts``
    encoded as documents in ``lang`` under ``routing``: one n x hidden array per layer.
    Plain fp32 and padded batches: slower than :meth:`DualEncoder.encode`, and the same for every routing."""
    import torch

    out: list[list[np.ndarray]] = []
    with enc.exclusive(), torch.inference_mode():
        model = enc.activate("passage", lang, routing)
        for start in range(0, len(texts), batch_size):
            feats = enc.tokenize(list(texts[start : start + batch_size]), "passage")
            feats = {k: v.to(enc.device) for k, v in feats.items()}
            states = model(**feats, output_hidden_states=True).hidden_states
            mask = feats["attention_mask"].unsqueeze(-1).float()
            pooled = [((h.float() * mask).sum(1) / mask.sum(1).clamp(min=1e-9)).cpu().numpy() for h in states]
            if not out:
                out = [[] for _ in pooled]
            for layer, p in zip(out, pooled, strict=True):
                layer.append(p)
    return [np.concatenate(x) for x in out]


def routing_states(enc: Encoder, docs: list[tuple[str, str | None]], routing: Routing) -> list[np.ndarray]:
    """Per-layer states of ``docs`` (text, language) under ``routing``'s document side, in their order; under
    ``target`` routing each language group through its adapter (the index build's fallback rule included)."""
    groups: dict[str | None, list[int]] = {}
    for i, (_text, lang) in enumerate(docs):
        groups.setdefault(enc.doc_lang(lang, routing), []).append(i)
    layers: list[np.ndarray] | None = None
    for lang, rows in groups.items():
        states = layer_means(enc, [docs[i][0] for i in rows], lang, routing)
        if layers is None:
            layers = [np.zeros((len(docs), s.shape[1]), dtype=np.float32) for s in states]
        for dst, s in zip(layers, states, strict=True):
            dst[rows] = s
    return layers or []


def layer_cka(
    enc: Encoder,
    docs: list[tuple[str, str | None]],
    routings: list[Routing],
    prepare: Callable[[Routing], None] = lambda r: None,
) -> dict[str, Any]:
    """Linear CKA per layer between the source routing's states and each routing's, on ``docs``;
    ``prepare(routing)`` loads (seeded) what a routing needs before its states are taken."""
    from clir.experiments.ranking import linear_cka

    query = routings[0].query if routings else "source"
    ref = Routing(query, "source")
    prepare(ref)
    base = routing_states(enc, docs, ref)
    out: dict[str, Any] = {
        "docs": len(docs),
        "layers": len(base),
        "reference": ref.doc_label(),
        "routings": {},
    }
    for r in routings:
        label = r.doc_label()
        if label in out["routings"]:
            continue
        if label == ref.doc_label():
            out["routings"][label] = [1.0] * len(base)
            continue
        prepare(r)
        states = routing_states(enc, docs, r)
        out["routings"][label] = [round(linear_cka(a, b), 5) for a, b in zip(base, states, strict=True)]
    return out
