"""FAISS index construction from a factory string (inner product), on the GPU when faiss sees one."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable

import numpy as np

from clir.errors import ClirError

log = logging.getLogger(__name__)


def faiss_gpus() -> int:
    import faiss

    try:
        return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    except Exception:  # faiss-gpu without a driver
        return 0


def nlist_of(factory: str) -> int | None:
    """The number of inverted lists an IVF factory string names (None: not an IVF index)."""
    m = re.search(r"IVF(\d+)", factory)
    return int(m.group(1)) if m else None


def new_index(dim: int, factory: str):
    import faiss

    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ClirError(
            f"invalid FAISS factory {factory!r} for dimension {dim}: {_faiss_message(e)}"
        ) from None


def _faiss_message(e: BaseException) -> str:
    """FAISS's own words without its C++ location ("Error in <signature> at <file>:<line>: ")."""
    msg = str(e).strip().splitlines()[-1]
    msg = re.sub(r"^Error in .*? at \S+:\d+: ", "", msg)
    return re.sub(r"^Error: '.*?' failed: ", "", msg)


def min_train_points(index) -> int:
    """Vectors an untrained index needs to train: FAISS's k-means wants at least one per centroid (IVF
    lists; 2^bits codewords per PQ sub-quantizer)."""
    import faiss

    need = 0
    parts = [faiss.downcast_index(index)]
    try:
        ivf = faiss.extract_index_ivf(index)
        parts.append(faiss.downcast_index(ivf))
        need = max(need, int(ivf.nlist))
    except RuntimeError:  # not an IVF index
        pass
    for part in parts:
        pq = getattr(part, "pq", None)
        if pq is not None:
            need = max(need, int(pq.ksub))
    return need


def check_factory(dim: int, factory: str, n_docs: int | None) -> None:
    """Everything about ``factory`` that can fail, checked before any document is encoded: the string, the
    dimension, and (when the collection size is known) whether there are enough vectors to train it."""
    index = new_index(dim, factory)
    if index.is_trained or n_docs is None:
        return
    need = min_train_points(index)
    if n_docs < need:
        raise ClirError(
            f"factory {factory!r} needs at least {need} vectors to train; the collection has {n_docs}: use "
            f"Flat, HNSW32 or a smaller IVF/PQ (e.g. IVF{max(1, n_docs // 39)},Flat)"
        )


def build_faiss_index(
    dim: int,
    factory: str,
    n_total: int,
    chunks: Callable[[], Iterable[np.ndarray]],
    *,
    train_sample: Callable[[int], np.ndarray],
    max_train: int = 262_144,
    use_gpu: bool | None = None,
):
    """Build an index from vector chunks. Training factories (IVF, PQ) train on a uniform random sample of
    at most ``max_train`` vectors (at least 39 per IVF list where the collection allows, FAISS's own
    guideline) before the chunks are added in order."""
    import faiss

    index = new_index(dim, factory)
    _skip_polysemous_training(index)
    if not index.is_trained:
        check_factory(dim, factory, n_total)
        nlist = nlist_of(factory)
        n_train = min(n_total, max(max_train, 39 * (nlist or 0)))
        sample = np.ascontiguousarray(train_sample(n_train), dtype=np.float32)
        log.info("training %s on %d vectors", factory, len(sample))
        try:
            index.train(sample)
        except RuntimeError as e:
            raise ClirError(f"training FAISS index {factory!r} failed: {_faiss_message(e)}") from None
    gpu_index = None
    if use_gpu is None:
        use_gpu = faiss_gpus() > 0 and not factory.startswith("HNSW")
    if use_gpu:
        try:
            gpu_index = faiss.index_cpu_to_all_gpus(index)
            log.info("adding vectors on %d GPU(s)", faiss_gpus())
        except Exception as e:  # an index type without GPU support: add on the CPU
            log.info("GPU add unavailable for %s (%s); using the CPU", factory, e)
    target = gpu_index or index
    for vecs in chunks():
        if len(vecs):
            target.add(np.ascontiguousarray(vecs, dtype=np.float32))
    if gpu_index is not None:
        index = faiss.index_gpu_to_cpu(gpu_index)
    return index


def _skip_polysemous_training(index) -> None:
    """FAISS's factory turns on polysemous training for PQ codes. It only serves Hamming-filtered search
    (``polysemous_ht``, never set by clir), leaves search results identical, and costs minutes per build on
    a small CPU (10x the rest of an IVF-PQ build here; eval/bench/RESULTS.md, FAISS scaling)."""
    import faiss

    parts = [faiss.downcast_index(index)]
    try:
        parts.append(faiss.downcast_index(faiss.extract_index_ivf(index)))
    except RuntimeError:  # not an IVF index
        pass
    for part in parts:
        if hasattr(part, "do_polysemous_training"):
            part.do_polysemous_training = False


#: IVF lists visited when the caller names none. FAISS's own default (1) loses most neighbours that sit
#: near a list boundary; 32 is a common operating point (Pyserini's and FAISS's examples use 8-128).
DEFAULT_NPROBE = 32


#: Queries per call from which exhaustive (Flat) search goes through BLAS. FAISS 1.15 ships 128,000, which
#: keeps every realistic batch on its per-query SIMD loop: on 100k x 384 vectors (2-core CPU) BLAS was 2.9x
#: faster at 32 queries and 5x at 256, with the same neighbours (eval/bench/RESULTS.md, "REST serving").
#: 20 was FAISS's own default before; below it the per-query loop wins.
FLAT_BLAS_THRESHOLD = 20


def use_blas_for_flat(threshold: int = FLAT_BLAS_THRESHOLD) -> None:
    """Route exhaustive searches of ``threshold`` or more queries through BLAS (a process-wide FAISS
    setting; called when an index is opened for search, not at import)."""
    import faiss

    faiss.cvar.distance_compute_blas_threshold = threshold


def set_search_params(index, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
    import faiss

    index = getattr(index, "base", index)  # a presets.RefinedIndex: the parameters are its FAISS index's

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:  # not an IVF index
        ivf = None
    if ivf is not None:
        ivf.nprobe = min(ivf.nlist, DEFAULT_NPROBE) if nprobe is None else nprobe
    elif nprobe is not None:
        raise ClirError("--nprobe applies to IVF indexes only")
    if ef_search is not None:
        hnsw = getattr(index, "hnsw", None)
        if hnsw is None:
            raise ClirError("--ef-search applies to HNSW indexes only")
        hnsw.efSearch = ef_search
