"""Dense + sparse fusion with ranx: reciprocal rank fusion and min-max normalised CombSUM."""

from __future__ import annotations

import logging

from clir.errors import ClirError

log = logging.getLogger(__name__)

RunDict = dict[str, dict[str, float]]

#: method name -> ranx fusion method (CombSUM's inputs are min-max normalised first, see _min_max)
METHODS = {"rrf": "rrf", "combsum": "sum"}


def _min_max(run: RunDict) -> RunDict:
    """Per-query min-max normalisation; a query whose hits all score the same (e.g. BM25 matched one
    document) gives them 1, where ranx's own min-max would give 0 and drop that run's evidence."""
    out: RunDict = {}
    for q, hits in run.items():
        lo, hi = min(hits.values()), max(hits.values())
        out[q] = {d: (s - lo) / (hi - lo) if hi > lo else 1.0 for d, s in hits.items()}
    return out


def fuse_runs(runs: list[RunDict], method: str = "rrf", *, rrf_k: int = 60, k: int | None = None) -> RunDict:
    """Fuse ``runs`` over the queries they share; ``k`` keeps the top-k fused hits per query."""
    import warnings

    import ranx

    if method not in METHODS:
        raise ClirError(f"unknown fusion method {method!r} (known: {', '.join(METHODS)})")
    if len(runs) < 2:
        raise ClirError("fusion needs at least two runs")
    common = set.intersection(*(set(q for q, hits in r.items() if hits) for r in runs))
    dropped = set().union(*(set(r) for r in runs)) - common
    if dropped:
        log.warning("fusion: %d query(ies) missing from some run are left out of the fused run", len(dropped))
    if not common:
        raise ClirError("fusion: the runs share no query")
    shared = [{q: r[q] for q in sorted(common)} for r in runs]
    if method == "combsum":
        shared = [_min_max(r) for r in shared]
    ranx_runs = [ranx.Run(r) for r in shared]
    params = {"k": rrf_k} if method == "rrf" else None
    with warnings.catch_warnings():  # numba's uint64 -> int64 notice inside ranx's RRF: harmless here
        warnings.simplefilter("ignore")
        fused = ranx.fuse(runs=ranx_runs, norm=None, method=METHODS[method], params=params).to_dict()
    out: RunDict = {}
    for q, hits in fused.items():
        ranked = sorted(hits.items(), key=lambda x: (-x[1], x[0]))
        out[q] = dict(ranked[:k] if k else ranked)
    return out
