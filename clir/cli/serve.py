"""``clir serve``: the REST search endpoint (FastAPI + uvicorn) over one or more index folders."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
from typing import Any

from clir.cli.common import deprecated_alias, given, positive_int
from clir.config.serve import ServeRequest, ServeSettings

HELP = "serve indexes over HTTP (FastAPI): /search, /search/batch, /indexes, docs; OpenAPI at /docs"
DESCRIPTION = """Serve index folders over HTTP. Each index is searched with the encoder recorded in its manifest,
loaded once (indexes built with the same encoder share it).

  clir serve --index indexes/xquad-de
  clir serve --index de=indexes/xquad-de --index ru=indexes/xquad-ru --port 8000
  clir serve --index indexes/xquad-de --processes 4   (--workers, its earlier name, still works)
  clir serve --config serve.yaml          (indexes: {alias: folder} plus any setting below)
  CLIR_KEY=secret clir serve --index indexes/xquad-de --api-key-env CLIR_KEY

  curl -s localhost:8000/search -H 'content-type: application/json' -d '{"query": "Who wrote Faust?", "k": 5}'
  curl -s 'localhost:8000/search?q=Who+wrote+Faust&index=de'"""

# ServeSettings fields a flag can set (over the --config file's)
SETTING_FLAGS = (
    "default_index",
    "host",
    "port",
    "processes",
    "api_key_env",
    "max_body_bytes",
    "max_batch_queries",
    "micro_batching",
    "batch_window_ms",
    "max_batch_size",
    "lanes",
    "max_pending",
    "device",
    "access_log",
    "request_timeout",
    "max_connections",
)

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--index",
        action="append",
        default=[],
        metavar="[NAME=]DIR",
        help="index folder to serve, optionally under an alias (repeatable; the first is the default)",
    )
    p.add_argument("--config", help="YAML file: indexes: {alias: folder} and settings (flags win)")
    p.add_argument("--default-index", help="index used when a request names none (default: the first)")
    p.add_argument("--host", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, help="port (default 8000; 0 picks a free one)")
    p.add_argument(
        "--processes",
        type=positive_int,
        help="server processes, each loading the indexes and models (default 1; formerly --workers)",
    )
    deprecated_alias(p, "--workers", "--processes", type=positive_int, dest="processes")
    p.add_argument("--api-key-env", metavar="VAR", help="require header X-API-Key equal to this env variable")
    p.add_argument(
        "--max-body-bytes", type=positive_int, help="larger request bodies get 413 (default 1 MiB)"
    )
    p.add_argument(
        "--max-batch-queries", type=positive_int, help="queries per /search/batch call (default 1000)"
    )
    b = p.add_mutually_exclusive_group()
    b.add_argument(
        "--micro-batching",
        dest="micro_batching",
        action="store_true",
        default=None,
        help="group concurrent /search requests into one encoder call (default on; see eval/bench/RESULTS.md)",
    )
    b.add_argument("--no-micro-batching", dest="micro_batching", action="store_false")
    p.add_argument(
        "--batch-window-ms", type=float, help="how long a lone request waits for company (default 0)"
    )
    p.add_argument("--max-batch-size", type=positive_int, help="queries per micro-batch (default 64)")
    p.add_argument(
        "--lanes",
        type=positive_int,
        help="micro-batches encoded at the same time, on replicas sharing the weights (default: 2 on a CPU, "
        "1 on a GPU)",
    )
    p.add_argument(
        "--max-pending",
        type=positive_int,
        help="queries waiting for the encoder, batches' included, before new requests get 503 (default 4096)",
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        metavar="SECONDS",
        help="time a client has to send a whole request, headers and body; then 408 and the connection "
        "closes (default 5)",
    )
    p.add_argument(
        "--max-connections",
        type=positive_int,
        help="open connections beyond which new ones get 503 and are closed (default 1000, or fewer where "
        "the open-file limit is lower)",
    )
    p.add_argument(
        "--device", help="torch device for query encoding (default: cuda when available, else cpu)"
    )
    p.add_argument("--no-access-log", dest="access_log", action="store_false", default=None)


def request(args: argparse.Namespace) -> ServeRequest:
    """The indexes and settings from --config and flags (flags win)."""
    from clir.config import from_dict
    from clir.errors import ClirError
    from clir.serve.config import load_serve_config, parse_index_spec

    indexes: dict[str, str] = {}
    data: dict = {}
    if args.config:
        indexes, data = load_serve_config(args.config)
    for spec in args.index:
        name, path = parse_index_spec(spec)
        if name in indexes and not args.config:
            raise ClirError(f"--index: two indexes are named {name!r}; give one an alias (NAME=DIR)")
        indexes[name] = path
    if not indexes:
        raise ClirError("nothing to serve: pass --index [NAME=]DIR (repeatable) or --config FILE")
    data.update(given(args, SETTING_FLAGS))
    return ServeRequest(indexes, from_dict(ServeSettings, data, prefix="serve"))


def resolve(args: argparse.Namespace) -> tuple[dict[str, str], ServeSettings]:
    """(indexes, settings) of :func:`request`."""
    req = request(args)
    return req.indexes, req.settings


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    # Before torch/FAISS load their OpenMP runtimes: idle OpenMP threads then sleep instead of spinning. A
    # server's work comes in bursts, often on cores shared with other processes or workers; spinning threads
    # made serving several times slower and erratic here (eval/bench/RESULTS.md, "REST serving").
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import uvicorn

    from clir.config import to_dict
    from clir.index import store
    from clir.serve.protocol import configure

    req = request(args)
    indexes, settings = req.indexes, req.settings
    settings.validate()
    settings.api_key()  # an unset key variable fails here, before any model loads
    if not _is_loopback(settings.host) and not settings.api_key_env:
        log.warning(
            "binding %s without --api-key-env: anyone who can reach this port can search", settings.host
        )
    common: dict[str, Any] = dict(
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep clir's logging setup; uvicorn's lines go through it
        access_log=False,  # clir logs its own access lines, with latency and request id
        timeout_graceful_shutdown=10,
    )
    protocol = configure(settings)  # request deadline, connection cap, JSON protocol errors
    if settings.processes > 1:
        for path in indexes.values():
            store.read_manifest(path)  # a wrong folder fails here, not in every worker
        # each worker process loads the indexes itself; the factory reads them from the environment
        os.environ["CLIR_SERVE_CONFIG"] = json.dumps(
            {"indexes": indexes, "settings": to_dict(settings), "log_level": logging.getLogger().level}
        )
        # by name: a worker imports the class, and its limits are set there by app_from_env
        http = f"{protocol.__module__}:{protocol.__name__}"
        uvicorn.run(
            "clir.serve.app:app_from_env", factory=True, workers=settings.processes, http=http, **common
        )
        return 0
    from clir.serve import create_app
    from clir.serve.state import freeze_startup_objects

    app = create_app(indexes, settings)
    freeze_startup_objects()  # here, not in create_app: an app embedded in another program leaves its GC be
    uvicorn.run(app, http=protocol, **common)
    return 0
