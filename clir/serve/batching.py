"""Query execution for the REST server: one encoder call per language and one FAISS call per index for a
group of queries, and a micro-batcher that groups concurrent requests onto encoder lanes.

The encoder is model state (adapter routing): everything that touches it here runs
under ``DualEncoder.exclusive()`` of the lane's own replica.

Each lane has a dedicated worker thread. That needs OpenMP's passive waiting, which `clir serve` sets: under
the default spinning, a dedicated one-thread executor made 8 clients ~20x slower than asyncio's default
executor (eval/bench/RESULTS.md, "REST serving")"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np

from clir.config.model import Route
from clir.errors import ClirError
from clir.model.protocol import Encoder
from clir.serve.lanes import Lanes

log = logging.getLogger(__name__)


@dataclass
class Job:
    searcher: Any  # clir.search.Searcher
    query: str
    k: int
    lang: str
    #: query-side language-adapter routing for this query (madx); None: the encoder's own
    routing: Route | None = None


@dataclass
class Result:
    scores: np.ndarray  # (k,)
    rows: np.ndarray  # (k,) rows of the index, -1 where FAISS found fewer
    tokens: int  # query tokens the encoder kept
    truncated: bool  # the query was longer than the encoder's limit


#: While another lane is busy, a free lane waits at most GATHER_MAX seconds in all; once as many queries
#: wait as the busiest lane holds, it stops at the first GATHER_GAP pause in arrivals (MicroBatcher._gather)
GATHER_GAP = 0.008
GATHER_MAX = 0.020

#: A lane running alone spreads over all threads only for batches of this many queries or more. Under
#: passive OpenMP waiting (which serving needs), a second thread's wake-ups cost more than it takes over on
#: smaller ones (one-off A/B, e5-small, 2 cores, ms for one / 8 / 16 / 32 queries on one thread: 30 / 107 /
#: 174 / 291, on two: 50 / 116 / 173 / 259).
ALONE_MIN_BATCH = 16

#: While single queries come (one in the last SINGLES_RECENT_S), some lane is always idle or busy with
#: something short: a /search/batch slice that would leave none is sized to take about BATCH_SLICE_S, at
#: the pace recent slices went (at least BATCH_SLICE_MIN queries), so a single query waits for at most
#: that. Slices of max_batch_size (64) took 1.1-2.4 s on 2 cores with e5-small, and a single /search waited
#: that long behind two batches; but small slices cost the batches throughput (a call's fixed cost is that
#: of ~3 queries: two batches took 1.45x as long in slices of 8), so other slices stay whole.
BATCH_SLICE_S = 0.25
BATCH_SLICE_MIN = 4
SINGLES_RECENT_S = 10.0

#: How much lower a lane thread's scheduling priority is than the rest of the process (Linux nice, which is
#: per thread). Lanes do bulk encoding; the event loop's work is short and waits on it (reading requests,
#: answering them), and at equal priority it queued for a core behind two busy lanes. At 32 clients, 10
#: gave +6% req/s (eval/bench/RESULTS.md, "REST serving").
LANE_NICE = 10


class Overloaded(ClirError):
    status = 503


def encode_grouped(
    encoder: Encoder,
    queries: list[str],
    langs: list[str],
    *,
    batch_size: int = 64,
    routings: list[Route | None] | None = None,
) -> tuple[list[np.ndarray | BaseException], list[tuple[int, bool] | None]]:
    """Query vectors, one encoder call per language and query routing (``routings``, None: the encoder's
    own), plus each query's (tokens kept, truncated?). A failure is returned in the slots of the queries it
    concerns.

    The encoder packs a language's queries into one forward (:mod:`clir.model.packing`), so each vector is
    the one the query gets alone (`clir search --query`) whatever else shares the micro-batch, bit for bit
    where :mod:`clir.model.rowblocks` finds row blocks for the model's products."""
    vectors: list[np.ndarray | BaseException | None] = [None] * len(queries)
    counts: list[tuple[int, bool] | None] = [None] * len(queries)
    routes = routings if routings is not None else [None] * len(queries)
    with encoder.exclusive():
        by_lang: dict[tuple[str, Route | None], list[int]] = defaultdict(list)
        for i, (query, lang, route) in enumerate(zip(queries, langs, routes, strict=True)):
            try:
                counts[i] = encoder.count_tokens(query, "query")
            except Exception as e:  # noqa: BLE001 -- handed to the request it concerns
                vectors[i] = e
                continue
            by_lang[(lang, route)].append(i)
        for (lang, route), idxs in by_lang.items():
            try:
                vecs = encoder.encode_queries(
                    [queries[i] for i in idxs],
                    lang=lang,
                    batch_size=batch_size,
                    show_progress=False,
                    routing=replace(encoder.config.routing, query=route) if route else None,
                )
            except Exception as e:  # noqa: BLE001
                for i in idxs:
                    vectors[i] = e
                continue
            for row, i in enumerate(idxs):
                vectors[i] = vecs[row]
    return vectors, counts  # type: ignore[return-value]


