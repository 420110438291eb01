"""What a running server holds: the served searchers (indexes opened once, encoders shared), the default
index, one micro-batcher per loaded encoder, and whether it is ready."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

from clir.errors import ClirError, NotFoundError
from clir.model.protocol import Encoder
from clir.serve.batching import Job, MicroBatcher, run_jobs
from clir.serve.config import ServeSettings, check_name

log = logging.getLogger(__name__)


def load_searchers(indexes: Mapping[str, Any], *, device: str | None = None) -> dict[str, Any]:
    """Open each index (a folder, or a ready ``Searcher``) with the encoder its manifest names; indexes whose
    manifests name the same encoder source and settings share one loaded model."""
    from clir.index import store
    from clir.search import Searcher

    if not indexes:
        raise ClirError("no index to serve: pass --index [NAME=]DIR (or indexes: in --config)")
    shared: dict[str, Any] = {}
    out: dict[str, Any] = {}
    for name, src in indexes.items():
        check_name(name)
        if isinstance(src, Searcher):
            out[name] = src
            continue
        manifest = store.read_manifest(src)
        key = json.dumps(manifest.get("model"), sort_keys=True, default=str)
        searcher = Searcher(src, encoder=shared.get(key), device=device, manifest=manifest)
        if key not in shared:
            log.info("loaded encoder %s for index %s", manifest["model"].get("source"), name)
        shared.setdefault(key, searcher.encoder)
        out[name] = searcher
        log.info("index %s: %s (%d documents)", name, src, searcher.num_docs)
    return out


class ServeState:
    def __init__(self, searchers: dict[str, Any], settings: ServeSettings, api_key: str | None) -> None:
        self.settings = settings
        self.searchers = searchers
        self.default = settings.default_index or next(iter(searchers))
        if self.default not in searchers:
            raise ClirError(
                f"default index {self.default!r} is not among the served ({', '.join(searchers)})"
            )
        self.api_key = api_key
        self.ready = False
        # one batcher per loaded encoder: indexes sharing a model share its queue
        self.batchers: dict[int, MicroBatcher] = {}
        for s in searchers.values():
            if settings.micro_batching and id(s.encoder) not in self.batchers:
                self.batchers[id(s.encoder)] = batcher_for(s.encoder, settings)

    def get(self, name: str | None) -> tuple[str, Any]:
        name = name or self.default
        searcher = self.searchers.get(name)
        if searcher is None:
            raise NotFoundError(f"unknown index {name!r} (served: {', '.join(self.searchers)})")
        return name, searcher

    async def warm_up(self) -> None:
        """One query per encoder (per lane), so the first request does not pay for lazy initialisation."""
        seen = set()
        for s in self.searchers.values():
            if id(s.encoder) in seen:
                continue
            seen.add(id(s.encoder))
            batcher = self.batchers.get(id(s.encoder))
            jobs = [Job(s, "warm up", 1, s.encoder.config.source_lang)]
            if batcher is not None:
                done = await batcher.warm_up(jobs)
            else:
                done = await asyncio.to_thread(run_jobs, s.encoder, jobs)
            for res in done:
                if isinstance(res, BaseException):
                    raise res

    async def stop(self) -> None:
        self.ready = False
        for b in self.batchers.values():
            await b.stop()
            b.close()


def batcher_for(encoder: Encoder, settings: ServeSettings) -> MicroBatcher:
    """The micro-batcher `clir serve` runs for ``encoder``: lanes from :func:`lane_plan`, limits from
    ``settings``."""
    lanes, threads = lane_plan(settings.lanes, encoder.device.type)
    log.info("encoder %s: %d lane(s), threads (alone, shared) %s", encoder.source, lanes, threads)
    return MicroBatcher(
        encoder,
        max_batch=settings.max_batch_size,
        window_ms=settings.batch_window_ms,
        max_pending=settings.max_pending,
        lanes=lanes,
        threads=threads,
    )


def lane_plan(lanes: int | None, device_type: str) -> tuple[int, tuple[int, int] | None]:
    """(encoder lanes, (threads of a lane alone, threads of a lane beside others)) for a batcher. ``lanes``
    None picks one lane on a GPU (it batches best alone), else two on the CPU's threads (measured on 2 cores:
    eval/bench/RESULTS.md, "REST serving"). One lane keeps torch's thread count (None)."""
    import torch

    total = torch.get_num_threads()
    if lanes is None:
        lanes = 1 if device_type != "cpu" else min(2, total)
    return lanes, ((total, max(1, total // lanes)) if lanes > 1 else None)


def freeze_startup_objects() -> None:
    """Exempt what start-up made (torch, transformers, FastAPI, the indexes: ~470,000 objects with one e5
    index, living as long as the server) from the cyclic garbage collector's full passes. Each full pass
    walked them all holding the GIL, ~300 ms here, every ~20 s under load: every request in flight stalled,
    the p99 of serving at 32 clients (eval/bench/RESULTS.md, "REST serving"). Later objects are still
    collected."""
    import gc

    gc.collect()
    gc.freeze()
