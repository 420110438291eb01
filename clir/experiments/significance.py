"""Paired significance tests between runs on one query set, through ranx ``compare``."""

from __future__ import annotations

import math
from typing import Any

RunDict = dict[str, dict[str, float]]

#: label of each ranx test in reports
TEST_NAMES = {"student": "paired t-test", "fisher": "Fisher's randomisation test"}


def compare_runs(
    qrels: dict[str, dict[str, int]],
    runs: dict[str, RunDict],
    metrics: list[str],
    *,
    pairs: list[tuple[str, str]],
    tests: list[str],
    max_p: float = 0.05,
    n_permutations: int = 1000,
    random_seed: int = 42,
) -> dict[tuple[str, str], dict[str, dict[str, dict[str, Any]]]]:
    """p-values of each (control, treatment) pair: ``{pair: {test: {metric: {"p_value", "significant"}}}}``.

    Runs score 0 on queries of the qrels they miss (ranx ``make_comparable``), as in :func:`evaluate`."""
    import warnings

    import ranx

    names = sorted({n for pair in pairs for n in pair})
    if not names:
        return {}
    out: dict[tuple[str, str], dict[str, dict[str, dict[str, Any]]]] = {p: {} for p in pairs}
    for test in tests:
        ranx_runs = [ranx.Run(runs[n], name=n) for n in names]
        with warnings.catch_warnings():  # numba type-safety notices inside ranx
            warnings.simplefilter("ignore")
            report = ranx.compare(
                qrels=ranx.Qrels(qrels),
                runs=ranx_runs,
                metrics=list(metrics),
                stat_test=test,
                max_p=max_p,
                n_permutations=n_permutations,
                random_seed=random_seed,
                make_comparable=True,
            )
        for a, b in pairs:
            res = report.comparisons[frozenset([a, b])]
            out[(a, b)][test] = {m: _entry(res[m]) for m in metrics}
    return out


def _entry(res: dict[str, Any]) -> dict[str, Any]:
    p = float(res["p_value"])
    if math.isnan(p):  # the t-test of identical per-query scores: no difference at all
        return {"p_value": 1.0, "significant": False}
    return {"p_value": p, "significant": bool(res["significant"])}
