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
    correction: str = "holm",
) -> dict[tuple[str, str], dict[str, dict[str, dict[str, Any]]]]:
    """p-values of each (control, treatment) pair: ``{pair: {test: {metric: {"p_value", "p_adjusted",
    "significant"}}}}``. ``significant`` uses the p-value adjusted for the number of pairs compared (one
    family per test and metric): ``holm`` (Holm-Bonferroni), ``bonferroni`` or ``none``.

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
        for m in metrics:
            raw = {pair: _p(report.comparisons[frozenset(pair)][m]) for pair in pairs}
            adjusted = adjust(raw, correction)
            for pair in pairs:
                out[pair].setdefault(test, {})[m] = {
                    "p_value": raw[pair],
                    "p_adjusted": adjusted[pair],
                    "significant": adjusted[pair] < max_p,
                }
    return out


def _p(res: dict[str, Any]) -> float:
    p = float(res["p_value"])
    return 1.0 if math.isnan(p) else p  # NaN: the t-test of identical per-query scores, no difference


def adjust(pvalues: dict[Any, float], method: str = "holm") -> dict[Any, float]:
    """p-values adjusted for testing them together. Holm-Bonferroni: the i-th smallest of m p-values is
    multiplied by (m - i + 1), kept monotone, capped at 1; it controls the family-wise error rate like
    Bonferroni (every p-value times m) with more power."""
    m = len(pvalues)
    if method == "none" or m == 0:
        return dict(pvalues)
    if method == "bonferroni":
        return {k: min(1.0, p * m) for k, p in pvalues.items()}
    if method != "holm":
        raise ValueError(f"unknown correction {method!r} (holm, bonferroni, none)")
    out: dict[Any, float] = {}
    running = 0.0
    for i, (k, p) in enumerate(sorted(pvalues.items(), key=lambda kv: kv[1])):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return out
