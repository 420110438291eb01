"""Scoring a grid: ranx metrics of every row with a finished run, fusion rows made from their dense and BM25
runs, significance tests against the baseline and for the document-adapter swap (d-target vs d-source)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from clir.config import Routing, to_dict
from clir.errors import ClirError
from clir.experiments.grid import GridRow, Plan
from clir.safe_load import read_json


@dataclass
class GridResult:
    plan: Plan
    rows: list[dict[str, Any]]
    swaps: list[dict[str, Any]]
    computed: list[str]
    skipped: list[str]
    missing: list[str]
    seconds: float
    command: str
    notes: list[str] = field(default_factory=list)
    #: the embedding analysis: ``{"rows": [...], "pairs": [...]}`` (empty when not enabled)
    analysis: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------- scoring
def _run_seconds(plan: Plan, row: GridRow) -> float | None:
    """Seconds the row's run took when it was computed (its index build included), from its marker."""
    if row.kind == "fusion":
        return None
    try:
        info = read_json(plan.marker_path(row))
        return round(float(info.get("seconds", 0)) + float(info.get("index_seconds", 0)), 1)
    except (OSError, ClirError, AttributeError, TypeError, ValueError):
        return None


def score_grid(
    plan: Plan, *, command: str = "", computed: Sequence[str] = (), skipped: Sequence[str] = ()
) -> GridResult:
    """Metrics, significance and swap deltas of every grid row that has a finished run."""
    from clir.experiments.significance import compare_runs
    from clir.metrics import evaluate

    cfg = plan.config
    sig = cfg.significance
    result = GridResult(plan, [], [], list(computed), list(skipped), [], 0.0, command)
    for coll in plan.collections:
        runs, present = _collect_runs(plan, [r for r in plan.rows if r.collection is coll], result.missing)
        if not present:
            continue
        qrels = coll.collection().qrels()
        scores = {r.variant: evaluate(runs[r.variant], qrels, cfg.metrics) for r in present}
        base = plan.baseline if plan.baseline in runs else None
        if base is None:
            result.notes.append(
                f"{coll.name}: the baseline {plan.baseline} has no finished run: no significance tests"
            )
        pairs = [(base, r.variant) for r in present if base and r.variant != base]
        swap_pairs = _swap_pairs(present, runs)
        all_pairs = list(dict.fromkeys(pairs + swap_pairs))
        tests = (
            compare_runs(
                qrels,
                runs,
                cfg.metrics,
                pairs=all_pairs,
                tests=list(sig.tests),
                max_p=sig.max_p,
                n_permutations=sig.n_permutations,
                random_seed=sig.random_seed,
                correction=sig.correction,
            )
            if all_pairs
            else {}
        )
        result.rows += [_row_record(plan, r, runs, scores, base, tests) for r in present]
        _analyse(plan, coll.name, present, runs, qrels, base, swap_pairs, result.analysis)
        result.swaps += [_swap_record(plan, present, a, b, scores, tests) for a, b in swap_pairs]
    return result


def _collect_runs(
    plan: Plan, coll_rows: list[GridRow], missing: list[str]
) -> tuple[dict[str, dict[str, dict[str, float]]], list[GridRow]]:
    """The finished runs of one collection's rows (fusion rows made now from their inputs' runs)."""
    from clir.experiments.fusion import fuse_runs
    from clir.search import Hit, read_trec_run, write_trec_run

    runs: dict[str, dict[str, dict[str, float]]] = {}
    present: list[GridRow] = []
    for r in coll_rows:
        if r.kind == "fusion":
            assert r.dense is not None
            bm = next(x for x in coll_rows if x.kind == "bm25")
            if r.dense.variant in runs and bm.variant in runs:
                fused = fuse_runs(
                    [runs[r.dense.variant], runs[bm.variant]],
                    r.method or "rrf",
                    rrf_k=plan.config.fusion.rrf_k,
                    k=plan.k,
                )
                results = {
                    q: [Hit(i + 1, d, s) for i, (d, s) in enumerate(h.items())] for q, h in fused.items()
                }
                write_trec_run(plan.run_path(r), results, tag=r.variant)
                runs[r.variant] = read_trec_run(plan.run_path(r))
                present.append(r)
            else:
                missing.append(r.id)
            continue
        if plan.is_done(r):
            runs[r.variant] = read_trec_run(plan.run_path(r))
            present.append(r)
        else:
            missing.append(r.id)
    return runs, present


def _swap_pairs(present: list[GridRow], runs: dict[str, Any]) -> list[tuple[str, str]]:
    """(d-source row, d-target or d-none row) of each madx query routing with both runs."""
    out = []
    for r in present:
        if r.kind == "dense" and r.model is not None and r.routing is not None and r.routing.doc == "source":
            for doc in ("target", "none"):  # the swap, and dropping the language adapter
                other = f"{r.model.name}/{Routing(r.routing.query, doc).label()}"
                if other in runs:
                    out.append((r.variant, other))
    return out


def _row_record(
    plan: Plan, r: GridRow, runs: dict[str, Any], scores: dict[str, Any], base: str | None, tests: dict
) -> dict[str, Any]:
    coll, v = r.collection, r.variant
    return {
        "collection": coll.name,
        "source": coll.source,
        "lang": coll.doc_lang,
        "variant": v,
        "kind": r.kind,
        "model": r.model.name if r.model else ("bm25" if r.kind == "bm25" else None),
        "mode": r.model.mode if r.model else None,
        "routing": to_dict(r.routing) if r.routing else None,
        "fusion": {"method": r.method, "dense": r.dense.variant} if r.kind == "fusion" and r.dense else None,
        "run": str(plan.run_path(r).relative_to(plan.out)),
        "queries": len(runs[v]),
        "seconds": _run_seconds(plan, r),
        "metrics": scores[v],
        "baseline": v == base,
        "significance": tests.get((base, v)) if base and v != base else None,
    }


def _swap_record(
    plan: Plan, present: list[GridRow], a: str, b: str, scores: dict[str, Any], tests: dict
) -> dict[str, Any]:
    ra = next(r for r in present if r.variant == a)
    assert ra.model is not None and ra.routing is not None
    return {
        "collection": ra.collection.name,
        "lang": ra.collection.doc_lang,
        "model": ra.model.name,
        "query_routing": ra.routing.query,
        "doc_routing": b.rsplit("d-", 1)[-1],
        "source": a,
        "target": b,
        "delta": {m: scores[b][m] - scores[a][m] for m in plan.config.metrics},
        "significance": tests.get((a, b)),
    }


def _analyse(
    plan: Plan,
    coll_name: str,
    present: list[GridRow],
    runs: dict[str, Any],
    qrels: Any,
    base: str | None,
    swap_pairs: list[tuple[str, str]],
    analysis: dict[str, Any],
) -> None:
    """The embedding analysis of the collection's rows that kept their vectors (into ``analysis``)."""
    vectors = {
        r.variant: str(plan.vectors_path(r))
        for r in present
        if plan.analyses(r) and plan.vectors_path(r).is_file()
    }
    if not vectors:
        return
    from clir.experiments.analysis import collection_analysis

    dense = [v for v in vectors if v != base]
    a_rows, a_pairs = collection_analysis(
        coll_name,
        vectors,
        runs,
        qrels,
        [(base, v) for v in dense if base in vectors] + swap_pairs,
        plan.config.primary,
        seed=plan.config.seed,
    )
    analysis.setdefault("rows", []).extend(a_rows)
    analysis.setdefault("pairs", []).extend(a_pairs)
