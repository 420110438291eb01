"""The claims of an experiment config, tested: each claim's comparisons (pairs of rows) on each question set
of its collections, one Holm family per claim.

Question sets: collections that ask the same questions (XQuAD-R's 1,190 English questions are asked of the
German, Russian, Chinese, mixed and article collections alike) are one sample of questions, not several: their
per-question scores are averaged over the collections first, and the question is the unit the tests resample.
For the mean difference this is the clustered test with the question as the cluster (the mean over
collections x questions is the mean over questions of the per-question averages), and it keeps seven
correlated collections from counting as seven pieces of evidence. Collections with their own questions
(each Tatoeba pair has its own English sentences) are question sets of their own."""

from __future__ import annotations

from typing import Any

import numpy as np

from clir.experiments.aggregate import group_mean
from clir.experiments.grid import GridCollection, Plan


def question_sets(collections: list[GridCollection], names: list[str] | None = None) -> dict[str, list[str]]:
    """question set -> its collections (in grid order), for ``names`` (default: every collection)."""
    out: dict[str, list[str]] = {}
    for c in collections:
        if names is None or c.name in names:
            out.setdefault(c.spec.question_set or c.name, []).append(c.name)
    return out


def _group_scores(
    matrices: dict[str, dict[str, Any]], colls: list[str], arm: str, metric: str
) -> tuple[list[Any], np.ndarray] | None:
    """(seeds, seeds x questions) of ``arm`` averaged over the collections of one question set, on the
    questions and seeds they all have; None when a collection lacks the arm."""
    have = [c for c in colls if arm in matrices[c]["arms"]]
    if len(have) != len(colls):
        return None
    qids = set.intersection(*(set(matrices[c]["qids"]) for c in colls))
    seeds = [
        s for s in matrices[colls[0]]["arms"][arm][0] if all(s in matrices[c]["arms"][arm][0] for c in colls)
    ]
    order = sorted(qids)
    mats = []
    for c in colls:
        cseeds, m = matrices[c]["arms"][arm]
        pos = {q: i for i, q in enumerate(matrices[c]["qids"])}
        rows = [cseeds.index(s) for s in seeds]
        mats.append({metric: m[metric][np.ix_(rows, [pos[q] for q in order])]})
    return seeds, group_mean(mats, [metric])[metric]


def test_claims(plan: Plan, matrices: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every claim of the config with its comparisons, tests and Holm-adjusted p-values (primary metric)."""
    from clir.experiments.significance import adjust, seed_t_test, two_level_bootstrap

    cfg = plan.config
    sig = cfg.significance
    metric = cfg.primary
    out = []
    for claim in cfg.claims:
        names = [c for c in (claim.collections or [c.name for c in plan.collections]) if c in matrices]
        comps: list[dict[str, Any]] = []
        for a, b in (tuple(p) for p in claim.pairs):
            for qset, group in question_sets(plan.collections, names).items():
                # the question set's collections where both rows ran (a control may skip some)
                colls = [c for c in group if a in matrices[c]["arms"] and b in matrices[c]["arms"]]
                if not colls:
                    continue
                ga, gb = _group_scores(matrices, colls, a, metric), _group_scores(matrices, colls, b, metric)
                if ga is None or gb is None:
                    continue
                paired = len(ga[0]) > 1 and ga[0] == gb[0] and a.split("/")[0] == b.split("/")[0]
                boot = two_level_bootstrap(
                    ga[1],
                    gb[1],
                    paired_seeds=paired,
                    n_resamples=sig.n_resamples,
                    random_seed=sig.random_seed,
                )
                comps.append(
                    {
                        "pair": [a, b],
                        "question_set": qset,
                        "collections": colls,
                        "questions": int(ga[1].shape[1]),
                        "seeds": [len(ga[0]), len(gb[0])],
                        "paired_seeds": paired,
                        "delta": boot["delta"],
                        "ci": [boot["ci_low"], boot["ci_high"]],
                        "two-level": {"p_value": boot["p_value"]},
                        "seed-t": {"p_value": seed_t_test(ga[1], gb[1], paired_seeds=paired)},
                    }
                )
        for test in ("two-level", "seed-t"):
            adjusted = adjust({i: c[test]["p_value"] for i, c in enumerate(comps)}, sig.correction)
            for i, c in enumerate(comps):
                c[test]["p_adjusted"] = adjusted[i]
                c[test]["significant"] = adjusted[i] < sig.max_p
        for c in comps:
            c["expected_direction"] = _direction_ok(claim.expect, c["delta"])
            c["holds"] = c["expected_direction"] and c[sig.claim_test]["significant"]
        out.append(
            {
                "id": claim.id,
                "text": claim.text,
                "expect": claim.expect,
                "metric": metric,
                "test": sig.claim_test,
                "verdict": claim.verdict,
                "note": claim.note,
                "comparisons": comps,
                "outcome": _outcome(comps, sig.claim_test),
            }
        )
    return out


def _direction_ok(expect: str, delta: float) -> bool:
    return {"lower": delta < 0, "higher": delta > 0}.get(expect, delta != 0)


def _outcome(comps: list[dict[str, Any]], test: str) -> str:
    """What the tests say, in words (the verdict itself is the lead's: ``claims[].verdict``)."""
    if not comps:
        return "no comparison has finished runs"
    held = sum(c["holds"] for c in comps)
    against = sum(not c["expected_direction"] and c[test]["significant"] for c in comps)
    text = f"{held} of {len(comps)} comparisons significant in the expected direction"
    return text + (f"; {against} significant the other way" if against else "")
