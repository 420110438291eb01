"""REST serving under load: `clir serve` (micro-batching on and off) against Pyserini's REST server
(`pyserini.server.rest`, the same FAISS index under an alias, the same encoder), in one run.

    python -m eval.bench.serve_load                      # 60 s per level, writes "## REST serving"
    python -m eval.bench.serve_load --duration 10 --no-write
    python -m eval.bench.serve_load --acceptance         # xquad-r/de: top-10 equal to `clir search`, 32x60s

The index has 100,000 passages: the 1,276 real xquad-r/de passages (e5-small vectors) plus synthetic
passages (sentences of all shared collections recombined) whose vectors are random unit vectors. Encoding
100k passages with e5 on 2 CPU cores takes long, and the serving cost (query encoding + a flat search over
100k x 384 floats + document fetch) does not depend on what the vectors are. Real queries (English xquad-r
questions) still find the real passages on top.

Loopback only (127.0.0.1); every level is bounded by --duration; servers are child processes killed at the
end. Clients are aiohttp async tasks, each sending its next request as soon as the last one is answered."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from eval.bench import common
from eval.bench.serve_ceiling import Ceiling, compare

log = logging.getLogger("serve_load")

SECTION = "REST serving"
JAVA_HOME = "/usr/lib/jvm/temurin-25-jdk-amd64"
WORK = common.REPO / "indexes"
ALIAS = "bench"


# ---------------------------------------------------------------------------------------------- index
def _sentences(limit: int = 200_000) -> list[tuple[str, str]]:
    """(lang, sentence) from every shared collection's documents."""
    out: list[tuple[str, str]] = []
    for docs in sorted((common.SHARED / "data" / "collections").glob("*/*/docs.jsonl")):
        with open(docs, encoding="utf-8") as f:
            for line in f:
                d = json.loads(line)
                for s in re.split(r"(?<=[.!?。])\s+", d.get("text", "")):
                    if len(s) > 20:
                        out.append((d.get("lang") or docs.parent.name, s))
    return out[:limit]


def padded_index(real: Path, out: Path, total: int, seed: int = 0) -> Path:
    """``real`` plus synthetic passages with random unit vectors, ``total`` passages in all (reused when a
    previous run built the same thing)."""
    import faiss

    from clir.atomic import swap_into_place
    from clir.index import store

    real_manifest = store.read_manifest(real)
    recipe = {
        "real_index": str(real),
        "real_created": real_manifest.get("created"),
        "total": total,
        "seed": seed,
    }
    if (out / "manifest.json").is_file():
        if json.loads((out / "manifest.json").read_text()).get("bench_recipe") == recipe:
            return out
    log.info("writing %s: %s + synthetic passages to %d", out, real, total)
    src = faiss.read_index(str(real / store.INDEX_FILE))
    n_real = src.ntotal
    vecs = src.reconstruct_n(0, n_real)
    rng = np.random.default_rng(seed)
    extra = rng.standard_normal((total - n_real, vecs.shape[1]), dtype=np.float32)
    extra /= np.linalg.norm(extra, axis=1, keepdims=True)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(vecs)
    index.add(extra)
    faiss.write_index(index, str(partial / store.INDEX_FILE))
    # rows are passages and the doc store holds documents: a real document split into passages keeps its
    # spans, and each synthetic passage is a whole document of its own (one row, passage 0)
    real_ids = store.read_docids(real)
    pmap = store.PassageMap.load(real, real_ids)
    doc_ids = pmap.doc_ids if pmap is not None else real_ids
    docs = store.DocStore(real, doc_ids)
    sents = _sentences()
    pick = random.Random(seed)
    writer = store.DocStoreWriter(partial)
    ids = list(real_ids)
    spans = [] if pmap is None else [[int(pmap.doc[r]), int(pmap.n[r]), int(pmap.start[r]), int(pmap.end[r])]
                                     for r in range(n_real)]  # fmt: skip
    langs: dict[str, int] = {}
    for row in range(len(doc_ids)):
        d = docs.get_row(row)
        writer.add(d)
        langs[d.get("lang") or "unknown"] = langs.get(d.get("lang") or "unknown", 0) + 1
    for i in range(total - n_real):
        parts = [sents[pick.randrange(len(sents))] for _ in range(pick.randint(2, 4))]
        lang = parts[0][0]
        text = " ".join(s for _, s in parts)
        writer.add({"doc_id": f"syn-{i}", "text": text, "lang": lang})
        ids.append(f"syn-{i}")
        if pmap is not None:
            spans.append([len(doc_ids) + i, 0, 0, len(text)])
        langs[lang] = langs.get(lang, 0) + 1
    writer.close()
    store.write_docids(partial / store.DOCID_FILE, ids)
    if pmap is not None:
        store.atomic_save_npy(partial / store.PASSAGES_FILE, np.asarray(spans, dtype=np.int64))
    manifest = dict(real_manifest)
    manifest.update(
        num_docs=len(doc_ids) + total - n_real,
        num_passages=total,
        doc_langs=langs,
        collection=f"{real_manifest.get('collection')} + {total - n_real} synthetic passages (random unit vectors)",
        bench_recipe=recipe,
        created=store.now_iso(),
    )
    store.write_manifest(partial, manifest)
    swap_into_place(partial, out)
    return out


