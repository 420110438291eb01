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
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

from eval.bench import common
from eval.bench.serve_ceiling import Ceiling, compare
from eval.bench.serve_clients import measure, merge, merge_batcher, queries_of, summary, ticked
from eval.bench.serve_index import padded_index
from eval.bench.serve_peers import (
    Server,
    clir_server,
    java_env,
    lucene_docs,
    pyserini_server,
    run_pyserini_server,
    top_ids,
)
from eval.bench.serve_report import report

log = logging.getLogger("serve_load")

SECTION = "REST serving"
WORK = common.REPO / "indexes"
#: --servers choices: (server name, extra `clir serve` flags); "pyserini" is Pyserini's REST app
CLIR_SERVERS = {
    "clir": ("clir serve", []),
    "clir-one-lane": ("clir serve, one lane", ["--lanes", "1"]),
    "clir-unbatched": ("clir serve, no micro-batching", ["--no-micro-batching"]),
}


def parser() -> argparse.ArgumentParser:
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
        choices=[*CLIR_SERVERS, "pyserini"],
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
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
    return compare_servers(args)


def logs_dir() -> Path:
    """Where the servers' logs (and the acceptance check's query file) go."""
    logs = common.REPO / "eval" / "results" / "serve_load"
    logs.mkdir(parents=True, exist_ok=True)
    return logs


def make_server(name: str, index: Path, logs: Path) -> Server:
    """The server a --servers choice names (Pyserini's gets a Lucene index of the same documents)."""
    if name in CLIR_SERVERS:
        label, extra = CLIR_SERVERS[name]
        return clir_server(index, label, extra, logs)
    return pyserini_server(index, lucene_docs(index, index.with_name(index.name + "-lucene")), logs)


def compare_servers(args: argparse.Namespace) -> int:
    """The benchmark proper: every server under every --clients level, in slices taken in turns with the
    in-process ceiling; writes the section (or prints it, with the numbers in eval/results)."""
    from clir.index import store

    load_before = common.load_avg()
    real = common.xquad_de_index(args.real_index)
    index = padded_index(real, args.index, args.docs)
    logs = logs_dir()
    queries = queries_of(common.XQUAD / "de")
    servers = [make_server(name, index, logs) for name in args.servers]
    results: dict[str, dict[int, dict]] = {s.name: {} for s in servers}
    ceil = Ceiling(index, queries, logs, java_env(), common.REPO)
    ceilings: dict[int, dict] = {}
    stability: dict[str, dict[int, dict]] = {s.name: {} for s in servers}
    try:
        for s in servers:
            log.info("starting %s", s.name)
            s.start()
        ceil.start()
        reference = ceil.ask(f"reference {args.reference}")
        agree = agreement(servers, queries)
        for clients in args.clients:
            ceilings[clients] = level(args, servers, ceil, queries, clients, reference, results, stability)
    finally:
        ceil.stop()
        for s in servers:
            s.stop()
    notes = [
        f"Top-10 agreement with `{servers[0].name}` on 50 queries: "
        + ", ".join(f"{k} {v}/50" for k, v in agree.items())
        + ".",
    ]
    meta = {"duration": args.duration, "rounds": args.rounds, "warmup": args.warmup, "num_docs": args.docs,
            "n_real": len(store.read_docids(real)), "n_queries": len(queries), "notes": notes,
            "conditions": common.conditions(load_before), "ceilings": ceilings, "stability": stability,
            "reference": args.reference}  # fmt: skip
    write({"meta": meta, "results": results, "load_before": load_before}, args.no_write)
    return 0


def agreement(servers: list[Server], queries: list[str]) -> dict[str, int]:
    """Per server after the first: of the first 50 queries, how many get the first server's top-10."""
    agree = {}
    ref = servers[0]
    for s in servers[1:]:
        same = sum(top_ids(ref, ref.body(q)) == top_ids(s, s.body(q)) for q in queries[:50])
        agree[s.name] = same
        log.info("top-10 of %s equal to %s's for %d/50 queries", s.name, ref.name, same)
    return agree


def level(
    args: argparse.Namespace,
    servers: list[Server],
    ceil: Ceiling,
    queries: list[str],
    clients: int,
    reference: dict[str, Any],
    results: dict[str, dict[int, dict]],
    stability: dict[str, dict[int, dict]],
) -> dict[str, Any]:
    """One --clients level: each server's row and exactness go into ``results`` and ``stability``; returns
    the level's in-process ceiling."""
    # each server gets --duration seconds per level, in --rounds slices taken in turns (A B C C B A
    # ...), so the load of other jobs on the machine spreads evenly over the contenders; the in-process
    # ceiling takes a slice of the same length before each round
    parts: dict[str, list[dict]] = {s.name: [] for s in servers}
    ceiling_runs, batcher_runs = [], []
    for r in range(args.rounds):
        ceiling_runs.append(ticked(ceil.ask, f"ceiling {args.duration / args.rounds}"))
        batcher_runs.append(ticked(ceil.ask, f"batcher {clients} {args.duration / args.rounds}"))
        for s in servers if r % 2 == 0 else list(reversed(servers)):
            parts[s.name].append(measure(s, queries, clients, args.duration / args.rounds, args.warmup))
    done = sum(c["queries"] for c in ceiling_runs)
    ceiling = {"qps": done / sum(c["seconds"] for c in ceiling_runs),
               "slice_qps": [round(c["qps"], 1) for c in ceiling_runs],
               **common.cpu_shares(common.add_ticks([c["ticks"] for c in ceiling_runs])),
               "batcher": merge_batcher(batcher_runs)}  # fmt: skip
    log.info("in-process ceiling %2d clients: %.1f q/s; clir's batcher in-process: %s", clients,
             ceiling["qps"], ceiling["batcher"])  # fmt: skip
    for name, runs in parts.items():
        results[name][clients] = merge(runs)
        answers = {q: a for run in runs for q, a in run["answers"].items()}
        stability[name][clients] = compare(answers, reference)
        log.info("%-30s %2d clients: %s", name, clients, summary(results[name][clients]))
        log.info("   vs `clir search --query`: %s", stability[name][clients])
    return ceiling


def write(data: dict[str, Any], no_write: bool) -> None:
    """The section into RESULTS.md and its numbers into eval/bench/results; with ``no_write`` the section is
    printed and its numbers go to eval/results (RESULTS.md's section and its JSON stay as they were)."""
    text = report(data["results"], data["meta"], data["load_before"])
    if no_write:
        draft = common.save_json("serve_load-draft", data, common.REPO / "eval" / "results")
        log.info("wrote %s", draft)
        print(text)
    else:
        common.save_json("serve_load", data)
        common.write_section(SECTION, text)
        log.info("wrote %s", common.RESULTS)


def acceptance(args: argparse.Namespace) -> int:
    """`clir serve` on the xquad-r/de e5-small index: POST /search top-10 equal to `clir search` (one query
    at a time, and the batched `--queries` run), then 32 clients for --duration seconds with 0 errors."""
    from clir.data import load_queries

    real = common.xquad_de_index(args.real_index)
    logs = logs_dir()
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
