"""Join shard folders (``clir index --shard I/N``) into one index identical to a single-process build."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clir.errors import ClirError
from clir.index import store
from clir.index.presets import write_faiss

log = logging.getLogger(__name__)


def merge_indexes(
    shards: list[str | Path], out: str | Path, *, factory: str | None = None, overwrite: bool = False
) -> Path:
    """Merge shard index folders into ``out``: documents back in collection order, one FAISS index built
    from the shards' vectors (with ``factory``, else the shards' preset re-planned for the merged size, else
    their factory)."""
    from clir.atomic import swap_into_place

    out = Path(out)
    if out.exists() and not overwrite:
        raise ClirError(f"{out} already exists: pass --overwrite to replace it")
    if not shards:
        raise ClirError("nothing to merge: give the shard folders")
    manifests = _read_shards(shards)
    first = manifests[0]
    rows = _Rows.read(shards)
    vecs = rows.vecs[rows.order]
    preset = None if factory else first.get("preset")
    factory = factory or first["factory"]

    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    faiss_fields = write_faiss(
        partial,
        vecs.shape[1],
        len(vecs),
        lambda: [vecs],
        lambda n: vecs[np.sort(np.random.default_rng(0).choice(len(vecs), n, replace=False))],
        factory=factory,
        preset=preset,
    )
    n_docs = _write_docs(partial, shards, rows)
    manifest = {**_merged_manifest(manifests), **faiss_fields}
    manifest.update(
        num_docs=n_docs,
        num_passages=len(vecs),
        merged_from=[str(s) for s in shards],
        versions=store.library_versions(),
        created=store.now_iso(),
    )
    store.write_manifest(partial, manifest)
    swap_into_place(partial, out)
    return out


def _read_shards(shards: list[str | Path]) -> list[dict[str, Any]]:
    """The shards' manifests, once they are known to be the complete shards of one build."""
    manifests = []
    for s in shards:
        m = store.read_manifest(s)
        if not (Path(s) / store.VECTORS_FILE).is_file() or not (Path(s) / store.POSITIONS_FILE).is_file():
            raise ClirError(
                f"{s} has no {store.VECTORS_FILE}: only folders built with --shard I/N can be merged"
            )
        manifests.append(m)
    first = manifests[0]
    for s, m in zip(shards, manifests, strict=True):
        if m["encoder"] != first["encoder"]:
            raise ClirError(f"{s} was encoded with a different encoder than {shards[0]}: cannot merge")
        if m["collection"] != first["collection"]:
            raise ClirError(f"{s} indexes {m['collection']}, {shards[0]} indexes {first['collection']}")
    counts = {m["shard"]["count"] for m in manifests if m.get("shard")}
    got = sorted(m["shard"]["index"] for m in manifests if m.get("shard"))
    if len(counts) != 1:
        raise ClirError("cannot merge: the folders come from different --shard N splits")
    n = counts.pop()
    if got != list(range(n)):
        missing = sorted(set(range(n)) - set(got))
        dup = sorted({i for i in got if got.count(i) > 1})
        what = f"missing shard(s) {missing}" if missing else f"shard(s) {dup} given twice"
        raise ClirError(f"cannot merge: {what} of {n}")
    return manifests


@dataclass
class _Rows:
    """Every shard's index rows, concatenated in shard order, and the order that merges them."""

    vecs: np.ndarray
    row_ids: list[list[str]]  # per shard
    src: np.ndarray  # each row's shard
    #: each row's (document in its shard's store, passage number, char span); whole documents: (row, 0, -, -)
    spans: np.ndarray
    order: np.ndarray  # collection order, passages in order within a document

    @classmethod
    def read(cls, shards: list[str | Path]) -> _Rows:
        vecs = np.concatenate(
            [store.load_npy(Path(s) / store.VECTORS_FILE, what="vectors", kinds="f") for s in shards]
        )
        pos = np.concatenate(
            [store.load_npy(Path(s) / store.POSITIONS_FILE, what="positions") for s in shards]
        )
        row_ids = [store.read_docids(Path(s)) for s in shards]
        spans = np.concatenate([_spans(Path(s), ids) for s, ids in zip(shards, row_ids, strict=True)])
        src = np.concatenate([np.full(len(ids), i, dtype=np.int64) for i, ids in enumerate(row_ids)])
        order = np.lexsort((spans[:, 1], pos))
        if len(np.unique(np.stack([pos, spans[:, 1]], axis=1), axis=0)) != len(pos):
            raise ClirError("cannot merge: shards overlap (a document appears in two shards)")
        return cls(vecs, row_ids, src, spans, order)


def _write_docs(partial: Path, shards: list[str | Path], rows: _Rows) -> int:
    """The doc store, docid file and passage map of the merged rows; returns the documents."""
    stores = [
        store.DocStore(Path(s), _doc_ids(Path(s), ids)) for s, ids in zip(shards, rows.row_ids, strict=True)
    ]
    writer = store.DocStoreWriter(partial)
    ids = []
    new_spans = []
    offset = np.cumsum([0, *(len(r) for r in rows.row_ids)])
    for i in rows.order.tolist():
        shard, (doc, n, start, end) = int(rows.src[i]), rows.spans[i].tolist()
        if n == 0:
            rec = stores[shard].get_row(doc)
            writer.add(rec)
            if end == 0:  # a whole document of a shard without passages
                end = len(rec["text"])
        ids.append(rows.row_ids[shard][i - offset[shard]])
        new_spans.append((writer.count - 1, n, start, end))
    writer.close()
    store.write_docids(partial / store.DOCID_FILE, ids)
    if any((Path(s) / store.PASSAGES_FILE).is_file() for s in shards):
        store.atomic_save_npy(partial / store.PASSAGES_FILE, np.asarray(new_spans, dtype=np.int64))
    return writer.count


def _merged_manifest(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    """The first shard's manifest with the shards' counts summed (languages, split documents, language
    identification, routing fallbacks, empty documents) and no shard of its own."""
    first = manifests[0]
    langs: dict[str, int] = {}
    for m in manifests:
        for k, v in (m.get("doc_langs") or {}).items():
            langs[k] = langs.get(k, 0) + v
    passages = dict(first.get("passages") or {})
    if passages:
        passages["split_docs"] = sum((m.get("passages") or {}).get("split_docs", 0) for m in manifests)
    lang_id = first.get("lang_id")
    if lang_id:
        lang_id = dict(lang_id)
        for key in ("detected", "undetermined"):
            lang_id[key] = sum((m.get("lang_id") or {}).get(key, 0) for m in manifests)
    fallback: dict[str, Any] | None = None
    if first.get("routing_fallback") is not None:
        fallback = {}
        for m in manifests:
            for k, v in (m.get("routing_fallback") or {}).items():
                fallback[k] = fallback.get(k, 0) + v
    return {
        **first,
        "passages": passages or None,
        "lang_id": lang_id,
        "routing_fallback": fallback,
        "skipped_empty": sum(m.get("skipped_empty", 0) for m in manifests),
        "doc_langs": langs,
        "shard": None,
    }


def _spans(folder: Path, row_ids: list[str]) -> np.ndarray:
    pm = store.PassageMap.load(folder, row_ids)
    if pm is not None:
        return np.stack([pm.doc, pm.n, pm.start, pm.end], axis=1)
    out = np.zeros((len(row_ids), 4), dtype=np.int64)
    out[:, 0] = np.arange(len(row_ids))
    return out


def _doc_ids(folder: Path, row_ids: list[str]) -> list[str]:
    pm = store.PassageMap.load(folder, row_ids)
    return pm.doc_ids if pm is not None else row_ids
