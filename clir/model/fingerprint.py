"""An encoder's identity: what makes two encoders produce the same document vectors. Index manifests store
it, and a search or server refuses an encoder whose fingerprint differs from the index's."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from clir.model.adapters import task_adapter_names
from clir.model.protocol import Encoder


def hash_tensors(named: Sequence[tuple[str, Any]]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(named, key=lambda x: x[0]):
        h.update(name.encode())
        # hash the array's buffer directly: .tobytes() would first copy it (~0.5 GB, ~1 s for e5-small)
        h.update(t.detach().to("cpu").contiguous().float().numpy().data)
    return h.hexdigest()


def fingerprint(encoder: Encoder) -> dict[str, Any]:
    """Settings and weight hashes of ``encoder`` (a DualEncoder): the backbone's, and each loaded adapter's."""
    cfg = encoder.config
    base = [
        (n, p)
        for m in encoder.models()
        for n, p in m.named_parameters()
        if "adapters." not in n and "invertible_adapters" not in n
    ]
    adapters_hash: dict[str, str] = {}
    for name in [*task_adapter_names(cfg), *encoder.loaded_languages()]:  # none in full mode
        params = [
            (n, p)
            for n, p in encoder.query_model.named_parameters()
            if f".{name}." in n or n.endswith(f".{name}")
        ]
        adapters_hash[name] = hash_tensors(params)
    madx = encoder.routes_languages
    return {
        "backbone": cfg.backbone,
        "backbone_weights": hash_tensors(base),
        "dim": encoder.dim,
        "pooling": cfg.pooling,
        "normalize": cfg.normalize,
        "query_prefix": cfg.query_prefix,
        "passage_prefix": cfg.passage_prefix,
        "max_query_length": cfg.max_query_length,
        "max_passage_length": cfg.max_passage_length,
        "tied": cfg.tied,
        "adapter_mode": cfg.adapter_mode,
        "adapters": adapters_hash,
        "source_lang": cfg.source_lang if madx else None,
        "routing": _routing(cfg.routing) if madx else None,
    }


def with_routing(fp: dict[str, Any], routing: Any) -> dict[str, Any]:
    """``fp`` with the routing its documents were encoded under (models without language adapters record
    none)."""
    if fp.get("routing") is None:
        return dict(fp)
    return {**fp, "routing": _routing(routing)}


def _routing(routing: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"query": routing.query, "doc": routing.doc}
    if routing.doc_map:  # only when set: fingerprints recorded before maps existed stay equal
        out["doc_map"] = dict(sorted(routing.doc_map.items()))
    return out


#: fields that may differ from the index's encoder: they never touch the stored vectors (the document routing
#: shows in the adapters its documents went through)
QUERY_SIDE = {"query_prefix", "max_query_length", "routing"}


def fingerprint_diff(index_fp: dict[str, Any], model_fp: dict[str, Any]) -> list[str]:
    """Fields on which the encoder would produce different document vectors than the index's."""
    out = []
    for key in sorted(set(index_fp) | set(model_fp)):
        if key in QUERY_SIDE:
            continue
        a, b = index_fp.get(key), model_fp.get(key)
        if key == "adapters" and a is not None and b is not None:
            for name in sorted(set(a) | set(b)):
                if a.get(name) != b.get(name):
                    out.append(f"adapters.{name}")
        elif a != b:
            out.append(key)
    return out