def lucene_docs(index_dir: Path, out: Path) -> Path:
    """A Lucene index of the same documents (raw JSON stored): Pyserini's REST server fetches every hit's
    text from one (its `base_index`)."""
    if (out / "segments_1").exists() or any(out.glob("segments_*")):
        return out
    from clir.index import store

    jsonl_dir = out.with_name(out.name + ".jsonl")
    jsonl_dir.mkdir(parents=True, exist_ok=True)
    ids = store.read_docids(index_dir)
    pmap = store.PassageMap.load(index_dir, ids)
    ids = pmap.doc_ids if pmap is not None else ids
    docs = store.DocStore(index_dir, ids)
    with open(jsonl_dir / "docs.jsonl", "w", encoding="utf-8") as f:
        for row, doc_id in enumerate(ids):
            d = docs.get_row(row)
            f.write(json.dumps({"id": doc_id, "contents": d["text"]}, ensure_ascii=False) + "\n")
    cmd = [sys.executable, "-m", "pyserini.index.lucene", "--collection", "JsonCollection", "--input",
           str(jsonl_dir), "--index", str(out), "--generator", "DefaultLuceneDocumentGenerator", "--threads", "2",
           "--storeRaw"]  # fmt: skip
    log.info("building the Lucene document index %s", out)
    subprocess.run(cmd, check=True, env=_java_env(), stdout=subprocess.DEVNULL)
    shutil.rmtree(jsonl_dir)
    return out


def _java_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("JAVA_HOME", JAVA_HOME)
    env.setdefault("OPENAI_API_KEY", "x")  # pyserini imports its OpenAI encoders at import time
    env.setdefault(
        "OMP_WAIT_POLICY", "PASSIVE"
    )  # what `clir serve` sets for itself; the same for every server
    return env


# ---------------------------------------------------------------------------------------------- Pyserini
def run_pyserini_server(index_dir: str, docs_dir: str, port: int) -> None:
    """Pyserini 1.6.0's REST app (`pyserini.server.rest.app:app`, its routes and SearchController) with our
    FAISS index registered under an alias. Its own entry point cannot do this; three shims are needed:

    1. `pyserini.encode.optional._uniir` (M-BEIR image+text encoders) is imported by the controller but
       needs `uniir-for-pyserini`, whose releases need Python >= 3.12 or pull torchvision/timm/fairscale/
       opencv: a placeholder module stands in (that multimodal path is never used here);
    2. the controller opens the prebuilt `msmarco-v1-passage` Lucene index at import (a 2 GB download; this
       machine is offline): `LuceneSearcher.from_prebuilt_index` answers None for it, and resolves our
       document alias to the local Lucene folder (as a downloaded prebuilt index would, minus the download);
    3. the server only knows prebuilt index names and builds query encoders from a name alone
       (`AutoQueryEncoder(encoder_dir=...)`: CLS pooling, no prefix, no normalisation — not e5's settings):
       the alias is registered in the controller with a `FaissSearcher` whose QueryEncoder is clir's encoder
       from the index manifest (same weights, settings and bf16 autocast as `clir serve`).
    Everything else (routing, validation, the search and document-fetch code) is Pyserini's."""
    import types

    for k, v in _java_env().items():
        os.environ.setdefault(k, v)
    sys.modules["pyserini.encode.optional._uniir"] = types.SimpleNamespace(UniIRQueryEncoder=None)
    import uvicorn
    from pyserini.encode import QueryEncoder
    from pyserini.search.faiss import FaissSearcher
    from pyserini.search.lucene import LuceneSearcher

    docs_alias = f"{ALIAS}-docs"
    original = LuceneSearcher.from_prebuilt_index.__func__

    def from_prebuilt_index(cls, name, verbose=False):
        if name == docs_alias:
            return cls(docs_dir)
        if name == "msmarco-v1-passage":
            return None
        return original(cls, name, verbose)

    LuceneSearcher.from_prebuilt_index = classmethod(from_prebuilt_index)
    from pyserini.server.models import IndexConfig
    from pyserini.server.rest.app import app
    from pyserini.server.search_controller import get_controller

    from clir.index import store
    from clir.model import load_encoder

    spec = store.read_manifest(index_dir)["model"]
    encoder = load_encoder(spec["source"], spec["config"])

    from concurrent.futures import ThreadPoolExecutor

    # The encoder runs in one worker thread, as in `clir serve`: on this oversubscribed 2-core machine torch's
    # OpenMP regions are several times slower on the main thread than on a worker thread, which would charge
    # Pyserini for a machine quirk. The call still blocks the event loop, as Pyserini's async route does.
    pool = ThreadPoolExecutor(1)

    class ClirQueryEncoder(QueryEncoder):
        def __init__(self) -> None:
            super().__init__(None)
            self.has_model = True

        def encode(self, query: str, **_: Any) -> np.ndarray:
            return pool.submit(encoder.encode_queries, [query], lang="en").result()[0]

    controller = get_controller()
    controller.indexes[ALIAS] = IndexConfig(
        name=ALIAS,
        searcher=FaissSearcher(index_dir, ClirQueryEncoder()),
        index_type="faiss",
        base_index=docs_alias,
    )
    controller.indexes[docs_alias] = IndexConfig(
        name=docs_alias, searcher=LuceneSearcher(docs_dir), index_type="tf"
    )
    uvicorn.run(app, host="127.0.0.1", port=port)  # Pyserini's main() binds 0.0.0.0; loopback here


