"""Query execution for the REST server: one encoder call per language and one FAISS call per index for a
group of queries, and a micro-batcher that groups concurrent requests.

The encoder is model state (adapter routing): everything that touches it here, tokenizer included, runs
under ``DualEncoder.exclusive()``.

The work runs on asyncio's default executor (``asyncio.to_thread``), a measured choice: on the shared 2-core
test machine, with OpenMP's default spinning, the same encode+search call ran 5-50x slower on Starlette's
anyio worker pool (one client) and on a dedicated one-thread executor (8 clients) than on the default
executor (eval/bench/RESULTS.md, "REST serving")."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from clir.errors import ClirError

log = logging.getLogger(__name__)


@dataclass
class Job:
    searcher: Any  # clir.search.Searcher
    query: str
    k: int
    lang: str


@dataclass
class Result:
    scores: np.ndarray  # (k,)
    rows: np.ndarray  # (k,) rows of the index, -1 where FAISS found fewer
    tokens: int  # query tokens the encoder kept
    truncated: bool  # the query was longer than the encoder's limit


class Overloaded(ClirError):
    status = 503


def encode_grouped(
    encoder: Any, queries: list[str], langs: list[str], *, batch_size: int = 64
) -> tuple[list[np.ndarray | BaseException], list[tuple[int, bool] | None]]:
    """Query vectors, one encoder call per language, plus each query's (tokens kept, truncated?). A failure
    is returned in the slots of the queries it concerns.

    The encoder batches by padded width (:func:`clir.model.encoder.padded_width`), so each vector is the
    one the query gets alone (`clir search --query`), bit for bit, whatever else shares the micro-batch."""
    vectors: list[np.ndarray | BaseException | None] = [None] * len(queries)
    counts: list[tuple[int, bool] | None] = [None] * len(queries)
    with encoder.exclusive():
        by_lang: dict[str, list[int]] = defaultdict(list)
        for i, (query, lang) in enumerate(zip(queries, langs, strict=True)):
            try:
                counts[i] = encoder.count_tokens(query, "query")
            except Exception as e:  # noqa: BLE001 -- handed to the request it concerns
                vectors[i] = e
                continue
            by_lang[lang].append(i)
        for lang, idxs in by_lang.items():
            try:
                vecs = encoder.encode_queries(
                    [queries[i] for i in idxs],
                    lang=lang,
                    batch_size=batch_size,
                    show_progress=False,
                )
            except Exception as e:  # noqa: BLE001
                for i in idxs:
                    vectors[i] = e
                continue
            for row, i in enumerate(idxs):
                vectors[i] = vecs[row]
    return vectors, counts  # type: ignore[return-value]


def run_jobs(encoder: Any, jobs: list[Job], *, batch_size: int = 64) -> list[Result | BaseException]:
    """Encode (:func:`encode_grouped`) and search ``jobs``, all on ``encoder``: one FAISS call per index
    with the largest k asked. A failure is returned in the slots of the jobs it concerns."""
    vectors, counts = encode_grouped(
        encoder, [j.query for j in jobs], [j.lang for j in jobs], batch_size=batch_size
    )
    out: list[Any] = list(vectors)  # failures stay; vectors are replaced below
    by_index: dict[int, list[int]] = defaultdict(list)
    for i, v in enumerate(vectors):
        if not isinstance(v, BaseException):
            by_index[id(jobs[i].searcher)].append(i)
    for idxs in by_index.values():
        searcher = jobs[idxs[0]].searcher
        try:
            k = max(jobs[i].k for i in idxs)
            scores, rows = searcher.search_vectors(np.stack([vectors[i] for i in idxs]), k)  # type: ignore[misc]
        except Exception as e:  # noqa: BLE001
            for i in idxs:
                out[i] = e
            continue
        for row, i in enumerate(idxs):
            k_i = jobs[i].k
            out[i] = Result(scores[row, :k_i], rows[row, :k_i], *counts[i])  # type: ignore[misc]
    return out


class MicroBatcher:
    """Groups concurrent queries for one encoder into one :func:`run_jobs` call in a worker thread.

    While a batch runs, new requests queue; the next batch takes all of them (up to ``max_batch``), so
    batches grow with load by themselves. ``window_ms`` > 0 also lets a lone request wait that long for
    company. Queued requests beyond ``max_pending`` are refused (503) instead of queueing without bound."""

    def __init__(
        self,
        encoder: Any,
        *,
        max_batch: int = 64,
        window_ms: float = 0.0,
        max_pending: int = 1024,
    ):
        self.encoder = encoder
        self.max_batch = max_batch
        self.window = window_ms / 1000.0
        self.max_pending = max_pending
        self.pending = 0
        self.batches = 0
        self.batched_queries = 0
        self._queue: asyncio.Queue[tuple[Job, asyncio.Future]] | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._loop is not loop:
            # (re)started on the serving loop; a test client may run several loops one after another
            self._loop = loop
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._worker(), name="clir-micro-batcher")

    async def submit(self, job: Job) -> Result:
        self._ensure_started()
        if self.pending >= self.max_pending:
            raise Overloaded(
                f"the server is at capacity ({self.max_pending} queries waiting for the encoder); retry shortly"
            )
        assert self._loop is not None and self._queue is not None  # set by _ensure_started
        fut = self._loop.create_future()
        self.pending += 1
        try:
            self._queue.put_nowait((job, fut))
            return await fut
        finally:
            self.pending -= 1

    async def stop(self) -> None:
        """Stop the worker; queries still queued are answered 503 rather than left hanging."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, RuntimeError):
                pass
        self._task = None
        while self._queue is not None and not self._queue.empty():
            _, fut = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(Overloaded("the server is shutting down"))

    async def _worker(self) -> None:
        queue = self._queue
        assert queue is not None
        while True:
            batch = [await queue.get()]
            if self.window > 0 and queue.qsize() < self.max_batch - 1:
                await asyncio.sleep(self.window)
            while len(batch) < self.max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            live = [(job, fut) for job, fut in batch if not fut.done()]
            if not live:
                continue
            try:
                results = await asyncio.to_thread(
                    run_jobs,
                    self.encoder,
                    [job for job, _ in live],
                    batch_size=self.max_batch,
                )
            except Exception as e:  # noqa: BLE001 -- run_jobs catches per group; this is a last resort
                log.exception("micro-batch failed")
                results = [e] * len(live)
            self.batches += 1
            self.batched_queries += len(live)
            for (_, fut), res in zip(live, results, strict=True):
                if fut.done():
                    continue
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)
