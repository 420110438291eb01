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
TEST_NAMES = {
    "student": "paired t-test",
    "fisher": "Fisher's randomisation test",
    "two-level": "two-level bootstrap over seeds and queries",
    "seed-t": "t-test over seed means",
}

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
            _record(out, test, m, pairs, raw, adjust(raw, correction), max_p)
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


# ---------------------------------------------------------------------- rows with several training seeds
def _bootstrap_counts(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """``n`` resamples (with replacement) of ``size`` units, as counts per unit: an n x size matrix."""
    idx = rng.integers(0, size, size=(n, size))
    flat = (idx + size * np.arange(n)[:, None]).ravel()
    return np.bincount(flat, minlength=n * size).reshape(n, size).astype(np.float64)


def two_level_bootstrap(
    control: np.ndarray,
    treatment: np.ndarray,
    *,
    paired_seeds: bool = False,
    n_resamples: int = 10000,
    random_seed: int = 42,
    level: float = 0.95,
) -> dict[str, float]:
    """Two-level (hierarchical) bootstrap of ``mean(treatment) - mean(control)`` for seeds x queries
    matrices (one row per training seed, one column per query; a row without seeds is one row).

    Each resample draws seeds with replacement (the same seed draw for both when ``paired_seeds``: rows of
    one trained model, e.g. two routings of each madx seed; independent draws otherwise), then queries with
    replacement (one draw for both: the queries are paired), and takes the difference of the resampled means.
    p is two-sided, from the resampled differences centred on the observed one (the null's shape):
    p = (b + 1) / (n + 1), b the resamples at least as far from the observed difference as it is from 0.
    Each side's seeds are first spread about their mean by sqrt(s / (s - 1)) (:func:`_rescaled`), so that the
    seed level's resampled variance is the seeds' sample variance. Resampling both levels is conservative
    when seeds differ by query noise alone (that noise counts twice) and a little liberal when the seeds
    truly differ and are few (3 seeds: 10 distinct draws; about 8% below 0.05 under the null in simulation):
    read the seed-level t-test beside it."""
    A = np.atleast_2d(np.asarray(control, dtype=np.float64))
    B = np.atleast_2d(np.asarray(treatment, dtype=np.float64))
    if A.shape[1] != B.shape[1]:
        raise ValueError(f"control and treatment score different queries ({A.shape[1]} vs {B.shape[1]})")
    if paired_seeds and A.shape[0] != B.shape[0]:
        raise ValueError("paired seeds need as many seeds on both sides")
    nq = A.shape[1]
    delta = float(B.mean() - A.mean())
    A, B = _rescaled(A), _rescaled(B)
    if nq == 0:
        return {"delta": 0.0, "p_value": 1.0, "ci_low": 0.0, "ci_high": 0.0}
    rng = np.random.default_rng(random_seed)
    draws = np.empty(n_resamples)
    for start in range(0, n_resamples, _BLOCK):
        n = min(_BLOCK, n_resamples - start)
        wq = _bootstrap_counts(rng, n, nq) / nq  # n x queries
        ca = _bootstrap_counts(rng, n, A.shape[0]) / A.shape[0]  # n x seeds
        cb = ca if paired_seeds else _bootstrap_counts(rng, n, B.shape[0]) / B.shape[0]
        draws[start : start + n] = ((wq @ B.T) * cb).sum(axis=1) - ((wq @ A.T) * ca).sum(axis=1)
    tol = 1e-12 * max(1.0, abs(delta))
    extreme = int(np.count_nonzero(np.abs(draws - delta) >= abs(delta) - tol))
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return {
        "delta": delta,
        "p_value": (extreme + 1) / (n_resamples + 1),
        "ci_low": float(lo),
        "ci_high": float(hi),
    }


def _rescaled(X: np.ndarray) -> np.ndarray:
    """Seeds' rows spread about their mean by sqrt(s / (s - 1)): resampling s rows with replacement then
    has the spread of the seeds' sample variance, not (s - 1) / s of it (Davison & Hinkley 1997, 3.8)."""
    s = X.shape[0]
    if s < 2:
        return X
    mean = X.mean(axis=0, keepdims=True)
    return mean + (X - mean) * math.sqrt(s / (s - 1))


def seed_t_test(control: np.ndarray, treatment: np.ndarray, *, paired_seeds: bool = False) -> float:
    """t-test on the seeds' mean scores (each seed's mean over queries): paired over seeds for rows of one
    trained model, Welch's otherwise, one-sample against a row without seeds (one row: a fixed model). 1.0
    where it cannot be computed (one seed on both sides, or no spread at all)."""
    from scipy import stats

    a = np.atleast_2d(np.asarray(control, dtype=np.float64)).mean(axis=1)
    b = np.atleast_2d(np.asarray(treatment, dtype=np.float64)).mean(axis=1)
    import warnings

    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # seeds nearly alike: NaN or a huge t, both handled
        if paired_seeds and len(a) == len(b) and len(a) > 1:
            p = stats.ttest_rel(b, a).pvalue
        elif len(a) > 1 and len(b) > 1:
            p = stats.ttest_ind(b, a, equal_var=False).pvalue
        elif len(b) > 1:
            p = stats.ttest_1samp(b, a[0]).pvalue
        elif len(a) > 1:
            p = stats.ttest_1samp(a, b[0]).pvalue
        else:
            return 1.0
    p = float(p)
    return 1.0 if math.isnan(p) else p


def compare_seeded(
    scores: dict[str, dict[str, np.ndarray]],
    metrics: list[str],
    *,
    pairs: list[tuple[str, str]],
    tests: list[str],
    paired: set[tuple[str, str]] = frozenset(),  # type: ignore[assignment]
    max_p: float = 0.05,
    n_permutations: int = 1000,
    n_resamples: int = 10000,
    random_seed: int = 42,
    correction: str = "holm",
) -> dict[tuple[str, str], dict[str, dict[str, dict[str, Any]]]]:
    """:func:`compare_runs` for rows with several seeds: ``scores[name][metric]`` is a seeds x queries
    matrix (the same queries, in one order, for every name). ``student`` and ``fisher`` test the
    seed-averaged per-query scores (for one seed: exactly :func:`compare_runs`); ``two-level`` is
    :func:`two_level_bootstrap`, ``seed-t`` :func:`seed_t_test`; pairs in ``paired`` share their seeds.
    Same output, plus the bootstrap's ``delta`` and confidence interval under ``two-level``."""
    out: dict[tuple[str, str], dict[str, dict[str, dict[str, Any]]]] = {p: {} for p in pairs}
    for test in tests:
        for m in metrics:
            raw: dict[tuple[str, str], float] = {}
            extra: dict[tuple[str, str], dict[str, float]] = {}
            for a, b in pairs:
                A, B = np.atleast_2d(scores[a][m]), np.atleast_2d(scores[b][m])
                if test == "fisher":
                    raw[(a, b)] = fisher_randomization_test(
                        A.mean(axis=0), B.mean(axis=0), n_permutations=n_permutations, random_seed=random_seed
                    )
                elif test == "student":
                    raw[(a, b)] = paired_t_test(A.mean(axis=0), B.mean(axis=0))
                elif test == "two-level":
                    res = two_level_bootstrap(
                        A, B, paired_seeds=(a, b) in paired, n_resamples=n_resamples, random_seed=random_seed
                    )
                    raw[(a, b)] = res.pop("p_value")
                    extra[(a, b)] = res
                elif test == "seed-t":
                    raw[(a, b)] = seed_t_test(A, B, paired_seeds=(a, b) in paired)
                else:
                    raise ValueError(f"unknown significance test {test!r}")
            _record(out, test, m, pairs, raw, adjust(raw, correction), max_p, extra)
    return out


def _record(out, test: str, metric: str, pairs, raw, adjusted, max_p: float, extra=None) -> None:
    """One test's p-values of a family of pairs on one metric, raw and adjusted, into ``out[pair][test]``."""
    for pair in pairs:
        out[pair].setdefault(test, {})[metric] = {
            "p_value": raw[pair],
            "p_adjusted": adjusted[pair],
            "significant": adjusted[pair] < max_p,
            **(extra or {}).get(pair, {}),
        }
