"""What the REST server is measured against (eval.bench.serve_load): the in-process batch ceiling, and the
reference answers of `clir search --query`.

The child process ``python -m eval.bench.serve_ceiling INDEX QUERIES.json`` opens the index as `clir search`
does (``Searcher``), then answers commands on stdin:

- ``reference N``: searches each of the first N queries alone (``Searcher.search``, k=10: what
  `clir search --query` runs), keeping ids and scores;
- ``ceiling S``: ``Searcher.batch_search`` (k=10, with text, batches of 64) over the queries, again and
  again for S seconds: the queries/s the same machine reaches with no HTTP in between.
- ``batcher C S``: `clir serve`'s micro-batcher and lanes (as `clir serve` plans them) in this process,
  C clients each submitting its next query as soon as the last is answered, for S seconds: the latency
  the batching itself gives, with no HTTP in between.

It is a separate process, like the servers, so it gets no head start from the benchmark's own warm caches
and runs under the same OpenMP settings; serve_load runs its slices in turn with the servers'."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def reference(searcher, queries: list[str], k: int = 10) -> dict[str, Any]:
    out = {}
    for q in queries:
        hits = searcher.search(q, k)
        out[q] = {"ids": [h.doc_id for h in hits], "scores": [h.score for h in hits]}
    return out


def ceiling(searcher, queries: list[str], seconds: float, batch: int = 64) -> dict[str, Any]:
    searcher.batch_search(queries[:batch], 10, return_text=True, batch_size=batch)  # warm-up
    done, start, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        chunk = queries[start : start + batch] or queries[:batch]
        start = start + batch if start + batch < len(queries) else 0
        searcher.batch_search(chunk, 10, return_text=True, batch_size=batch)
        done += len(chunk)
    elapsed = time.perf_counter() - t0
    return {"queries": done, "seconds": elapsed, "qps": done / elapsed}


def closed_loop(searcher, queries: list[str], clients: int, seconds: float) -> dict[str, Any]:
    """``batcher C S`` above: queries answered, seconds, latencies (ms) and queries per encoder batch."""
    import asyncio

    from clir.serve.batching import Job
    from clir.serve.config import ServeSettings
    from clir.serve.state import batcher_for

    batcher = batcher_for(searcher.encoder, ServeSettings())
    latencies: list[float] = []

    async def client(offset: int, until: float) -> None:
        i = offset
        while time.perf_counter() < until:
            t = time.perf_counter()
            await batcher.submit(Job(searcher, queries[i % len(queries)], 10, "en"))
            latencies.append((time.perf_counter() - t) * 1000)
            i += clients

    async def run() -> float:
        await batcher.warm_up([Job(searcher, queries[0], 10, "en")])
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c, t0 + seconds) for c in range(clients)))
        elapsed = time.perf_counter() - t0
        await batcher.stop()
        return elapsed

    try:
        elapsed = asyncio.run(run())
    finally:
        batcher.close()
    return {
        "clients": clients,
        "queries": len(latencies),
        "errors": [],  # a failed search raises here: no error rows to count
        "seconds": elapsed,
        "latencies_ms": [round(x, 2) for x in latencies],
        "batch_mean": batcher.batched_queries / max(1, batcher.batches),
    }


def compare(served: dict[str, dict], ref: dict[str, dict]) -> dict[str, Any]:
    """Top-10 identity and the largest score difference of served answers against the reference."""
    same = 0
    worst = 0.0
    n = 0
    for q, got in served.items():
        want = ref.get(q)
        if want is None:
            continue
        n += 1
        same += got["ids"] == want["ids"]
        by_id = dict(zip(want["ids"], want["scores"], strict=True))
        for d, s in zip(got["ids"], got["scores"], strict=True):
            if d in by_id:
                worst = max(worst, abs(s - by_id[d]))
    return {
        "queries": n,
        "top10_identical": same,
        "share": same / n if n else float("nan"),
        "max_score_diff": worst,
    }


def main(argv: list[str] | None = None) -> int:
    """Serve commands from stdin, one JSON line of answer each: ``ceiling SECONDS``, ``batcher CLIENTS
    SECONDS``, ``reference N``."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("index", type=Path)
    p.add_argument("queries", type=Path, help="JSON list of query texts")
    args = p.parse_args(argv)
    from concurrent.futures import ThreadPoolExecutor

    from clir.search import Searcher
    from clir.serve.state import freeze_startup_objects

    queries = json.loads(args.queries.read_text(encoding="utf-8"))
    searcher = Searcher(args.index)
    # a worker thread, as the server's batches run (torch's OpenMP is slower on the main thread when the
    # machine is oversubscribed: see serve_load's Pyserini notes)
    pool = ThreadPoolExecutor(1)
    pool.submit(searcher.search, queries[0], 10).result()
    freeze_startup_objects()  # as `clir serve` does once warm: no full GC pass over the libraries mid-slice
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "ceiling":
            res = pool.submit(ceiling, searcher, queries, float(arg)).result()
        elif cmd == "batcher":
            clients, seconds = arg.split()
            res = pool.submit(closed_loop, searcher, queries, int(clients), float(seconds)).result()
        elif cmd == "reference":
            res = pool.submit(reference, searcher, queries[: int(arg)]).result()
        else:
            break
        print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())


class Ceiling:
    """The child process above, driven from serve_load: ``ask("ceiling 10")`` -> its JSON answer."""

    def __init__(self, index: Path, queries: list[str], folder: Path, env: dict[str, str], cwd: Path) -> None:
        self.qfile = folder / "ceiling-queries.json"
        self.qfile.write_text(json.dumps(queries), encoding="utf-8")
        self.cmd = [sys.executable, "-m", "eval.bench.serve_ceiling", str(index), str(self.qfile)]
        self.env, self.cwd = env, cwd
        self.proc = None

    def start(self) -> Ceiling:
        import subprocess

        self.proc = subprocess.Popen(
            self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=self.env, cwd=self.cwd
        )
        if not json.loads(self.proc.stdout.readline() or "{}").get("ready"):
            raise RuntimeError("the in-process ceiling did not start")
        return self

    def ask(self, command: str) -> dict[str, Any]:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the in-process ceiling died answering {command!r}")
        return json.loads(line)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=20)
            except Exception:  # noqa: BLE001
                self.proc.kill()
