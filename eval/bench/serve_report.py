"""The "REST serving" section of RESULTS.md (eval.bench.serve_load): the tables of a run and the notes on
what was measured and what made the difference."""

from __future__ import annotations

from typing import Any

from eval.bench import common
from eval.bench.serve_clients import pct

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
                             pct(r.get("steal")),
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
                     [[c, v["qps"], ", ".join(f"{x:g}" for x in v["slice_qps"]), pct(v.get("steal")),
                       *((b["qps"], b["p50_ms"], b["p99_ms"], b["batch_mean"], pct(b.get("steal")))
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
