"""Paired significance tests between runs on one query set: the paired t-test and Fisher's randomisation
test on per-query ranx scores.

The randomisation test is ours, not ranx's: ranx draws its permutations in numba threads whose random
states its seed does not reach, so its p-values changed from one invocation to the next. Here one seeded
NumPy generator draws every permutation: the same runs and seed give the same p-value on any machine.
A result is significant when its p-value, adjusted for the pairs compared, is below ``max_p``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

RunDict = dict[str, dict[str, float]]

#: label of each test in reports
TEST_NAMES = {"student": "paired t-test", "fisher": "Fisher's randomisation test"}

#: permutations scored per block (bounds memory on large query sets)
_BLOCK = 256


def fisher_randomization_test(
    control: np.ndarray, treatment: np.ndarray, *, n_permutations: int = 1000, random_seed: int = 42
) -> float:
    """Two-sided paired randomisation test of the mean difference: each permutation swaps the two systems'
    scores on a random half of the queries (flips the sign of their difference). p = (b + 1) / (n + 1)
    with b the permutations at least as extreme as the observed one, never 0 (Phipson & Smyth, 2010)."""
    diff = np.asarray(treatment, dtype=np.float64) - np.asarray(control, dtype=np.float64)
    if diff.size == 0:
        return 1.0
    observed = abs(float(diff.mean()))
    # summation order differs between the observed mean and the permuted ones: ties within rounding count
    tol = 1e-12 * max(1.0, observed)
    rng = np.random.default_rng(random_seed)
    extreme = 0
    for start in range(0, n_permutations, _BLOCK):
        n = min(_BLOCK, n_permutations - start)
        signs = rng.integers(0, 2, size=(n, diff.size), dtype=np.int8) * 2 - 1
        extreme += int(np.count_nonzero(np.abs(signs @ diff) / diff.size >= observed - tol))
    return (extreme + 1) / (n_permutations + 1)


def paired_t_test(control: np.ndarray, treatment: np.ndarray) -> float:
    from scipy.stats import ttest_rel

    p = float(ttest_rel(control, treatment, alternative="two-sided").pvalue)
    return 1.0 if math.isnan(p) else p  # identical per-query scores: no difference at all


def per_query_scores(qrels: dict[str, dict[str, int]], run: RunDict, metrics: list[str]) -> dict[str, Any]:
    """``{metric: array}`` over the qrels' queries in ranx's (sorted) order; missing queries score 0."""
    import warnings

    import ranx

    with warnings.catch_warnings():  # numba type-safety notices inside ranx
        warnings.simplefilter("ignore")
        scores = ranx.evaluate(
            ranx.Qrels(qrels),
            ranx.Run(run),
            list(metrics),
            return_mean=False,
            # not save_results_in_run=False: with one metric ranx 0.3.21 then fails (KeyError on the
            # metric's base name); the Run is a throwaway here, so keeping its scores costs nothing
            make_comparable=True,
        )
    if len(metrics) == 1:
        scores = {metrics[0]: scores}
    return {m: np.asarray(scores[m], dtype=np.float64) for m in metrics}


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

    Runs score 0 on queries of the qrels they miss, as in :func:`evaluate`."""
    names = sorted({n for pair in pairs for n in pair})
    if not names:
        return {}
    scores = {n: per_query_scores(qrels, runs[n], metrics) for n in names}
    out: dict[tuple[str, str], dict[str, dict[str, dict[str, Any]]]] = {p: {} for p in pairs}
    for test in tests:
        for m in metrics:
            raw = {}
            for a, b in pairs:
                if test == "fisher":
                    raw[(a, b)] = fisher_randomization_test(
                        scores[a][m], scores[b][m], n_permutations=n_permutations, random_seed=random_seed
                    )
                elif test == "student":
                    raw[(a, b)] = paired_t_test(scores[a][m], scores[b][m])
                else:
                    raise ValueError(f"unknown significance test {test!r}")
            adjusted = adjust(raw, correction)
            for pair in pairs:
                out[pair].setdefault(test, {})[m] = {
                    "p_value": raw[pair],
                    "p_adjusted": adjusted[pair],
                    "significant": adjusted[pair] < max_p,
                }
    return out


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
