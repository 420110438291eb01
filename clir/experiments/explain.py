"""The embedding analysis of a grid: per row (each seed's), the geometry of :mod:`clir.experiments.analysis`
and the ranking measures of :mod:`clir.experiments.ranking`, pooled per arm (mean over seeds), then checked
against the metric: does each measure order the rows as the primary metric does (Kendall's tau), and where
does it fail.

Which vectors a ranking measure compares:
- translation pairs: on Tatoeba-like collections a query and its relevant document (an English sentence and its
  translation); on XQuAD-R collections (the question set of ``analysis.xquad_anchor``) the English sentences, as
  the same model encodes them in the anchor collection's row under the row's query routing (English text
  through the query side's adapter), against their aligned translations among the row's documents;
- neighbourhoods: the row's documents against the same documents of the model's ``d-source`` row;
- CKA: the model's per-layer hidden states of sampled documents, source adapter vs the row's document routing
  (``runs/<collection>__<model>.cka.json``, written by the runner)."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import numpy as np

from clir.experiments.aggregate import mean_sd
from clir.experiments.grid import GridRow, Plan

#: the measures checked against the metric, and the direction in which each should follow it
CHECKED = {
    "centroid_gap": -1,
    "alignment": -1,
    "sim_margin": 1,
    "pair_auc": 1,
    "neighbour_rho": 1,
    "cka_mean": 1,
}


@lru_cache(maxsize=8)
def _vectors(path: str) -> dict[str, np.ndarray]:
    from clir.experiments.analysis import load_vectors

    v = load_vectors(path)
    v["Q"], v["D"] = v["Q"].astype(np.float32), v["D"].astype(np.float32)
    return v


def _row_of(
    plan: Plan, coll: str, model: str, label: str | None, *, doc_only: bool = False
) -> GridRow | None:
    """The row of ``model`` on ``coll`` whose routing has ``label`` (``doc_only``: whose document side has
    it, whatever the query side) and kept its vectors."""
    for r in plan.rows:
        if r.collection.name == coll and r.model is not None and r.model.name == model:
            got = (r.doc_route if doc_only else r.routing.label()) if r.routing else None
            if got == label and plan.vectors_path(r).is_file():
                return r
    return None


def _pair_measures(plan: Plan, row: GridRow, v: dict[str, np.ndarray], qrels: dict) -> dict[str, float]:
    """Translation pairs of one row (see the module's docstring)."""
    from clir.experiments.analysis import relevant_pairs
    from clir.experiments.ranking import translation_scores, xquad_aligned

    a = plan.config.analysis
    anchor_coll = next((c for c in plan.collections if c.name == a.xquad_anchor), None)
    if anchor_coll is None or row.collection.spec.question_set != anchor_coll.spec.question_set:
        return translation_scores(v["Q"], v["D"], relevant_pairs(v, qrels))
    if not a.xquad_parallel or row.model is None:
        return {}
    r = row.routing
    # English text through the query side's adapter: the anchor collection's row with that document routing
    label = r.query if r is not None else None
    anchor = _row_of(plan, anchor_coll.name, row.model.name, label, doc_only=r is not None)
    if anchor is None or anchor is row:
        return {}
    av = _vectors(str(plan.vectors_path(anchor)))
    apos = {d: i for i, d in enumerate(av["doc_ids"].tolist())}
    dpos = {d: i for i, d in enumerate(v["doc_ids"].tolist())}
    pairs = []
    for lang in sorted({d.split("-", 1)[0] for d in dpos}):
        # English documents (the English collection under another routing): each sentence is its own pair
        same = [(x, x) for x in dpos if x.startswith("en-")]
        aligned = same if lang == "en" else list(xquad_aligned(a.xquad_parallel, "en", lang))
        pairs += [(apos[e], dpos[t]) for e, t in aligned if e in apos and t in dpos]
    return translation_scores(av["D"], v["D"], pairs) if pairs else {}


def _cka(plan: Plan, row: GridRow) -> dict[str, float]:
    if row.model is None or row.routing is None:
        return {}
    path = plan.cka_path(row.collection, row.model)
    if not path.is_file():
        return {}
    layers = json.loads(path.read_text("utf-8"))["routings"].get(row.routing.doc_label())
    return {"cka_mean": float(np.mean(layers)), "cka_last": float(layers[-1])} if layers else {}


def _neighbours(plan: Plan, row: GridRow, v: dict[str, np.ndarray]) -> dict[str, float]:
    from clir.experiments.ranking import neighbourhood_rho

    r = row.routing
    if row.model is None or r is None:
        return {}
    # document vectors do not depend on the query routing: any d-source row of the model will do
    ref = _row_of(plan, row.collection.name, row.model.name, "source", doc_only=True)
    if ref is None:
        return {}
    rv = _vectors(str(plan.vectors_path(ref)))
    if ref is row:
        return {"neighbour_rho": 1.0}
    if rv["doc_ids"].tolist() != v["doc_ids"].tolist():
        return {}
    n = plan.config.analysis.neighbour_docs
    return {"neighbour_rho": neighbourhood_rho(rv["D"], v["D"], n_anchors=n, seed=plan.config.seed)}


def analyse_grid(
    plan: Plan, present_by: dict[str, tuple[list[GridRow], dict, dict]], arm_rows: list[dict], matrices: dict
) -> dict[str, Any]:
    """Measures of every row that kept its vectors, pooled per arm, per-query wins/losses of each pair of
    arms the report compares, and each measure's agreement with the primary metric."""
    from clir.experiments.analysis import measure_row

    cfg = plan.config
    seed_rows = []
    for coll, (present, _runs, qrels) in present_by.items():
        for r in present:
            if not (plan.analyses(r) and plan.vectors_path(r).is_file()):
                continue
            path = str(plan.vectors_path(r))
            v = _vectors(path)
            m = measure_row(path, qrels, seed=cfg.seed)
            m.update(_pair_measures(plan, r, v, qrels))
            m.update(_neighbours(plan, r, v))
            m.update(_cka(plan, r))
            rec = {"collection": coll, "variant": r.variant, "arm_variant": r.arm_variant}
            seed_rows.append({**rec, "measures": {k: round(float(x), 5) for k, x in m.items()}})
    arms = _pool(seed_rows)
    metric = {(r["collection"], r["variant"]): r["metrics"][cfg.primary] for r in arm_rows}
    checks = {}
    from clir.experiments.ranking import measure_check

    for key, sign in CHECKED.items():
        points = [
            {
                "collection": a["collection"],
                "variant": a["variant"],
                "measure": a["measures"].get(key),
                "metric": metric[(a["collection"], a["variant"])],
            }
            for a in arms
            if (a["collection"], a["variant"]) in metric
        ]
        if any(p["measure"] is not None for p in points):
            checks[key] = {"sign": sign, **measure_check(points, sign=sign)}
    return {
        "rows": seed_rows,
        "arms": arms,
        "pairs": _wins_losses(plan, matrices),
        "checks": checks,
        "cka": _cka_layers(plan, list(present_by)),
    }


def _cka_layers(plan: Plan, collections: list[str]) -> list[dict]:
    """Per collection and madx arm: each document routing's per-layer CKA, averaged over the arm's seeds."""
    out = []
    for coll in (c for c in plan.collections if c.name in collections):
        by_arm: dict[str, list[dict]] = {}
        for m in plan.models:
            path = plan.cka_path(coll, m)
            if m.routes_languages and path.is_file():
                by_arm.setdefault(m.arm, []).append(json.loads(path.read_text("utf-8")))
        for arm, runs in by_arm.items():
            labels = list(dict.fromkeys(k for r in runs for k in r["routings"]))
            avg = {
                k: np.mean([r["routings"][k] for r in runs if k in r["routings"]], axis=0).round(4).tolist()
                for k in labels
            }
            out.append(
                {
                    "collection": coll.name,
                    "model": arm,
                    "seeds": len(runs),
                    "docs": runs[0]["docs"],
                    "routings": avg,
                }
            )
    return out


def _pool(seed_rows: list[dict]) -> list[dict]:
    """Each arm's measures: mean (and sd) over its seeds' rows."""
    by: dict[tuple[str, str], list[dict]] = {}
    for r in seed_rows:
        by.setdefault((r["collection"], r["arm_variant"]), []).append(r["measures"])
    out = []
    for (coll, arm), ms in by.items():
        keys = list(dict.fromkeys(k for m in ms for k in m))
        means, sds = {}, {}
        for k in keys:
            means[k], sd = mean_sd([m[k] for m in ms if k in m])
            if sd is not None:
                sds[k] = round(sd, 5)
        out.append(
            {
                "collection": coll,
                "variant": arm,
                "seeds": len(ms),
                "measures": {k: round(x, 5) for k, x in means.items()},
                "sd": sds,
            }
        )
    return out


def _wins_losses(plan: Plan, matrices: dict) -> list[dict]:
    """Per query (seed-averaged primary metric): how often the second row of each compared pair beats the
    first: every row against the baseline, the madx swaps and the controls."""
    from clir.experiments.analysis import wins_losses

    metric = plan.config.primary
    out = []
    for coll, data in matrices.items():
        arms = data["arms"]
        pairs = [(plan.baseline, a) for a in arms if a != plan.baseline and plan.baseline in arms]
        pairs += [
            (a, a.replace("_d-source", f"_d-{d}"))
            for a in arms
            if "_d-source" in a
            for d in ("target", "none")
        ]
        pairs += [(c.against, v) for v, c in plan.controls.items() if c.against]
        for a, b in pairs:
            if a in arms and b in arms and a != b:
                qa = dict(zip(data["qids"], arms[a][1][metric].mean(axis=0).tolist(), strict=True))
                qb = dict(zip(data["qids"], arms[b][1][metric].mean(axis=0).tolist(), strict=True))
                wl = wins_losses(qb, qa)
                out.append(
                    {
                        "collection": coll,
                        "a": a,
                        "b": b,
                        "metric": metric,
                        "wins_losses": {"wins": wl.wins, "losses": wl.losses, "ties": wl.ties},
                    }
                )
    return out
