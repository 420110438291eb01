"""Scoring a grid: ranx metrics of every row with a finished run, fusion rows made from their dense and BM25
runs, the rows of an arm's seeds pooled (mean +- sd), significance tests against the baseline, for the
document-adapter swap (d-target vs d-source) and for each control against its reference row, then the claims
(:mod:`clir.experiments.claims`) and the embedding analysis (:mod:`clir.experiments.explain`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from clir.config import to_dict
from clir.errors import ClirError
from clir.experiments.aggregate import arm_record, score_matrices
from clir.experiments.fusion import RunDict
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
    #: each control row against its reference row, per collection
    controls: list[dict[str, Any]] = field(default_factory=list)
    #: each claim of the config: its comparisons per question set, tested and Holm-corrected together
    claims: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------------- scoring
def _run_seconds(plan: Plan, row: GridRow) -> float | None:
    """Seconds the row's run took when it was computed (its index build included), from its marker."""
    if not row.kind.computed:
        return None
    try:
        info = read_json(plan.marker_path(row))
        return round(float(info.get("seconds", 0)) + float(info.get("index_seconds", 0)), 1)
    except (OSError, ClirError, AttributeError, TypeError, ValueError):
        return None


def score_grid(
    plan: Plan, *, command: str = "", computed: Sequence[str] = (), skipped: Sequence[str] = ()
) -> GridResult:
    """Metrics, significance and swap deltas of every grid row that has a finished run. Rows of one arm's
    seeds are pooled (mean +- sd, tests on seeds x queries); claims are tested across collections last."""
    from clir.experiments.claims import test_claims
    from clir.experiments.significance import compare_seeded, per_query_scores
    from clir.metrics import evaluate

    cfg = plan.config
    sig = cfg.significance
    result = GridResult(plan, [], [], list(computed), list(skipped), [], 0.0, command)
    matrices: dict[str, dict[str, Any]] = {}  # collection -> arm -> (seeds, {metric: seeds x queries})
    present_by: dict[str, tuple[list[GridRow], dict[str, Any], Any]] = {}
    for coll in plan.collections:
        runs, present = _collect_runs(plan, [r for r in plan.rows if r.collection is coll], result.missing)
        if not present:
            continue
        qrels = coll.collection().qrels()
        present_by[coll.name] = (present, runs, qrels)
        scores = {r.variant: evaluate(runs[r.variant], qrels, cfg.metrics) for r in present}
        per_query = {r.variant: per_query_scores(qrels, runs[r.variant], cfg.metrics) for r in present}
        arms = _arms(present)
        seeded = {
            a: (
                [r.model.seed if r.model else None for r in rs],
                score_matrices([per_query[r.variant] for r in rs], cfg.metrics),
            )
            for a, rs in arms.items()
        }
        matrices[coll.name] = {"qids": sorted(qrels), "arms": seeded}
        base = plan.baseline if plan.baseline in arms else None
        if base is None:
            result.notes.append(
                f"{coll.name}: the baseline {plan.baseline} has no finished run: no significance tests"
            )
        pairs = [(base, a) for a in arms if base and a != base]
        swap_pairs = _swap_pairs(arms)
        control_pairs = _control_pairs(plan, arms)
        all_pairs = list(dict.fromkeys(pairs + swap_pairs + control_pairs))
        tests = (
            compare_seeded(
                {a: m for a, (_seeds, m) in seeded.items()},
                cfg.metrics,
                pairs=all_pairs,
                tests=list(sig.tests),
                paired={p for p in all_pairs if _seed_paired(arms, *p)},
                max_p=sig.max_p,
                n_permutations=sig.n_permutations,
                n_resamples=sig.n_resamples,
                random_seed=sig.random_seed,
                correction=sig.correction,
            )
            if all_pairs
            else {}
        )
        for arm, rs in arms.items():
            rec = arm_record([_row_record(plan, r, runs, scores) for r in rs], cfg.metrics)
            rec["baseline"] = arm == base
            rec["significance"] = tests.get((base, arm)) if base and arm != base else None
            ctl = plan.controls.get(arm)
            rec["control"] = ctl.name if ctl is not None else None
            result.rows.append(rec)
        result.swaps += [_swap_record(plan, arms, a, b, result.rows, coll.name, tests) for a, b in swap_pairs]
        result.controls += [
            _control_record(plan, a, b, result.rows, coll.name, tests) for a, b in control_pairs
        ]
    if cfg.analysis.enabled:
        from clir.experiments.explain import analyse_grid

        result.analysis = analyse_grid(plan, present_by, result.rows, matrices)
    result.claims = test_claims(plan, matrices)
    return result