# ---------------------------------------------------------------------------------------------- servers
class Server:
    """A server child process on a free loopback port (the server picks it: port 0, read from its log)."""

    def __init__(self, name: str, cmd: list[str], search_path: str, body: Any, log_path: Path) -> None:
        self.name, self.cmd, self.search_path, self.body = name, cmd, search_path, body
        self.log_path = log_path
        self.url: str | None = None
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 600) -> Server:
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_java_env(),
            cwd=common.REPO,
        )
        found = threading.Event()
        logf = open(self.log_path, "w", encoding="utf-8")

        def pump() -> None:
            for line in self.proc.stdout:
                logf.write(line)
                m = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line)
                if m and not found.is_set():
                    self.url = m.group(1)
                    found.set()
            logf.close()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.time() + timeout
        while not found.wait(0.5):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{self.name} did not start; see {self.log_path}")
        import httpx

        while time.time() < deadline:  # ready: one real search answered
            try:
                r = httpx.post(self.url + self.search_path, json=self.body("warm up"), timeout=60)
                if r.status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} never answered a search; see {self.log_path}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def clir_server(index_dir: Path, name: str, extra: list[str], logs: Path) -> Server:
    cmd = [sys.executable, "-m", "clir", "serve", "--index", f"{ALIAS}={index_dir}", "--host", "127.0.0.1",
           "--port", "0", *extra]  # fmt: skip
    return Server(name, cmd, "/search", lambda q: {"query": q, "k": 10}, logs / f"{name}.log")


def pyserini_server(index_dir: Path, docs_dir: Path, logs: Path) -> Server:
    cmd = [sys.executable, "-m", "eval.bench.serve_load", "--pyserini-server", str(index_dir), str(docs_dir)]
    return Server(
        "pyserini",
        cmd,
        f"/v1/indexes/{ALIAS}/search",
        lambda q: {"query": q, "hits": 10},
        logs / "pyserini.log",
    )


def top_ids(server: Server, body: dict) -> list[str]:
    import httpx

    if getattr(server, "client", None) is None:  # one connection: a fresh httpx client costs ~0.1-0.3 s
        server.client = httpx.Client(timeout=120)
    r = server.client.post(server.url + server.search_path, json=body)
    r.raise_for_status()
    data = r.json()
    hits = data.get("hits") if "hits" in data else data["candidates"]
    return [h.get("doc_id") or h.get("docid") for h in hits]


# ---------------------------------------------------------------------------------------------- load
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
        f"errors {r['errors']}  (slices: {r['slice_rps']} req/s; steal {_pct(r.get('steal'))})"
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


