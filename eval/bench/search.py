"""Benchmark 3a: search, clir's ``Searcher`` vs Pyserini's ``FaissSearcher`` on the same FAISS index.

The index is xquad-r/de encoded with multilingual-e5-small (clir's folder: ``index`` + ``docid``, the layout
``FaissSearcher`` reads). Pyserini gets a ``QueryEncoder`` that wraps the same clir ``DualEncoder`` (so both
sides produce identical query vectors; Pyserini calls it one query at a time, as it does with its own
encoders), and, for reference, Pyserini's own ``AutoQueryEncoder`` on the same model folder (what a
Pyserini user would run: mean pooling, L2 norm, prefix ``query:``). Measured: batch throughput (queries/s
for a list of English queries, k=100, plus MRR@100) and single-query latency (k=10), contenders
alternating query by query.

    python -m eval.bench.search              # ~2-4 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from eval.bench import common

log = logging.getLogger(__name__)
TITLE = "Search: clir vs Pyserini"
INDEX = common.REPO / "indexes" / "xquad-r-de-e5"  # shared with serve_load (built once, reused)


def import_pyserini():
    """Pyserini needs a Java >= 21 and imports an OpenAI client that wants a key, even for dense search."""
    from clir.experiments.bm25 import DEFAULT_JAVA_HOME

    if not os.environ.get("JAVA_HOME") and Path(DEFAULT_JAVA_HOME).is_dir():
        os.environ["JAVA_HOME"] = DEFAULT_JAVA_HOME
    os.environ.setdefault("OPENAI_API_KEY", "x")
    from pyserini.encode import AutoQueryEncoder, QueryEncoder
    from pyserini.search.faiss import FaissSearcher

    return FaissSearcher, QueryEncoder, AutoQueryEncoder


def wrap_encoder(QueryEncoder, enc):
    """A Pyserini ``QueryEncoder`` over clir's encoder: Pyserini's interface is one query per call."""

    class ClirQueryEncoder(QueryEncoder):
        def __init__(self) -> None:
            super().__init__(None)
            self.has_model = True

        def encode(self, query: str, **_: Any) -> np.ndarray:
            return enc.encode_queries([query])[0]

    return ClirQueryEncoder()


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


@dataclasses.dataclass
class Peers:
    """The contenders over one index folder: clir's searcher, Pyserini's with clir's encoder wrapped, and
    (unless left out) Pyserini's with its own AutoQueryEncoder."""

    enc: Any
    searcher: Any
    py: Any
    py_auto: Any
    threads: int


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.bench.search", description=__doc__.split("\n")[0])
    p.add_argument("--queries", type=int, default=300, help="queries in the batch runs (default 300)")
    p.add_argument("--latency-queries", type=int, default=100, help="queries timed one by one (default 100)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--index", type=Path, default=INDEX)
    p.add_argument("--no-pyserini-encoder", action="store_true", help="skip Pyserini's own AutoQueryEncoder")
    p.add_argument("--no-write", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    common.quiet_libraries()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    common.require_shared()
    from clir.data import load_queries

    load_before = common.load_avg()
    peers = open_peers(args)
    queries = load_queries(str(common.XQUAD / "de"))
    step = max(1, len(queries) // args.queries)
    batch = queries[::step][: args.queries]
    res = batch_runs(peers, batch, args.rounds)
    lat_q = [q.text for q in queries[1::step][: args.latency_queries]]
    wall, cpu = latencies(peers, lat_q)
    res.update(wall_ms=wall, cpu_ms=cpu)
    body = render(args, peers, res, len(batch), len(lat_q), load_before)
    if not args.no_write:
        common.save_json("search", {**res, "machine": common.machine()})
    common.publish(TITLE, body, no_write=args.no_write)
    return 0


def open_peers(args: argparse.Namespace) -> Peers:
    from clir.search import Searcher

    enc = common.e5_encoder("auto")
    index_dir = common.xquad_de_index(args.index, enc)
    searcher = Searcher(index_dir, encoder=enc)
    FaissSearcher, QueryEncoder, AutoQueryEncoder = import_pyserini()
    py = FaissSearcher(str(index_dir), wrap_encoder(QueryEncoder, enc))
    py_auto = None
    if not args.no_pyserini_encoder:
        auto = AutoQueryEncoder(encoder_dir=str(common.E5_DIR), pooling="mean", l2_norm=True, prefix="query:")
        py_auto = FaissSearcher(str(index_dir), auto)
    return Peers(enc, searcher, py, py_auto, os.cpu_count() or 1)


def batch_runs(peers: Peers, batch: list[Any], rounds: int) -> dict[str, Any]:
    """Batch throughput (k=100) of every contender, alternating, with MRR@100 and top-10 agreement: the
    ``batch``, ``mrr``, ``same_top10`` and ``overlap10`` entries of search.json."""
    import faiss

    from clir.data import load_qrels
    from clir.metrics import evaluate

    enc, searcher, py, py_auto, threads = (
        peers.enc, peers.searcher, peers.py, peers.py_auto, peers.threads
    )  # fmt: skip
    texts = [q.text for q in batch]
    qids = [q.query_id for q in batch]
    qrels = {k: v for k, v in load_qrels(str(common.XQUAD / "de")).items() if k in set(qids)}

    runs: dict[str, dict[str, dict[str, float]]] = {}

    def clir_batch() -> None:
        faiss.omp_set_num_threads(threads)
        hits = searcher.batch_search(texts, k=100)
        runs["clir"] = {q: {h.doc_id: h.score for h in hs} for q, hs in zip(qids, hits, strict=True)}

    def py_batch() -> None:
        res = py.batch_search(texts, qids, k=100, threads=threads)
        runs["pyserini"] = {q: {h.docid: float(h.score) for h in hs} for q, hs in res.items()}

    def py_vectors() -> None:
        # the search layer alone: queries encoded by clir as batch_search does (batches of 64), then
        # Pyserini's batch_search on the vectors
        vecs = enc.encode_queries(texts, batch_size=64)
        res = py.batch_search(vecs, qids, k=100, threads=threads)
        runs["pyserini_vectors"] = {q: {h.docid: float(h.score) for h in hs} for q, hs in res.items()}

    def py_auto_batch() -> None:
        res = py_auto.batch_search(texts, qids, k=100, threads=threads)
        runs["pyserini_auto"] = {q: {h.docid: float(h.score) for h in hs} for q, hs in res.items()}

    contenders = {
        "clir Searcher.batch_search": clir_batch,
        "Pyserini FaissSearcher.batch_search (clir encoder wrapped)": py_batch,
        "Pyserini batch_search on vectors clir encoded in one batch": py_vectors,
    }
    if py_auto is not None:
        contenders["Pyserini FaissSearcher + its AutoQueryEncoder"] = py_auto_batch
    times = common.alternate(contenders, rounds=rounds, warmup=1)
    mrr = {
        name: evaluate(runs[key], qrels, ["mrr@100"])["mrr@100"]
        for name, key in zip(
            contenders, ["clir", "pyserini", "pyserini_vectors", "pyserini_auto"], strict=False
        )
    }

    def top10(run: dict[str, float]) -> list[str]:
        return [d for d, _ in sorted(run.items(), key=lambda x: -x[1])[:10]]

    # same vectors -> same ranking; per-query encoding (Pyserini's loop) pads differently from clir's
    # batches, which moves bf16 scores in the last digits and can swap near-ties
    same_top10 = float(np.mean([top10(runs["clir"][q]) == top10(runs["pyserini_vectors"][q]) for q in qids]))
    overlap10 = float(
        np.mean([len(set(top10(runs["clir"][q])) & set(top10(runs["pyserini"][q]))) / 10 for q in qids])
    )
    return {"batch": times, "mrr": mrr, "same_top10": same_top10, "overlap10": overlap10}


def latencies(peers: Peers, lat_q: list[str]) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Single-query latency (k=10), wall and process CPU ms per query, alternating query by query; the clir
    variant "per-call casts" is the encoder before its cached bf16 weight copies (DualEncoder.cache_casts),
    to show what that change gives."""
    import faiss

    enc, searcher, py, py_auto, threads = (
        peers.enc, peers.searcher, peers.py, peers.py_auto, peers.threads
    )  # fmt: skip
    single: dict[str, Any] = {
        "clir Searcher.search": lambda q: searcher.search(q, k=10),
        "clir, autocast casting weights per call": None,
        "Pyserini FaissSearcher.search (clir encoder wrapped)": lambda q: py.search(q, k=10, threads=threads),
    }
    if py_auto is not None:
        single["Pyserini FaissSearcher + its AutoQueryEncoder"] = lambda q: py_auto.search(
            q, k=10, threads=threads
        )

    def uncached(q: str):
        enc.cache_casts = False
        try:
            return searcher.search(q, k=10)
        finally:
            enc.cache_casts = True

    single["clir, autocast casting weights per call"] = uncached
    wall: dict[str, list[float]] = {k: [] for k in single}
    cpu: dict[str, list[float]] = {k: [] for k in single}
    for fn in single.values():
        for q in lat_q[:5]:
            fn(q)
    for i, q in enumerate(lat_q):
        names = list(single) if i % 2 == 0 else list(reversed(single))
        for name in names:
            faiss.omp_set_num_threads(threads)
            t, c = time.perf_counter(), time.process_time()
            single[name](q)
            wall[name].append((time.perf_counter() - t) * 1000)
            cpu[name].append((time.process_time() - c) * 1000)
    return wall, cpu


def render(
    args: argparse.Namespace, peers: Peers, res: dict[str, Any], n: int, n_lat: int, load_before: str
) -> str:
    """The section: the batch table and the single-query table."""
    times, mrr, wall, cpu = res["batch"], res["mrr"], res["wall_ms"], res["cpu_ms"]
    base_b = common.median(times["clir Searcher.batch_search"])
    rows_b = [
        [
            name,
            f"{n / common.median(ts):.1f}",
            common.spread([n / t for t in ts]),
            f"{common.median(ts) / base_b:.2f}x",
            f"{mrr[name]:.4f}",
        ]
        for name, ts in times.items()
    ]
    base_l = common.median(wall["clir Searcher.search"])
    rows_l = [
        [
            name,
            f"{common.median(wall[name]):.1f}",
            f"{percentile(wall[name], 95):.1f}",
            f"{np.mean(cpu[name]):.1f}",
            f"{common.median(wall[name]) / base_l:.2f}x",
        ]
        for name in wall
    ]
    searcher = peers.searcher
    return "\n".join(
        [
            f"Index: xquad-r/de ({searcher.num_docs:,} documents, {searcher.num_rows:,} passages, "
            "multilingual-e5-small, Flat inner product), the same folder opened by both; where a document was "
            "split into passages, clir ranks the document by its best passage (MaxP) and Pyserini ranks the "
            "passages, so their top-10s can differ where a second passage ranks. Query encoder: clir's `DualEncoder` for both (Pyserini through a "
            "`QueryEncoder` wrapper, which it calls per query), plus Pyserini's own `AutoQueryEncoder` on the "
            "same model folder for reference. English xquad-r queries; FAISS threads = "
            f"{peers.threads}. *clir is Nx faster* = the other's time over clir's.",
            "",
            common.conditions(load_before),
            "",
            f"**Batch** ({n} queries, k=100, {args.rounds} alternating rounds; MRR@100 on these queries; "
            f"Pyserini on clir's query vectors returns clir's exact top-10 for {100 * res['same_top10']:.0f}% of "
            f"queries; with the wrapped encoder called per query, top-10 overlap is {100 * res['overlap10']:.1f}%):",
            "",
            common.table(["searcher", "queries/s (median)", "runs", "clir is Nx faster", "MRR@100"], rows_b),
            "",
            f"**Single query** ({n_lat} queries, k=10, contenders alternating per query; CPU ms = "
            "process CPU time per query, steadier than wall time on a shared machine):",
            "",
            common.table(["searcher", "p50 ms", "p95 ms", "mean CPU ms", "vs clir p50"], rows_l),
            "",
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
