"""Flat search of small batches: FAISS's per-query loop against BLAS, and one thread against FAISS's split of
the database over threads (the choice behind clir.index.faiss_index.FLAT_SEQ_QUERIES and FEW_THREADS).

A server's micro-batches and `clir search --query` search a few queries at a time. FAISS picks its path from
queries x dimension against ``distance_compute_blas_threshold`` (128,000 in 1.15) and, with fewer queries than
threads, splits the database over threads. Synthetic unit vectors (timing does not depend on their values);
ms per search call, median of interleaved rounds, k=10.

    python -m eval.bench.flat_search                 # 100k x 384, 1 and 2 threads
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from functools import partial
from typing import Any

import numpy as np

from eval.bench import common

TITLE = "Flat search of small batches"
BATCHES = (1, 2, 3, 4, 8, 16, 32)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.bench.flat_search", description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=100_000, help="vectors in the index (default 100,000)")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import faiss

    from clir.index.faiss_index import FLAT_SEQ_QUERIES, search_threads, use_blas_for_flat

    load_before = common.load_avg()
    rng = np.random.default_rng(0)
    db = rng.standard_normal((args.size, args.dim)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    queries = db[: max(BATCHES)] + 0.3 * rng.standard_normal((max(BATCHES), args.dim)).astype(np.float32)
    index = faiss.IndexFlatIP(args.dim)
    index.add(db)
    use_blas_for_flat(args.dim)
    clir_threshold = faiss.cvar.distance_compute_blas_threshold

    def setup(threshold: int, one_thread: bool):
        def search(x: np.ndarray) -> Any:
            faiss.cvar.distance_compute_blas_threshold = threshold
            with search_threads(len(x)) if one_thread else contextlib.nullcontext():
                return index.search(x, 10)

        return search

    contenders = {
        "FAISS default (loop up to 333 queries)": setup(128_000, False),
        "BLAS always (clir before)": setup(1, False),
        f"clir: loop below {FLAT_SEQ_QUERIES} queries, one thread below the thread count": setup(
            clir_threshold, True
        ),
    }
    thread_counts = sorted({1, min(2, os.cpu_count() or 1)})
    ms: dict[str, dict[str, float]] = {}
    same = True
    before = faiss.omp_get_max_threads()
    try:
        for threads in thread_counts:
            faiss.omp_set_num_threads(threads)
            for n in BATCHES:
                x = queries[:n]
                runs = {name: partial(f, x) for name, f in contenders.items()}
                times = common.alternate(runs, rounds=args.rounds)
                ms[f"{threads}/{n}"] = {name: common.median(t) * 1e3 for name, t in times.items()}
                rows = [f(x)[1] for f in contenders.values()]
                same &= all(np.array_equal(rows[0], r) for r in rows[1:])
    finally:
        faiss.omp_set_num_threads(before)
        faiss.cvar.distance_compute_blas_threshold = clir_threshold
    names = list(contenders)
    table = common.table(
        ["threads", "queries", *names],
        [[*key.split("/"), *(f"{ms[key][n]:.1f}" for n in names)] for key in ms],
    )
    body = (
        f"{__doc__.split(chr(10) + chr(10))[1].strip()}\n\n{common.conditions(load_before)}\n\n"
        f"`python -m eval.bench.flat_search --size {args.size} --dim {args.dim} --rounds {args.rounds}`: "
        f"{args.size:,} x {args.dim}; ms per call. Same neighbours on every path: {'yes' if same else 'NO'}.\n\n"
        f"{table}\n"
    )
    print(body)
    if not args.no_write:
        common.save_json("flat_search", {"ms": ms, "same_rows": same, "size": args.size, "dim": args.dim})
        common.write_section(TITLE, body)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