# ---------------------------------------------------------------------------------------------- report
NOTES = [
    "- `clir serve`: default settings: micro-batching on, two encoder lanes (`--lanes`, "
    "`clir.serve.batching.MicroBatcher`): replicas of the encoder sharing its weights, each with its own "
    "worker thread (at a lower priority than the event loop), running one thread each while the other is busy "
    "or its batch is small, and all threads when alone with 16 queries or more; a lane that "
    "comes free while the other works waits (at most 20 ms) for as many queries as the busy lane holds, then "
    "for arrivals to pause for 8 ms, so that it does not take one query alone or cut clients off, and takes at most an even share of the waiting and running queries. Within a "
    "micro-batch, one packed encoder forward (`clir.model.packing`: the queries end to end in one row, "
    "attention per query, no padding), so every answer matches `clir search --query` (exactness columns). `one lane`: `--lanes 1`, the previous default (one encoder on all threads). `no "
    "micro-batching`: each request encodes and searches on its own (`--no-micro-batching`; the encoder lock "
    "serialises encoding). Every `clir serve` freezes its start-up objects out of the GC's full passes.",
    "- Pyserini: its REST app (`pyserini.server.rest.app:app`: routes, validation, `SearchController.search` "
    "and document fetch), run by uvicorn on 127.0.0.1, with our index registered under an alias. Pyserini 1.6.0 "
    "cannot do that by itself: its server only knows prebuilt index names, builds query encoders from a name "
    "(`AutoQueryEncoder(encoder_dir=...)`: CLS pooling, no prefix, no normalisation, not e5's settings), imports "
    "the M-BEIR encoders (`uniir-for-pyserini`: Python >= 3.12 or torchvision/timm/fairscale/opencv) and opens the "
    "prebuilt msmarco-v1-passage index at import (a 2 GB download; offline here). `run_pyserini_server` stubs the "
    "M-BEIR module, answers None for msmarco-v1-passage, maps the document alias to a local Lucene index of the "
    "same passages (built with `pyserini.index.lucene --storeRaw`), and registers a `FaissSearcher` over the same "
    "FAISS file whose QueryEncoder is clir's encoder from the index manifest (same weights, settings, bf16), "
    "called in a worker thread as in clir (torch's OpenMP was much slower on the main thread when the machine "
    "was oversubscribed).",
    "- What made the difference this time (2026-12-04): (1) packed encoding (`clir.model.packing`): a "
    "micro-batch's queries run as one forward, their tokens end to end in one row with positions restarting "
    "per query, no padding and no mask, and attention computed per query (one SDPA call per run of "
    "equal-length queries); before, one forward per padded width, 2-4 a micro-batch, each ~20 ms beyond its "
    "tokens. 16 random xquad-r questions on one thread, 60 batches alternating (same encoder, no row "
    "blocks): packed p50 56 ms (p10-p90 52-62), padded widths 78 ms (65-91). A model whose attention cannot "
    "be split per query (eager attention, a mask) is probed once and encoded padded. (2) Row blocks "
    "(`clir.model.rowblocks`): on this CPU oneDNN's bf16 AMX kernels round a 1536-wide product (e5-small's "
    "FFN output) by its row count (33-383 rows differ from 32 or fewer), so a query's vector in a batch "
    "differed from the CLI's by up to 7.6e-4 per component, padded widths and packed alike, and at 32 "
    "clients only 260/299 top-10s equalled `clir search --query` (a first run today: 220.8 req/s, p99 247 "
    "ms, 87% exact). Query-side products of shapes that need it now run in blocks of at most 32 rows, "
    "measured once per shape at start-up (0.38 s for e5-small): vectors alone and batched are equal bit "
    "for bit again (max score difference 1e-6, FAISS's summation order), at 66 instead of 56 ms a 16-query "
    "batch, 213 instead of 221 req/s at 32 clients here and 273 instead of 292 on xquad-r/de "
    "(`--acceptance`, one run each). The in-process ceiling pays more (batches of 64 queries: 228 q/s "
    "against 310 unblocked at 32 clients; the server reaches 69% of the unblocked figure). Passages are "
    "encoded without blocks (within bf16 rounding of their batch). (3) The machine: this session's VM is "
    "an Intel Xeon with AMX (earlier rows of this file: AMD EPYC, AVX512-BF16). oneDNN runs bf16 products "
    "on AMX tiles, ~3x its AVX512-BF16 kernels here (a 16-query packed batch: 158 ms with "
    "`ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16`, ~50 ms without), so every absolute figure rose: compare ratios "
    "to the ceiling, not req/s across the two machines.",
    "- The session before (2026-12-03, AMD EPYC): (1) `clir serve` freezes what start-up made (`gc.freeze()` once "
    "the indexes are loaded: ~470,000 objects from torch, transformers, FastAPI and the index). Every full "
    "pass of Python's cyclic GC walked them all holding the GIL, ~300 ms, every ~20 s at 32 clients, and "
    "stalled every request in flight: a GC callback timed the passes at 301-315 ms, at the moments all 32 "
    "clients' latencies jumped to ~550 ms together. Frozen, a full pass takes ~1 ms, and the longest time a "
    "request spent outside its route fell from 332 to 24 ms (one 40 s run each, xquad-r/de). The in-process "
    "ceiling's process freezes likewise. (2) A lane that comes free while another works waits, at most 20 ms, "
    "for as many queries as the busy lane holds (the clients one batch answers at this load), then for an "
    "8 ms pause in arrivals (before: only a 3 ms pause, which a stall of a few ms ended early, leaving the "
    "clients cut off to wait a whole batch more). A/B on xquad-r/de at 32 clients, 10 s slices in turn on a "
    "quiet machine: 3 ms pause 148 / 161 / 152 / 147 req/s, p99 383 / 302 / 440 / 360 ms; 8 ms 161 / 160 / "
    "158 / 163 req/s, p99 289 / 468 / 268 / 265 ms. (3) httptools and uvloop (uvicorn picks them up when "
    "installed): the HTTP path alone (this app and index, answers cached, no encoder) costs 0.45 CPU-ms a "
    "request against 0.72 with h11 on asyncio (1,728 against 1,144 req/s on one core).",
    "- Two sessions before: (1) FAISS Flat search of small batches (eval/bench/flat_search.py, "
    "section *Flat search of small batches*): FAISS compares queries x dimension, not queries, with "
    "`distance_compute_blas_threshold`; clir had set it to 20, so every search, one query included, took "
    "BLAS (~35 ms over 100k x 384 vectors for up to 8 queries, against ~10 ms for FAISS's per-query loop "
    "at one query); now the loop below 4 queries, on one thread when a call has fewer queries than its few "
    "threads. (2) A lane alone uses all threads only for batches of 16 or more (one query: 30 ms on one "
    "thread, 50 on two). Together: 1 client 24-26 req/s against 17.7. (3) Lane threads run at nice +10, so "
    "the event loop does not queue for a core behind two busy lanes (+6-8% at 32 clients).",
    "- Earlier steps: (1) two encoder lanes of one thread each (in-process, 100k index: 95 / 140 / 168 q/s at "
    "8 / 16 / 32 queries a lane, against 62 / 92 / 131 for one lane of 2 threads at 16 / 32 / 64), a free lane "
    "waiting for arrivals to pause while the other works (before: batches alternating 14-17 and 1-2 at 32 "
    "clients), and even shares (before: lanes settled at 8 and 18 queries; 114 against 91 req/s at 32 "
    "clients); the second lane costs ~40 MiB; vectors were bit-identical across lanes and thread counts (AVX512-BF16). "
    "(2) Batches of one padded width: under bf16 a vector's rounding depends on the width it was padded to, "
    "not measurably on its batch neighbours (max difference 0.0 over 128 e5 queries alone vs in batches), so "
    "answers equal the CLI's exactly on that CPU (before: 154/171 at 32 clients, 90%), at 3-4 encoder "
    "calls per micro-batch (replaced by packing, above). (3) FAISS Flat through BLAS for micro-batches (FAISS's own threshold keeps up to 333 "
    "queries at 384-d on its per-query loop): a 32-query search over 100k vectors went from 121 to ~40 ms.",
    "- Load generator: aiohttp since the previous run. httpx's async client took 0.18 of the 2 cores at 32 clients "
    "(aiohttp: 0.03, the *client cores* column), CPU the server then lacked and the in-process ceiling never "
    "had to share.",
    "- Fairness: contenders take turns in slices (duration / rounds seconds each, warm-up before each), so "
    "changes in the machine's load hit all of them alike; the per-slice rates are in "
    "eval/bench/results/serve_load.json.",
    "- OpenMP: every server runs with `OMP_WAIT_POLICY=PASSIVE` (`clir serve` sets it for itself unless the "
    "environment says otherwise). With the default spinning policy on these shared cores, an earlier 60 s run "
    "gave clir serve 16.8 / 36.5 / 31.2 req/s and Pyserini 4.4 / 2.5 / 1.0 req/s at 1 / 8 / 32 clients: "
    "spinning OpenMP threads of torch and FAISS (two runtimes per process) starve the thread that has work, "
    "worst where work hops between threads. Also measured under spinning: Starlette's `run_in_threadpool` made "
    "one client 5-20x slower and a dedicated one-thread executor made 8 clients ~20x slower than asyncio's "
    "default executor. Under passive waiting, lanes' dedicated threads are not slower (1 client: `clir serve` "
    "and `one lane` within run-to-run noise).",
    "- Pyserini's server design: its `async` route runs the whole search synchronously on the event loop, so "
    "requests are served one at a time (concurrency only queues them; no batching), and for every hit "
    "`get_document` reopens the Lucene document index (`LuceneSearcher.from_prebuilt_index`), ten opens per "
    "query. It takes no query language (adapter routing) and no per-request encoder choice.",
]


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