def _arms(present: list[GridRow]) -> dict[str, list[GridRow]]:
    """The collection's rows grouped by arm (seeds pooled), seeds in order."""
    out: dict[str, list[GridRow]] = {}
    for r in present:
        out.setdefault(r.arm_variant, []).append(r)
    for rs in out.values():
        rs.sort(key=lambda r: -1 if r.model is None or r.model.seed is None else r.model.seed)
    return out


def _seed_paired(arms: dict[str, list[GridRow]], a: str, b: str) -> bool:
    """Two arms' rows come from the same trained models, seed for seed (routings of one model)."""
    ra, rb = arms[a], arms[b]
    if len(ra) < 2 or len(ra) != len(rb):
        return False
    return all(x.model is not None and x.model is y.model for x, y in zip(ra, rb, strict=True))


def _collect_runs(
    plan: Plan, coll_rows: list[GridRow], missing: list[str]
) -> tuple[dict[str, RunDict], list[GridRow]]:
    """The finished runs of one collection's rows (fusion rows made now from their inputs' runs)."""
    runs: dict[str, RunDict] = {}
    present: list[GridRow] = []
    for r in coll_rows:
        run = r.kind.scored_run(plan, r, runs)
        if run is None:
            missing.append(r.id)
        else:
            runs[r.variant] = run
            present.append(r)
    return runs, present


def _swap_pairs(arms: dict[str, list[GridRow]]) -> list[tuple[str, str]]:
    """(d-source row, d-target or d-none row) of each madx arm and query routing with both runs."""
    out = []
    for a, rs in arms.items():
        r = rs[0]
        if r.kind.encodes and r.routing is not None and r.routing.doc == "source":
            for doc in ("target", "none"):  # the swap, and dropping the language adapter
                other = a.replace("_d-source", f"_d-{doc}")
                if other in arms:
                    out.append((a, other))
    return out


def _control_pairs(plan: Plan, arms: dict[str, list[GridRow]]) -> list[tuple[str, str]]:
    """(reference row, control row) of each control with an ``against`` row, both run on the collection."""
    out = []
    for variant, ctl in plan.controls.items():
        ref = (ctl.against or "").replace(":", "/")
        if variant in arms and ref in arms:
            out.append((ref, variant))
    return out


def _row_record(plan: Plan, r: GridRow, runs: dict[str, Any], scores: dict[str, Any]) -> dict[str, Any]:
    coll, v = r.collection, r.variant
    own = r.kind.record(r)
    return {
        "collection": coll.name,
        "source": coll.source,
        "lang": coll.doc_lang,
        "variant": v,
        "arm_variant": r.arm_variant,
        "kind": r.kind.name,
        "model": own["model"],
        "arm": own["arm"],
        "seed": r.model.seed if r.model else None,
        "mode": r.model.mode if r.model else None,
        "routing": to_dict(r.routing) if r.routing else None,
        "fusion": own["fusion"],
        "run": str(plan.run_path(r).relative_to(plan.out)),
        "queries": len(runs[v]),
        "seconds": _run_seconds(plan, r),
        "metrics": scores[v],
    }


def _delta(plan: Plan, rows: list[dict[str, Any]], coll: str, a: str, b: str) -> dict[str, float]:
    by = {r["variant"]: r["metrics"] for r in rows if r["collection"] == coll}
    return {m: by[b][m] - by[a][m] for m in plan.config.metrics}


def _swap_record(
    plan: Plan,
    arms: dict[str, list[GridRow]],
    a: str,
    b: str,
    rows: list[dict[str, Any]],
    coll: str,
    tests: dict,
) -> dict[str, Any]:
    ra = arms[a][0]
    assert ra.model is not None and ra.routing is not None
    return {
        "collection": coll,
        "lang": ra.collection.doc_lang,
        "model": ra.model.arm,
        "query_routing": ra.routing.query,
        "doc_routing": b.rsplit("d-", 1)[-1],
        "source": a,
        "target": b,
        "seeds": len(arms[a]),
        "delta": _delta(plan, rows, coll, a, b),
        "significance": tests.get((a, b)),
    }


def _control_record(
    plan: Plan, ref: str, variant: str, rows: list[dict[str, Any]], coll: str, tests: dict
) -> dict[str, Any]:
    ctl = plan.controls[variant]
    return {
        "collection": coll,
        "control": ctl.name,
        "note": ctl.note,
        "against": ref,
        "variant": variant,
        "delta": _delta(plan, rows, coll, ref, variant),
        "significance": tests.get((ref, variant)),
    }
