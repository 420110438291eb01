"""What a running server holds: the served searchers (indexes opened once, encoders shared), the default
index, one micro-batcher per loaded encoder, and whether it is ready."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

from clir.errors import ClirError, NotFoundError
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
                self.batchers[id(s.encoder)] = MicroBatcher(
                    s.encoder,
                    max_batch=settings.max_batch_size,
                    window_ms=settings.batch_window_ms,
                    max_pending=settings.max_pending,
                )

    def get(self, name: str | None) -> tuple[str, Any]:
        name = name or self.default
        searcher = self.searchers.get(name)
        if searcher is None:
            raise NotFoundError(f"unknown index {name!r} (served: {', '.join(self.searchers)})")
        return name, searcher

    async def warm_up(self) -> None:
        """One query per encoder, so the first request does not pay for lazy initialisation."""
        seen = set()
        for s in self.searchers.values():
            if id(s.encoder) not in seen:
                seen.add(id(s.encoder))
                (res,) = await asyncio.to_thread(run_jobs, s.encoder, [Job(s, "warm up", 1, "en")])
                if isinstance(res, BaseException):
                    raise res

    async def stop(self) -> None:
        self.ready = False
        for b in self.batchers.values():
            await b.stop()