def _ticked(ask: Any, command: str) -> dict[str, Any]:
    """``ask(command)``'s answer with the machine's CPU ticks spent while it ran (``ticks``)."""
    before = common.cpu_ticks()
    out = ask(command)
    return {**out, "ticks": common.ticks_between(before, common.cpu_ticks())}


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def _cores(r: dict[str, Any], key: str) -> str:
    v = r.get(key)
    return "-" if v is None or v != v else f"{v:.2f}"


def report(results: dict[str, dict[int, dict]], meta: dict[str, Any], load_before: str) -> str:
    levels = sorted({c for r in results.values() for c in r})
    ceilings = {int(c): v for c, v in (meta.get("ceilings") or {}).items()}
    stability = {n: {int(c): v for c, v in per.items()} for n, per in (meta.get("stability") or {}).items()}
    rows = []
    for name, per in results.items():
        for c in levels:
            if c in per:
                r = per[c]
                ceil = ceilings.get(c, {}).get("qps")
                st = stability.get(name, {}).get(c)
                rows.append([name, c, r["rps"], f"{r['rps'] / ceil:.0%}" if ceil else "-", r["p50_ms"], r["p95_ms"],
                             r["p99_ms"], r["ok"], r["errors"], _cores(r, "server_cores"), _cores(r, "client_cores"),
                             _pct(r.get("steal")),
                             f"{st['top10_identical']}/{st['queries']}" if st and st["queries"] else "-",
                             f"{st['max_score_diff']:.1e}" if st and st["queries"] else "-"])  # fmt: skip
    out = [
        f"`python -m eval.bench.serve_load --duration {meta['duration']:g} --rounds {meta.get('rounds', 3)}`: "
        "POST a search (k=10, with text) "
        f"over HTTP on 127.0.0.1, {meta['duration']:g} s per level after {meta['warmup']:g} s warm-up, every "
        f"client sending its next request as soon as the last is answered (aiohttp, in the benchmark "
        f"process). Index: {meta['num_docs']:,} passages (Flat, 384-d): the {meta['n_real']:,} real xquad-r/de "
        f"passages with multilingual-e5-small vectors + synthetic passages (recombined sentences of the shared "
        f"collections) with random unit vectors; queries: the {meta['n_queries']:,} English xquad-r questions, "
        "shuffled. The servers run side by side and take turns per level. *Ceiling*: `Searcher.batch_search` "
        "(k=10, with text, batches of 64) over the same queries and index in its own process, in slices taken "
        "in turn with the servers' (eval/bench/serve_ceiling.py); *of ceiling* = req/s over the ceiling of the "
        "same level. *Batcher in-process*: `clir serve`'s micro-batcher and lanes in that process, the level's "
        "clients as coroutines in a closed loop, no HTTP (a slice each round): what the batching itself gives. *Top-10 = CLI*: queries whose first answer during the load equals `clir search --query` "
        f"(each of the first {meta.get('reference', 0)} queries searched alone in the ceiling process), and the "
        "largest score difference over the documents both lists hold. *Cores*: CPU seconds per second while "
        "measured, of the server process and of the benchmark process that runs the clients (2 cores here). "
        "*Steal*: the share of the machine's CPU time its hypervisor gave to other guests while measured "
        "(/proc/stat): cores a slice lost without any process here using them.",
        "",
        common.table(["level", "in-process ceiling q/s", "slices", "steal", "batcher in-process q/s", "p50 ms",
                      "p99 ms", "queries a batch", "steal"],
                     [[c, v["qps"], ", ".join(f"{x:g}" for x in v["slice_qps"]), _pct(v.get("steal")),
                       *((b["qps"], b["p50_ms"], b["p99_ms"], b["batch_mean"], _pct(b.get("steal")))
                         if (b := v.get("batcher")) else ["-"] * 5)]
                      for c, v in sorted(ceilings.items())])
        if ceilings else "",
        "",
        common.table(["server", "clients", "req/s", "of ceiling", "p50 ms", "p95 ms", "p99 ms", "ok", "errors",
                      "server cores", "client cores", "steal", "top-10 = CLI", "max score diff"], rows),
        "",
    ]  # fmt: skip
    base = "clir serve"
    ratio_rows = []
    for other in [n for n in results if n != base]:
        for c in levels:
            if c in results[base] and c in results[other]:
                a, b = results[base][c], results[other][c]
                ratio_rows.append(
                    [other, c, a["rps"] / b["rps"] if b["rps"] else float("nan"), a["p50_ms"] / b["p50_ms"],
                     a["p99_ms"] / b["p99_ms"]]
                )  # fmt: skip
    if ratio_rows:
        out += [
            f"Ratios `{base}` / other (throughput: higher is better for clir; latency: lower is better for clir):",
            "",
            common.table(["vs", "clients", "req/s ratio", "p50 ratio", "p99 ratio"], ratio_rows),
            "",
        ]
    out += [*meta.get("notes", []), "", *NOTES, "", meta.get("conditions") or common.conditions(load_before)]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--duration", type=float, default=30.0, help="measured seconds per server and level (default 30)"
    )
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each slice")
    p.add_argument("--rounds", type=int, default=3, help="slices per server and level, taken in turns")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--docs", type=int, default=100_000, help="passages in the load index")
    p.add_argument("--real-index", type=Path, default=WORK / "xquad-r-de-e5")
    p.add_argument("--index", type=Path, default=WORK / "bench-serve-100k")
    p.add_argument(
        "--servers",
        nargs="+",
        default=["clir", "clir-one-lane", "clir-unbatched"],
        choices=["clir", "clir-one-lane", "clir-unbatched", "pyserini"],
    )
    p.add_argument("--reference", type=int, default=300, help="queries compared with `clir search --query`")
    p.add_argument(
        "--no-write",
        action="store_true",
        help="print the section instead of writing RESULTS.md (its numbers: eval/results/serve_load-draft.json)",
    )
    p.add_argument("--acceptance", action="store_true", help="the issue's acceptance check on xquad-r/de")
    p.add_argument("--pyserini-server", nargs=2, metavar=("INDEX", "DOCS"), help=argparse.SUPPRESS)
    p.add_argument("--from-json", type=Path, help="re-render the section from a saved serve_load.json")
    args = p.parse_args(argv)
    if args.from_json:
        data = json.loads(args.from_json.read_text())
        results = {n: {int(c): r for c, r in per.items()} for n, per in data["results"].items()}
        text = report(results, data["meta"], data["load_before"])
        print(text) if args.no_write else common.write_section(SECTION, text)
        return 0
    if args.pyserini_server:
        logging.basicConfig(level=logging.INFO)
        run_pyserini_server(*args.pyserini_server, port=0)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    common.quiet_libraries()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    common.require_shared()
    if args.acceptance:
        return acceptance(args)
    load_before = common.load_avg()
    real = common.xquad_de_index(args.real_index)
    index = padded_index(real, args.index, args.docs)
    logs = common.REPO / "eval" / "results" / "serve_load"
    logs.mkdir(parents=True, exist_ok=True)
    queries = queries_of(common.XQUAD / "de")
    servers: list[Server] = []
    for name in args.servers:
        if name == "clir":
            servers.append(clir_server(index, "clir serve", [], logs))
        elif name == "clir-one-lane":
            servers.append(clir_server(index, "clir serve, one lane", ["--lanes", "1"], logs))
        elif name == "clir-unbatched":
            servers.append(clir_server(index, "clir serve, no micro-batching", ["--no-micro-batching"], logs))
        else:
            servers.append(
                pyserini_server(index, lucene_docs(index, index.with_name(index.name + "-lucene")), logs)
            )
    results: dict[str, dict[int, dict]] = {s.name: {} for s in servers}
    ceil = Ceiling(index, queries, logs, _java_env(), common.REPO)
    ceilings: dict[int, dict] = {}
    stability: dict[str, dict[int, dict]] = {s.name: {} for s in servers}
    agree = {}
    try:
        for s in servers:
            log.info("starting %s", s.name)
            s.start()
        ceil.start()
        reference = ceil.ask(f"reference {args.reference}")
        ref = servers[0]
        for s in servers[1:]:
            same = sum(top_ids(ref, ref.body(q)) == top_ids(s, s.body(q)) for q in queries[:50])
            agree[s.name] = same
            log.info("top-10 of %s equal to %s's for %d/50 queries", s.name, ref.name, same)
        for clients in args.clients:
            # each server gets --duration seconds per level, in --rounds slices taken in turns (A B C C B A
            # ...), so the load of other jobs on the machine spreads evenly over the contenders; the in-process
            # ceiling takes a slice of the same length before each round
            parts: dict[str, list[dict]] = {s.name: [] for s in servers}
            ceiling_runs, batcher_runs = [], []
            for r in range(args.rounds):
                ceiling_runs.append(_ticked(ceil.ask, f"ceiling {args.duration / args.rounds}"))
                batcher_runs.append(_ticked(ceil.ask, f"batcher {clients} {args.duration / args.rounds}"))
                for s in servers if r % 2 == 0 else list(reversed(servers)):
                    parts[s.name].append(
                        measure(s, queries, clients, args.duration / args.rounds, args.warmup)
                    )
            done = sum(c["queries"] for c in ceiling_runs)
            ceilings[clients] = {"qps": done / sum(c["seconds"] for c in ceiling_runs),
                                 "slice_qps": [round(c["qps"], 1) for c in ceiling_runs],
                                 **common.cpu_shares(common.add_ticks([c["ticks"] for c in ceiling_runs])),
                                 "batcher": merge_batcher(batcher_runs)}  # fmt: skip
            log.info("in-process ceiling %2d clients: %.1f q/s; clir's batcher in-process: %s", clients,
                     ceilings[clients]["qps"], ceilings[clients]["batcher"])  # fmt: skip
            for name, runs in parts.items():
                results[name][clients] = merge(runs)
                answers = {q: a for run in runs for q, a in run["answers"].items()}
                stability[name][clients] = compare(answers, reference)
                log.info("%-30s %2d clients: %s", name, clients, summary(results[name][clients]))
                log.info("   vs `clir search --query`: %s", stability[name][clients])
    finally:
        ceil.stop()
        for s in servers:
            s.stop()
    n_real = len(__import__("clir.index.store", fromlist=["x"]).read_docids(real))
    notes = [
        f"Top-10 agreement with `{servers[0].name}` on 50 queries: "
        + ", ".join(f"{k} {v}/50" for k, v in agree.items())
        + ".",
    ]
    meta = {"duration": args.duration, "rounds": args.rounds, "warmup": args.warmup, "num_docs": args.docs,
            "n_real": n_real, "n_queries": len(queries), "notes": notes,
            "conditions": common.conditions(load_before), "ceilings": ceilings, "stability": stability,
            "reference": args.reference}  # fmt: skip
    data = {"meta": meta, "results": results, "load_before": load_before}
    text = report(results, meta, load_before)
    if args.no_write:  # RESULTS.md's section and its JSON stay as they were; the numbers go to eval/results
        draft = common.save_json("serve_load-draft", data, common.REPO / "eval" / "results")
        log.info("wrote %s", draft)
        print(text)
    else:
        common.save_json("serve_load", data)
        common.write_section(SECTION, text)
        log.info("wrote %s", common.RESULTS)
    return 0


