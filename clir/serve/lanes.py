"""Who runs on the server's encoder lanes next: the turns single queries (micro-batches) and /search/batch
slices take (clir.serve.batching)."""

from __future__ import annotations

import asyncio
from collections import deque


class Lanes:
    """Who gets an encoder lane next. A freed lane goes straight to a waiting claim, never to whoever asks
    next: a /search/batch slice that gave its lane back and asked again took it back before the waiting
    micro-batch woke up, so a single /search waited for whole batches (17 s behind two of 1,000 queries).

    Single queries (the micro-batcher's claims) come before batch slices, batches in turn among
    themselves, except that batches keep a lane while single queries hold another (or, with one lane, get
    it every other turn): a single query waits for at most one micro-batch or slice, and a batch moves on
    under any load of single queries."""

    def __init__(self, n: int) -> None:
        self._idle = list(range(n))  # the lane freed last is taken first: its caches are warm
        self._waiting: dict[bool, deque[asyncio.Future[int]]] = {True: deque(), False: deque()}
        self._held: dict[int, bool] = {}  # lane -> held for single queries (True) or a batch slice

    def idle(self) -> int:
        return len(self._idle)

    def held_for_batch(self, lane: int) -> bool:
        return self._held.get(lane) is False

    async def acquire(self, single: bool) -> int:
        if self._idle:  # a lane is idle only while no claim waits (release hands lanes over)
            lane = self._idle.pop()
            self._held[lane] = single
            return lane
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting[single].append(fut)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # handed a lane just as the claim was cancelled
                self.release(fut.result())
            raise

    def release(self, lane: int) -> None:
        ran_single = self._held.pop(lane)
        singles, batches = (self._live(self._waiting[k]) for k in (True, False))
        if singles and batches:
            batch_holds = not all(self._held.values())
            single_holds = ran_single or any(self._held.values())
            single = batch_holds or not single_holds
        elif singles or batches:
            single = bool(singles)
        else:
            self._idle.append(lane)
            return
        self._held[lane] = single
        self._waiting[single].popleft().set_result(lane)

    @staticmethod
    def _live(waiting: deque[asyncio.Future[int]]) -> bool:
        """Whether a claim waits (cancelled ones are dropped here)."""
        while waiting and waiting[0].done():
            waiting.popleft()
        return bool(waiting)
