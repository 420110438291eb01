"""Request of ``clir serve``: the indexes to serve and the server's settings (also what
:func:`clir.serve.create_app` takes and what a ``clir serve --config`` file may set)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from clir.errors import ClirError


@dataclass(frozen=True)
class ServeSettings:
    """What ``clir serve`` and :func:`clir.serve.create_app` take besides the indexes.

    ``micro_batching`` gathers concurrent /search requests into one encoder call and one FAISS call per
    index (measured in eval/bench/RESULTS.md, "REST serving"); ``batch_window_ms`` is how long the first
    request of a batch waits for company (0: only requests already queued join, which adds no latency)."""

    host: str = "127.0.0.1"
    port: int = 8000
    #: uvicorn processes, each loading the indexes and models (``--processes``; a --config file's ``workers``,
    #: the key's earlier name, still works)
    processes: int = 1
    default_index: str | None = None
    #: name of the environment variable holding the API key; None: no key needed
    api_key_env: str | None = None
    max_body_bytes: int = 1_048_576
    max_batch_queries: int = 1000
    #: characters of all queries in one /search/batch call together (413 beyond): with max_batch_queries,
    #: what bounds one call's encoder time; a batch also runs in slices (at most max_batch_size queries,
    #: fewer when no lane is left idle: clir.serve.batching.BATCH_SLICE_S) that take turns with single
    #: searches, which wait for one slice, not for the whole batch
    max_batch_chars: int = 100_000
    micro_batching: bool = True
    batch_window_ms: float = 0.0
    max_batch_size: int = 64
    #: encoder lanes: replicas sharing the weights, each with its own thread, that run micro-batches at the
    #: same time (None: 2 on a CPU, 1 on a GPU; clir.serve.state.lane_plan)
    lanes: int | None = None
    #: queries waiting for the encoder, /search/batch calls' included, beyond which new requests are shed
    #: with 503 (load shedding); room for a few full batches (max_batch_queries) beside single searches
    max_pending: int = 4096
    device: str | None = None
    access_log: bool = True
    #: seconds a client has to send a request whole, headers and body, from its first byte (or from
    #: connecting); then it gets 408 and the connection closes (clir.serve.protocol)
    request_timeout: float = 5.0
    #: open connections beyond which new ones get 503 and are closed at once (per worker process); None:
    #: 1000, or fewer where the open-file limit is lower
    max_connections: int | None = None

    def validate(self) -> None:
        for name in (
            "port",
            "processes",
            "max_body_bytes",
            "max_batch_queries",
            "max_batch_chars",
            "max_batch_size",
            "lanes",
            "max_pending",
            "max_connections",
        ):
            value = getattr(self, name)
            if value is not None and value < (0 if name == "port" else 1):  # lanes None: chosen per device
                raise ClirError(f"serve setting {name} must be positive, got {value}")
        if not 0 <= self.port <= 65535:
            raise ClirError(f"port {self.port} is outside 0..65535")
        # nan passes every comparison: `--batch-window-ms nan` was accepted
        if not math.isfinite(self.batch_window_ms) or self.batch_window_ms < 0:
            raise ClirError(f"batch_window_ms must be a finite number >= 0, got {self.batch_window_ms}")
        if not math.isfinite(self.request_timeout) or self.request_timeout <= 0:
            raise ClirError(
                f"request_timeout must be a finite number of seconds > 0, got {self.request_timeout}"
            )
        if self.max_batch_queries > self.max_pending:
            raise ClirError(
                f"max_batch_queries ({self.max_batch_queries}) is above max_pending ({self.max_pending}): a full "
                "batch would always be refused"
            )

    def api_key(self) -> str | None:
        """The key from the environment (read at startup, never logged); a named but unset variable is an
        error, not an open server."""
        import os

        if not self.api_key_env:
            return None
        value = os.environ.get(self.api_key_env, "")
        if not value.strip():
            raise ClirError(
                f"--api-key-env {self.api_key_env}: that environment variable is not set or empty; export the "
                "key there (it is read from the environment so it never shows in `ps` or logs)"
            )
        return value


@dataclass(frozen=True)
class ServeRequest:
    """What ``clir serve`` runs: ``indexes`` (name -> index folder; the first is the default unless
    ``settings.default_index`` names another) under ``settings``."""

    indexes: dict[str, str]
    settings: ServeSettings
