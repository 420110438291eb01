"""Named index recipes (``clir index --preset``): a FAISS factory sized to the collection plus the search-time
settings that go with it, recorded in the manifest (``search``) so `clir search` and `clir serve` use them.

``large`` (collections of millions of passages): an IVF index with ~sqrt(N) lists over 4-bit fast-scan PQ
codes (dim/8 bytes a vector: 4 bits per 4 dimensions) gives a shortlist of ``k * k_factor`` candidates from
``nprobe = nlist / 4`` lists, which are re-ranked by exact inner product against the full vectors, kept in
fp16 in ``refine.npy`` and memory-mapped (the OS pages in only the rows a query touches). Measured in
eval/bench/RESULTS.md ("Scale: the large preset") and docs/large-indexes.md: PQ alone tops out near
recall@10 0.4 of exact search; a k x 40 shortlist re-ranked takes it to 0.98-1.0 on synthetic vectors, and
nprobe nlist/4 covers real e5 queries, which sit away from the passage clusters (`clir search --nprobe`
trades speed for more). Codes of residuals to the list centroids (``x4fsr``) were 0.015 better on real
vectors and 0.02-0.04 worse on synthetic ones, at 10M too: plain codes it is."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from clir.errors import ClirError
from clir.index.store import REFINE_NAME

REFINE_FILE = REFINE_NAME
#: shortlist per result re-ranked exactly (k x 40 candidates)
K_FACTOR = 40
PRESETS = ("large",)


def plan(preset: str, n: int, dim: int) -> tuple[str, dict[str, Any]]:
    """(FAISS factory, search settings for the manifest) of ``preset`` for ``n`` vectors of ``dim``."""
    if preset != "large":
        raise ClirError(f"unknown index preset {preset!r} (known: {', '.join(PRESETS)})")
    if dim % 4:
        raise ClirError(f"preset large needs a vector dimension divisible by 4, got {dim}")
    if n < 16:  # 4-bit PQ trains 16 centroids per part: below that, exact search is the whole recipe
        return "Flat", {}
    # ~sqrt(N) lists (a power of two), at least 39 training vectors each (FAISS's k-means guideline)
    nlist = 2 ** round(math.log2(max(1.0, math.sqrt(n))))
    while nlist > 1 and nlist * 39 > n:
        nlist //= 2
    factory = f"IVF{nlist},PQ{dim // 4}x4fs"
    search = {"nprobe": max(1, min(nlist, max(32, nlist // 4))), "refine": REFINE_FILE, "k_factor": K_FACTOR}
    return factory, search


def write_refine(folder: Path, chunks: Iterable[np.ndarray], n: int, dim: int) -> Path:
    """Stream the full vectors into ``folder/refine.npy`` (fp16), chunk by chunk."""
    path = folder / REFINE_FILE
    tmp = path.with_name(path.name + ".tmp.npy")
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)),
        "fortran_order": False,
        "shape": (n, dim),
    }
    row = 0
    # written, not memory-mapped: a full disk is an OSError here, where writes through a map die of SIGBUS
    with open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for vecs in chunks:
            f.write(np.ascontiguousarray(vecs, dtype=np.float16).data)
            row += len(vecs)
    if row != n:
        tmp.unlink()
        raise ClirError(f"refine vectors: expected {n} rows, got {row}")
    tmp.replace(path)
    return path


class RefinedIndex:
    """A compressed FAISS index whose shortlist (``k * k_factor`` per query) is re-ranked by exact inner
    product against full vectors memory-mapped from disk. Searches like a FAISS index (``search``,
    ``ntotal``); ``base`` is the FAISS index (for nprobe and the like)."""

    def __init__(self, base, vectors: np.ndarray, k_factor: int = 10) -> None:
        if len(vectors) != base.ntotal:
            raise ClirError(f"refine vectors have {len(vectors)} rows but the index {base.ntotal} vectors")
        self.base = base
        self.vectors = vectors
        self.k_factor = k_factor

    @classmethod
    def open(cls, base, folder: Path, search: dict[str, Any]) -> RefinedIndex:
        path = folder / search["refine"]
        if not path.is_file():
            raise ClirError(f"{folder}: missing {search['refine']} (the index folder is incomplete)")
        try:
            vectors = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise ClirError(f"{path}: unreadable refine vectors ({e})") from None
        if vectors.dtype.kind != "f" or vectors.ndim != 2 or vectors.shape[1] != base.d:
            raise ClirError(
                f"{path}: expected {base.d}-dimensional float vectors, got {vectors.dtype} {vectors.shape}"
            )
        return cls(base, vectors, int(search.get("k_factor", 10)))

    @property
    def ntotal(self) -> int:
        return int(self.base.ntotal)

    @property
    def d(self) -> int:
        return int(self.base.d)

    def search(self, x: np.ndarray, k: int, step: int = 256) -> tuple[np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        shortlist = min(self.ntotal, k * self.k_factor)
        _, cand = self.base.search(x, shortlist)
        scores = np.full((len(x), k), -np.inf, dtype=np.float32)
        rows = np.full((len(x), k), -1, dtype=np.int64)
        for s in range(0, len(x), step):  # bounded temporaries for large query batches
            scores[s : s + step], rows[s : s + step] = self._rerank(x[s : s + step], cand[s : s + step], k)
        return scores, rows

    def _rerank(self, x: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        valid = cand >= 0
        # one gather in row order: the page cache reads the memory-mapped file forwards
        uniq, inv = np.unique(np.where(valid, cand, 0), return_inverse=True)
        vecs = np.asarray(self.vectors[uniq], dtype=np.float32)[inv.reshape(cand.shape)]
        s = np.matmul(vecs, x[:, :, None])[:, :, 0]
        s[~valid] = -np.inf
        kk = min(k, s.shape[1])
        top = np.argsort(-s, axis=1, kind="stable")[:, :kk]
        out_s = np.take_along_axis(s, top, 1)
        out_r = np.where(np.isfinite(out_s), np.take_along_axis(cand, top, 1), -1)
        if kk < k:  # fewer candidates than k: pad like FAISS does
            out_s = np.pad(out_s, ((0, 0), (0, k - kk)), constant_values=-np.inf)
            out_r = np.pad(out_r, ((0, 0), (0, k - kk)), constant_values=-1)
        return out_s, out_r


def open_index(folder: Path, manifest: dict[str, Any]):
    """The FAISS index of an index folder, opened for search: wrapped in :class:`RefinedIndex` when its
    manifest says so, with Flat searches of several queries routed through BLAS."""
    import faiss

    from clir.index import store
    from clir.index.faiss_index import faiss_message, use_blas_for_flat

    path = folder / store.INDEX_FILE
    try:
        index = faiss.read_index(str(path))
    except (RuntimeError, MemoryError) as e:  # FAISS reports a truncated or foreign file as a RuntimeError
        raise ClirError(
            f"{path}: not a readable FAISS index ({faiss_message(e)}): the index folder is damaged"
        ) from None
    dim = manifest.get("dim", index.d)  # read_manifest requires it; write_faiss's fields have none
    if index.d != dim or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise ClirError(
            f"{path}: a {index.d}-dimensional index (metric {index.metric_type}), but the manifest says "
            f"{dim} dimensions, inner product: the index folder is damaged"
        )
    use_blas_for_flat(index.d)
    search = manifest.get("search") or {}
    if search.get("refine"):
        return RefinedIndex.open(index, folder, search)
    return index


def write_faiss(
    folder: Path,
    dim: int,
    n: int,
    chunks,
    sample,
    *,
    factory: str = "Flat",
    preset: str | None = None,
    max_train: int = 262_144,
) -> dict[str, Any]:
    """Build the FAISS index (``factory``, or the one ``preset`` plans for ``n`` vectors) from ``chunks()``
    (a callable giving the vectors in order) and write it, plus the refine vectors a preset asks for, into
    ``folder``. Returns the manifest fields: factory, preset, search."""
    import faiss

    from clir.index import store
    from clir.index.faiss_index import build_faiss_index

    search = None
    if preset:
        factory, search = plan(preset, n, dim)
    index = build_faiss_index(dim, factory, n, chunks, train_sample=sample, max_train=max_train)
    with store.replacing(folder / store.INDEX_FILE) as tmp, open(tmp, "wb") as f:
        # through Python's file: FAISS's own writer reports a write that fails when its file is closed (a
        # full disk) on stderr only, and the build went on with a truncated index
        faiss.write_index(index, faiss.PyCallbackIOWriter(f.write))  # type: ignore[attr-defined]
    del index
    if search and search.get("refine"):
        write_refine(folder, chunks(), n, dim)
    return {"factory": factory, "preset": preset, "search": search}
