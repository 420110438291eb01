"""FAISS index construction from a factory string (inner product), on the GPU when faiss sees one."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterable, Iterator

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
            f"invalid FAISS factory {factory!r} for dimension {dim}: {faiss_message(e)}"
        ) from None


def faiss_message(e: BaseException) -> str:
    """FAISS's own words without its C++ location ("Error in <signature> at <file>:<line>: ")."""
    msg = str(e).strip().splitlines()[-1]
    msg = re.sub(r"^Error in .*? at \S+:\d+: ", "", msg)
    msg = re.sub(r"^Error: '.*?' failed: ", "", msg)
    return msg.removesuffix(" (Success)")  # a short read: errno was never set


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
            raise ClirError(f"training FAISS index {factory!r} failed: {faiss_message(e)}") from None
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


#: Flat searches of fewer queries than this scan the vectors once per query (FAISS's SIMD loop); larger ones
#: go through BLAS, whose GEMM costs a near-fixed ~35 ms on 100k x 384 vectors (one thread) from 1 to 8
#: queries against the loop's 10 / 18 / 28 / 35-39 ms at 1-4 (eval/bench/RESULTS.md, "Flat search of small
#: batches"). FAISS compares queries x dimension with its threshold (1.15 ships 128,000: the loop up to 333
#: queries at 384-d, 8x slower than BLAS at 330), so the setting is this times the index's dimension.
FLAT_SEQ_QUERIES = 4

#: Up to this many OpenMP threads, a search of fewer queries than threads runs on one thread. FAISS then
#: splits an exhaustive scan over the database in BLAS blocks, each paying the GEMM's fixed cost: one query
#: over 100k x 384 took 17 ms on 2 threads against 10 ms for one thread's loop (same section). With more
#: threads the split's cost divides further, so it is left to FAISS there.
FEW_THREADS = 4


def use_blas_for_flat(dim: int) -> None:
    """Route exhaustive searches of :data:`FLAT_SEQ_QUERIES` or more ``dim``-dimensional queries through
    BLAS. FAISS keeps this threshold process-wide: called when an index is opened for search (not at
    import), the last one opened sets it, which moves speed only."""
    import faiss

    faiss.cvar.distance_compute_blas_threshold = FLAT_SEQ_QUERIES * dim


@contextlib.contextmanager
def search_threads(n_queries: int) -> Iterator[None]:
    """One FAISS thread for a search of fewer queries than the calling thread's few OpenMP threads
    (:data:`FEW_THREADS`), put back afterwards. OpenMP keeps the count per thread, so concurrent searches
    (the server's lanes) do not see each other's."""
    import faiss

    threads = faiss.omp_get_max_threads()
    if not n_queries < threads <= FEW_THREADS:
        yield
        return
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


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