def acceptance(args: argparse.Namespace) -> int:
    """`clir serve` on the xquad-r/de e5-small index: POST /search top-10 equal to `clir search` (one query
    at a time, and the batched `--queries` run), then 32 clients for --duration seconds with 0 errors."""
    from clir.data import load_queries

    real = common.xquad_de_index(args.real_index)
    logs = common.REPO / "eval" / "results" / "serve_load"
    logs.mkdir(parents=True, exist_ok=True)
    queries = load_queries(str(common.XQUAD / "de"))
    qfile = logs / "queries.tsv"
    qfile.write_text("".join(f"{q.query_id}\t{q.text}\n" for q in queries), encoding="utf-8")
    out = subprocess.run(
        [sys.executable, "-m", "clir", "-q", "search", "--index", str(real), "--queries", str(qfile), "--json",
         "--k", "10"],
        capture_output=True, text=True, check=True, cwd=common.REPO,
    )  # fmt: skip
    batched = {qid: [h["doc_id"] for h in hits] for qid, hits in json.loads(out.stdout).items()}
    from clir.search import Searcher

    searcher = Searcher(real)  # what `clir search --query` runs, one query at a time

    def one_at_a_time() -> dict[str, list[str]]:
        return {q.query_id: [h.doc_id for h in searcher.search(q.text, 10)] for q in queries}

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:  # a worker thread: see run_pyserini_server on main-thread OpenMP
        single = pool.submit(one_at_a_time).result()
    server = clir_server(real, "clir serve", [], logs).start()
    try:
        served = {q.query_id: top_ids(server, {"query": q.text, "k": 10}) for q in queries}
        same_single = sum(served[q] == single[q] for q in single)
        same_batched = sum(served[q] == batched[q] for q in batched)
        same_sets = sum(set(served[q]) == set(batched[q]) for q in batched)
        log.info("top-10 equal to `clir search --query` (one at a time): %d/%d", same_single, len(single))
        log.info(
            "top-10 equal to `clir search --queries` (batched): %d/%d (same ten documents: %d)",
            same_batched, len(batched), same_sets,
        )  # fmt: skip
        res = merge([measure(server, [q.text for q in queries], 32, args.duration, args.warmup)])
        log.info("32 clients, %g s: %s", args.duration, summary(res))
    finally:
        server.stop()
    print(
        json.dumps(
            {"queries": len(single), "top10_equal_single": same_single, "top10_equal_batched": same_batched,
             "top10_same_set_batched": same_sets, "load_32_clients": res},
            indent=2,
        )
    )  # fmt: skip
    return 0 if same_single == len(single) and res["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
