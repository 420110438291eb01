"""The load generator of the REST benchmark (eval.bench.serve_load): closed-loop aiohttp clients against one
server, the CPU time they and the server spend, and the rows their slices merge into."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from eval.bench import common
from eval.bench.serve_peers import Server


async def _load(
    server: Server, queries: list[str], clients: int, duration: float, warmup: float
) -> dict[str, Any]:
    # aiohttp, not httpx: at 32 clients httpx's client took 0.18 of this machine's 2 cores away from the
    # server it measured, aiohttp 0.03
    import aiohttp

    latencies: list[float] = []
    errors: list[str] = []
    answers: dict[str, dict] = {}  # first measured answer per query (clir's response shape)
    counter = 0
    t_start = time.perf_counter()
    t_measure = t_start + warmup
    t_end = t_measure + duration
    cpu: dict[str, Any] = {}

    async def worker(c: aiohttp.ClientSession) -> None:
        nonlocal counter
        while True:
            t0 = time.perf_counter()
            if t0 >= t_end:
                return
            if t0 >= t_measure and not cpu:  # the first measured request starts the CPU clocks
                cpu.update(
                    server=_cpu_seconds(server.proc.pid),
                    client=_own_cpu_seconds(),
                    t=t0,
                    ticks=common.cpu_ticks(),
                )
            q = queries[counter % len(queries)]
            counter += 1
            try:
                async with c.post(server.search_path, json=server.body(q)) as r:
                    text = await r.text()
                ok = r.status == 200
                why = f"HTTP {r.status}: {text[:200]}"
            except (aiohttp.ClientError, TimeoutError) as e:
                ok, why = False, f"{type(e).__name__}: {e}"
            t1 = time.perf_counter()
            if t0 >= t_measure:  # requests sent during warm-up are not counted
                if ok:
                    latencies.append(t1 - t0)
                    if q not in answers and server.search_path == "/search":
                        hits = json.loads(text)["hits"]
                        answers[q] = {
                            "ids": [h["doc_id"] for h in hits],
                            "scores": [h["score"] for h in hits],
                        }
                else:
                    errors.append(why)

    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(server.url, connector=connector, timeout=timeout) as c:
        await asyncio.gather(*(worker(c) for _ in range(clients)))
    t_done = time.perf_counter()
    elapsed = t_done - t_measure
    return {
        "clients": clients,
        "latencies_ms": [x * 1000 for x in latencies],
        "errors": errors,
        "seconds": elapsed,
        "answers": answers,
        # CPU cores used while measured: the server process, and this benchmark (its clients)
        "server_cpu_s": _cpu_seconds(server.proc.pid) - cpu["server"] if cpu else 0.0,
        "client_cpu_s": _own_cpu_seconds() - cpu["client"] if cpu else 0.0,
        "clock_s": t_done - cpu.get("t", t_done),  # the wall time those CPU clocks ran
        # the machine's CPU ticks while measured: its steal and idle (common.cpu_shares)
        "ticks": common.ticks_between(cpu.get("ticks"), common.cpu_ticks()),
    }


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, its threads included (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def merge(runs: list[dict]) -> dict[str, Any]:
    """Slices of one server and level -> one row: percentiles over all latencies, rate over all time."""
    lat = np.asarray([x for r in runs for x in r["latencies_ms"]])
    errors = [e for r in runs for e in r["errors"]]
    seconds = sum(r["seconds"] for r in runs)
    pct = np.percentile(lat, [50, 95, 99]) if len(lat) else [float("nan")] * 3
    clock = sum(r.get("clock_s", 0.0) for r in runs)
    return {
        "clients": runs[0]["clients"],
        "server_cores": sum(r.get("server_cpu_s", 0.0) for r in runs) / clock if clock else float("nan"),
        "client_cores": sum(r.get("client_cpu_s", 0.0) for r in runs) / clock if clock else float("nan"),
        "ok": len(lat),
        "errors": len(errors),
        "error_samples": errors[:5],
        "seconds": round(seconds, 2),
        "rps": len(lat) / seconds,
        "p50_ms": float(pct[0]),
        "p95_ms": float(pct[1]),
        "p99_ms": float(pct[2]),
        "slice_rps": [round(len(r["latencies_ms"]) / r["seconds"], 2) for r in runs],
        **common.cpu_shares(common.add_ticks([r.get("ticks") for r in runs])),  # steal, idle
    }


def summary(r: dict[str, Any]) -> str:
    return (
        f"{r['rps']:6.1f} req/s  p50 {r['p50_ms']:7.1f}  p95 {r['p95_ms']:7.1f}  p99 {r['p99_ms']:7.1f} ms  "
        f"errors {r['errors']}  (slices: {r['slice_rps']} req/s; steal {pct(r.get('steal'))})"
    )


def measure(
    server: Server, queries: list[str], clients: int, duration: float, warmup: float
) -> dict[str, Any]:
    return asyncio.run(_load(server, queries, clients, duration, warmup))


def queries_of(collection: Path) -> list[str]:
    from clir.data import load_queries

    qs = [q.text for q in load_queries(str(collection))]
    random.Random(0).shuffle(qs)
    return qs


def merge_batcher(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Slices of serve_ceiling's ``batcher`` command as one (:func:`merge`'s rate and percentiles): q/s,
    latency percentiles, queries a batch, and the machine's steal while they ran."""
    row = merge(runs)
    return {
        "qps": row["rps"],
        "p50_ms": row["p50_ms"],
        "p99_ms": row["p99_ms"],
        "batch_mean": sum(r["batch_mean"] * r["queries"] for r in runs) / max(1, row["ok"]),
        **({"steal": row["steal"]} if "steal" in row else {}),
    }


def ticked(ask: Any, command: str) -> dict[str, Any]:
    """``ask(command)``'s answer with the machine's CPU ticks spent while it ran (``ticks``)."""
    before = common.cpu_ticks()
    out = ask(command)
    return {**out, "ticks": common.ticks_between(before, common.cpu_ticks())}


def pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"