def run_jobs(encoder: Encoder, jobs: list[Job], *, batch_size: int = 64) -> list[Result | BaseException]:
    """Encode (:func:`encode_grouped`) and search ``jobs``, all on ``encoder``: one FAISS call per index
    with the largest k asked. A failure is returned in the slots of the jobs it concerns."""
    vectors, counts = encode_grouped(
        encoder,
        [j.query for j in jobs],
        [j.lang for j in jobs],
        batch_size=batch_size,
        routings=[j.routing for j in jobs],
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
    """Groups concurrent queries into :func:`run_jobs` calls on a few encoder lanes.

    A lane is an encoder replica (:meth:`DualEncoder.replica`, weights shared) with its own worker thread. It
    runs on its share of the CPU threads while another lane is busy or its batch is small, on all of them
    when it is alone with a large batch (:data:`ALONE_MIN_BATCH`). Two lanes of one thread each beat one
    lane of two threads on small batches, and one lane's FAISS search overlaps the other's encoding
    (eval/bench/RESULTS.md, "REST serving"). Every lane computes the same vector for a query.

    While the lanes are busy, queries wait; a lane that comes free takes them (up to ``max_batch``, and at
    most an even share with the other lanes' running batches), so batches grow with load by themselves.
    ``window_ms`` > 0 lets a lone request wait that long for company. /search/batch calls run slice by
    slice on the same lanes, taking turns with single queries (:class:`Lanes`). Queries waiting for the
    encoder, a batch's included, are refused beyond ``max_pending`` (503) instead of queueing without
    bound."""

    def __init__(
        self,
        encoder: Encoder,
        *,
        max_batch: int = 64,
        window_ms: float = 0.0,
        max_pending: int = 1024,
        lanes: int = 1,
        threads: tuple[int, int] | None = None,
    ):
        self.max_batch = max_batch
        self.window = window_ms / 1000.0
        self.max_pending = max_pending
        self.lanes = [encoder] + [encoder.replica() for _ in range(lanes - 1)]
        # (all, share): OpenMP threads of a lane running alone, and beside others; None leaves torch's
        # default. Set in the lane's own thread: OpenMP thread counts are per calling thread.
        self.threads = threads
        self._pools = [
            ThreadPoolExecutor(1, thread_name_prefix=f"clir-lane{i}", initializer=_lower_priority)
            for i in range(lanes)
        ]
        self.pending = 0
        self.batches = 0
        self.batched_queries = 0
        self.slices = 0  # /search/batch slices started
        self._query_s: float | None = None  # seconds a query of a recent batch slice took (moving average)
        self._short: set[int] = set()  # lanes running a batch slice cut short (_slice_size)
        self._single_at = -SINGLES_RECENT_S  # time.monotonic() of the last single query
        self._waiting: deque[tuple[Job, asyncio.Future]] = deque()
        self._running = [0] * lanes  # queries each lane is working on
        self._arrived: asyncio.Event | None = None
        self._lanes = Lanes(lanes)
        self._task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def _ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._loop is not loop:
            # (re)started on the serving loop; a test client may run several loops one after another
            self._loop = loop
            self._arrived = asyncio.Event()
            self._lanes = Lanes(len(self.lanes))
            self._running = [0] * len(self.lanes)
            self._short = set()
            self._task = loop.create_task(self._worker(), name="clir-micro-batcher")

    async def submit(self, job: Job) -> Result:
        self._ensure_started()
        self._single_at = time.monotonic()
        if self.pending >= self.max_pending:
            raise Overloaded(
                f"the server is at capacity ({self.max_pending} queries waiting for the encoder); retry shortly"
            )
        assert self._loop is not None and self._arrived is not None  # set by _ensure_started
        fut = self._loop.create_future()
        self.pending += 1
        try:
            self._waiting.append((job, fut))
            self._arrived.set()
            return await fut
        finally:
            self.pending -= 1

    async def warm_up(self, jobs: list[Job]) -> list[Result | BaseException]:
        """``jobs`` once on every lane, in its thread (the first call pays for lazy initialisation); the
        last lane's time is the first estimate of a query's (:meth:`_slice_size`)."""
        out = []
        for lane in range(len(self.lanes)):
            t0 = time.perf_counter()
            out += await self._start(lane, jobs, alone=True)
            self._query_s = (time.perf_counter() - t0) / len(jobs)
        return out

    async def run_batch(self, jobs: list[Job], step: int) -> list[Result | BaseException]:
        """A /search/batch call: refused (503) unless its queries fit under ``max_pending`` beside those
        already waiting, then run a slice of at most ``step`` queries at a time (:meth:`_slice_size`),
        each on the lane its turn brings (:class:`Lanes`); a slice's queries count as pending until it is
        done. Cancelled (its client left), it stops: the slice running finishes in its lane, no other
        starts."""
        self._ensure_started()
        if self.pending + len(jobs) > self.max_pending:
            raise Overloaded(
                f"the server is at capacity ({self.pending} queries waiting for the encoder, max_pending "
                f"{self.max_pending}): a batch of {len(jobs)} does not fit now; retry shortly"
            )
        self.pending += len(jobs)
        out: list[Result | BaseException] = []
        try:
            while len(out) < len(jobs):
                lanes = self._lanes
                lane = await lanes.acquire(single=False)
                size = self._slice_size(lane, step)
                if size < step:
                    self._short.add(lane)  # now, before another lane's slice is sized
                part = jobs[len(out) : len(out) + size]
                out += await self._run_slice(lanes, lane, part)
                self.pending -= len(part)
        finally:
            self.pending -= len(jobs) - len(out)
        return out

    async def run_now(self, jobs: list[Job]) -> list[Result | BaseException]:
        """:func:`run_jobs` on the next lane a batch slice may take, as one batch of its own."""
        self._ensure_started()
        lanes = self._lanes
        return await self._run_slice(lanes, await lanes.acquire(single=False), jobs)

    def _slice_size(self, lane: int, step: int) -> int:
        """Queries in a batch's next slice on ``lane``: as many as take about :data:`BATCH_SLICE_S` if
        single queries come and every other lane holds a whole batch slice, else ``step`` (another lane
        comes free soon enough, and takes a single query that arrives)."""
        others_long = all(
            self._lanes.held_for_batch(other) and other not in self._short
            for other in range(len(self.lanes))
            if other != lane
        )
        if self._query_s is None or not others_long or time.monotonic() - self._single_at > SINGLES_RECENT_S:
            return step
        return min(step, max(BATCH_SLICE_MIN, int(BATCH_SLICE_S / self._query_s)))

    async def _run_slice(self, lanes: Lanes, lane: int, jobs: list[Job]) -> list[Result | BaseException]:
        """``jobs`` on ``lane`` (held). The lane is given back when its thread is done, even if the caller
        is cancelled before; the time the slice took updates the pace of a query."""
        t0 = time.perf_counter()
        try:
            work = self._start(lane, jobs)
        except BaseException:
            self._short.discard(lane)
            lanes.release(lane)
            raise

        def done(_: Any) -> None:
            self._short.discard(lane)
            lanes.release(lane)
            took = (time.perf_counter() - t0) / len(jobs)
            log.debug(
                "lane %d: batch slice of %d queries in %.1f ms", lane, len(jobs), took * len(jobs) * 1000
            )
            self._query_s = took if self._query_s is None else 0.7 * self._query_s + 0.3 * took

        work.add_done_callback(done)
        self.slices += 1
        return await asyncio.shield(work)

    async def stop(self) -> None:
        """Stop the worker; queries still waiting are answered 503 rather than left hanging."""
        for task in [self._task, *self._tasks]:
            if task is not None and not task.done():
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, RuntimeError):
                    pass
        self._task = None
        while self._waiting:
            _, fut = self._waiting.popleft()
            if not fut.done():
                fut.set_exception(Overloaded("the server is shutting down"))

    def close(self) -> None:
        for pool in self._pools:
            pool.shutdown(wait=False, cancel_futures=True)

    async def _worker(self) -> None:
        while True:
            while not self._waiting:
                await self._arrival(None)
            lane = await self._lanes.acquire(single=True)  # meanwhile more queries arrive, and join
            if self.window > 0 and len(self._waiting) < self.max_batch:
                await asyncio.sleep(self.window)
            if self._lanes.idle() < len(self.lanes) - 1:
                await self._gather()
            batch = [self._waiting.popleft() for _ in range(self._share())]
            live = [(job, fut) for job, fut in batch if not fut.done()]
            if not live:
                self._lanes.release(lane)
                continue
            self._running[lane] = len(live)
            task = asyncio.get_running_loop().create_task(self._run(lane, live))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _arrival(self, timeout: float | None) -> bool:
        """Wait for the next query to arrive; False when ``timeout`` seconds pass first."""
        assert self._arrived is not None
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def _gather(self) -> None:
        """Wait, at most GATHER_MAX, until as many queries wait as the busiest other lane holds, then on
        until arrivals pause for GATHER_GAP (or a full batch waits).

        Called when another lane is busy, so waiting costs no throughput. Under closed-loop load a lane
        comes free just as the clients it answered send their next queries, spread over the ms the event
        loop takes to answer them all. Taking the first of them alone (a one-query forward costs nearly what
        ten do) left the rest to wait a whole batch (batches alternating 15 and 1-2 queries at 32 clients);
        stopping at the first pause in arrivals still cut some batches short when the process or the
        machine stalled for a few ms, and the clients cut off waited a batch more: the latency tail. The
        busiest lane's count is how many clients one batch answers at this load."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GATHER_MAX
        target = min(self.max_batch, max(1, *self._running))
        while len(self._waiting) < self.max_batch:
            left = deadline - loop.time()
            wait = left if len(self._waiting) < target else min(GATHER_GAP, left)
            if wait <= 0 or not await self._arrival(wait):
                return

    def _share(self) -> int:
        """How many waiting queries a free lane takes: all of them up to ``max_batch``, but no more than an
        even share of those and the other lanes' running ones. Without the cap, lanes settle into unequal
        batches (measured at 32 clients: 8 and 18), and a small batch costs more per query."""
        waiting = len(self._waiting)
        even = -(-(waiting + sum(self._running)) // len(self.lanes))
        return max(1, min(waiting, self.max_batch, even))

    async def _run(self, lane: int, live: list[tuple[Job, asyncio.Future]]) -> None:
        lanes = self._lanes
        try:
            t0 = time.perf_counter()
            results = await self._start(lane, [job for job, _ in live])
            log.debug("lane %d: %d queries in %.1f ms", lane, len(live), (time.perf_counter() - t0) * 1000)
        except Exception as e:  # noqa: BLE001 -- run_jobs catches per group; this is a last resort
            log.exception("micro-batch failed")
            results = [e] * len(live)
        finally:
            self._running[lane] = 0
            lanes.release(lane)
        self.batches += 1
        self.batched_queries += len(live)
        for (_, fut), res in zip(live, results, strict=True):
            if fut.done():
                continue
            if isinstance(res, BaseException):
                fut.set_exception(res)
            else:
                fut.set_result(res)

    def _start(self, lane: int, jobs: list[Job], alone: bool | None = None) -> asyncio.Future[list[Any]]:
        """:func:`run_jobs` for ``jobs`` started on ``lane`` (held) in its thread."""
        if alone is None:
            alone = self._lanes.idle() == len(self.lanes) - 1 and len(jobs) >= ALONE_MIN_BATCH
        n = None if self.threads is None else (self.threads[0 if alone else 1], self.threads[0])
        return asyncio.get_running_loop().run_in_executor(
            self._pools[lane], partial(_run_jobs_on, n, self.lanes[lane], jobs, self.max_batch)
        )


_lane_threads = threading.local()


def _run_jobs_on(
    threads: tuple[int, int] | None, encoder: Encoder, jobs: list[Job], batch_size: int
) -> list[Any]:
    """:func:`run_jobs` in a lane's thread with ``threads[0]`` torch and FAISS OpenMP threads (None: as
    they are); ``threads[1]`` is the process default, which torch's ``set_num_threads`` also overwrites."""
    if threads is not None and getattr(_lane_threads, "n", None) != threads[0]:
        _set_thread_count(*threads)
        _lane_threads.n = threads[0]
    return run_jobs(encoder, jobs, batch_size=batch_size)


def _lower_priority() -> None:
    """Lower the calling thread's priority by :data:`LANE_NICE` (the OpenMP threads it starts inherit it).
    Only on Linux: elsewhere ``setpriority`` would lower the whole process."""
    if sys.platform != "linux":
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + LANE_NICE)
    except OSError as e:  # a sandbox may forbid it: lanes then run at the process's priority
        log.debug("could not lower the lane thread's priority: %s", e)


def _set_thread_count(n: int, default: int) -> None:
    """``n`` OpenMP threads for torch and FAISS in the calling thread only. OpenMP keeps the count per
    thread, but torch also stores it as the count every new thread starts with: that is put back to
    ``default`` from a throwaway thread, so no other thread of the process inherits a lane's share."""
    import faiss
    import torch

    torch.get_num_threads()  # torch sets a thread's count from the default on first use: done now, not after
    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
    if n != default:
        reset = threading.Thread(target=torch.set_num_threads, args=(default,), name="clir-thread-count")
        reset.start()
        reset.join()
