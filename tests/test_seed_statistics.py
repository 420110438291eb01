"""Rows with several training seeds: pooling (mean +- sd), the two-level bootstrap over seeds and queries, the
seed-level t-test, and claims over question sets, on synthetic scores with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from clir.experiments import significance as S
from clir.experiments.aggregate import arm_record, group_mean, mean_sd


def _seeds(rng, n_queries=300, n_seeds=3, *, effect=0.0, seed_sd=0.0, base=None):
    """seeds x queries scores in [0, 1]: a per-query difficulty, a per-seed offset and per-query noise."""
    base = rng.random(n_queries) if base is None else base
    offsets = rng.normal(0, seed_sd, (n_seeds, 1)) if seed_sd else np.zeros((n_seeds, 1))
    return np.clip(base + effect + offsets + rng.normal(0, 0.1, (n_seeds, n_queries)), 0, 1)


def test_seed_rows_pool_into_mean_and_sd():
    rows = [
        {
            "variant": f"madx@{s}/q-source_d-target",
            "arm_variant": "madx/q-source_d-target",
            "arm": "madx",
            "seed": s,
            "run": f"runs/r{s}.trec",
            "queries": 10,
            "seconds": 2.0,
            "metrics": {"mrr": v, "map": 2 * v},
        }
        for s, v in [(0, 0.5), (1, 0.6), (2, 0.7)]
    ]
    rec = arm_record(rows, ["mrr", "map"])
    assert rec["variant"] == "madx/q-source_d-target" and rec["model"] == "madx" and rec["seeds"] == [0, 1, 2]
    assert rec["metrics"]["mrr"] == pytest.approx(0.6) and rec["sd"]["mrr"] == pytest.approx(0.1)
    assert rec["metrics"]["map"] == pytest.approx(1.2) and rec["sd"]["map"] == pytest.approx(0.2)
    assert rec["per_seed"]["1"]["mrr"] == 0.6 and rec["seconds"] == 6.0 and len(rec["run"]) == 3
    one = {"variant": "e5", "seed": None, "metrics": {"mrr": 0.4}}
    assert arm_record([one], ["mrr"]) == one  # a row without seeds stays as it is
    assert mean_sd([0.3]) == (0.3, None)
    x = np.arange(6.0).reshape(2, 3)
    assert group_mean([{"m": x}, {"m": x + 2}], ["m"])["m"] == pytest.approx(x + 1)


def test_two_level_bootstrap_finds_a_planted_effect():
    rng = np.random.default_rng(0)
    base = rng.random(300)
    A = _seeds(rng, base=base, seed_sd=0.005)
    B = _seeds(rng, base=base, effect=0.05, seed_sd=0.005)
    res = S.two_level_bootstrap(A, B, n_resamples=10000, random_seed=1)
    assert res["p_value"] < 0.001 and res["delta"] == pytest.approx(B.mean() - A.mean())
    assert res["ci_low"] < 0.05 < res["ci_high"] and res["ci_low"] > 0  # covers the effect, not 0
    again = S.two_level_bootstrap(A, B, n_resamples=10000, random_seed=1)
    assert again == res  # one seeded generator: the same p on any machine


def test_identical_and_exchangeable_systems_are_not_significant():
    rng = np.random.default_rng(2)
    A = _seeds(rng)
    assert S.two_level_bootstrap(A, A, n_resamples=1000)["p_value"] == 1.0
    assert S.seed_t_test(A, A, paired_seeds=True) == 1.0
    ps = []
    for r in range(40):  # two systems drawn alike: p should be spread over (0, 1], rarely small
        base = rng.random(200)
        ps.append(
            S.two_level_bootstrap(
                _seeds(rng, 200, base=base), _seeds(rng, 200, base=base), n_resamples=1000, random_seed=r
            )["p_value"]
        )
    ps_arr = np.array(ps)
    # large and spread, on the conservative side: with seeds that differ by query noise alone, resampling
    # both levels counts that noise twice
    assert np.mean(ps_arr < 0.05) <= 0.1 and 0.4 < ps_arr.mean() < 0.9 and ps_arr.min() < 0.5


def test_seed_variance_enters_the_two_level_test_and_not_the_per_query_ones():
    """The per-query difference is the same on every query, but the seeds disagree about its sign: the
    query-level tests (on the seed-averaged scores) call it significant, the seed-level ones do not."""
    rng = np.random.default_rng(3)
    A = np.tile(rng.random(400) * 0.8, (3, 1))
    B = A + np.array([[0.12], [-0.10], [0.04]])  # mean +0.02, seed spread 0.11
    fisher = S.fisher_randomization_test(A.mean(0), B.mean(0), n_permutations=10000)
    two = S.two_level_bootstrap(A, B, paired_seeds=True, n_resamples=10000)
    assert fisher < 0.001
    assert two["p_value"] > 0.2 and two["ci_low"] < 0 < two["ci_high"]
    assert S.seed_t_test(A, B, paired_seeds=True) > 0.5


def test_seed_t_test_paired_welch_and_one_sample():
    from scipy import stats

    a = np.array([[0.50, 0.52], [0.60, 0.58], [0.70, 0.66]])  # seed means 0.51, 0.59, 0.68
    b = a + np.array([[0.05], [0.06], [0.04]])
    assert S.seed_t_test(a, b, paired_seeds=True) == pytest.approx(
        stats.ttest_rel(b.mean(1), a.mean(1)).pvalue
    )
    assert S.seed_t_test(a, b) == pytest.approx(stats.ttest_ind(b.mean(1), a.mean(1), equal_var=False).pvalue)
    fixed = np.array([[0.40, 0.44]])  # a row without seeds (an untrained encoder): one sample against it
    assert S.seed_t_test(fixed, a) == pytest.approx(stats.ttest_1samp(a.mean(1), 0.42).pvalue)
    assert S.seed_t_test(fixed, fixed + 0.1) == 1.0  # one seed each: nothing to test at the seed level


def test_compare_seeded_with_one_seed_is_compare_runs():
    rng = np.random.default_rng(0)
    qrels = {f"q{i}": {"d0": 1} for i in range(40)}

    def run(p_hit):
        return {q: {"d0": 3.0 if rng.random() < p_hit else 1.0, "x": 2.0, "y": 1.5} for q in qrels}

    runs = {"base": run(0.4), "good": run(0.9), "same": run(0.4)}
    pairs = [("base", "good"), ("base", "same")]
    kw = {"pairs": pairs, "tests": ["student", "fisher"], "n_permutations": 2000}
    old = S.compare_runs(qrels, runs, ["mrr"], **kw)
    scores = {n: {"mrr": S.per_query_scores(qrels, r, ["mrr"])["mrr"][None, :]} for n, r in runs.items()}
    new = S.compare_seeded(scores, ["mrr"], **kw)
    assert new == old
    both = S.compare_seeded(scores, ["mrr"], pairs=pairs, tests=["two-level", "seed-t"], n_resamples=2000)
    good = both[("base", "good")]["two-level"]["mrr"]
    assert good["significant"] and good["ci_low"] > 0 and good["p_adjusted"] >= good["p_value"]
    assert both[("base", "good")]["seed-t"]["mrr"]["p_value"] == 1.0  # one seed a side: not testable


def test_question_sets_count_collections_once():
    from types import SimpleNamespace

    from clir.experiments.claims import _group_scores, question_sets

    def coll(name, qset=None):
        return SimpleNamespace(name=name, spec=SimpleNamespace(question_set=qset))

    colls = [coll("xq-de", "xq"), coll("xq-ru", "xq"), coll("tat-deu"), coll("xq-art-de", "xq")]
    assert question_sets(colls) == {"xq": ["xq-de", "xq-ru", "xq-art-de"], "tat-deu": ["tat-deu"]}
    assert question_sets(colls, ["xq-ru", "tat-deu"]) == {"xq": ["xq-ru"], "tat-deu": ["tat-deu"]}
    m = {
        "xq-de": {
            "qids": ["a", "b", "c"],
            "arms": {"x": ([0, 1], {"mrr": np.array([[1.0, 0, 0], [0, 1, 0]])})},
        },
        "xq-ru": {"qids": ["b", "c"], "arms": {"x": ([1, 0], {"mrr": np.array([[1.0, 1], [0, 0]])})}},
    }
    seeds, scores = _group_scores(m, ["xq-de", "xq-ru"], "x", "mrr")
    # the questions both ask (b, c), seeds matched by name, each question's two scores averaged
    assert seeds == [0, 1] and scores.tolist() == [[0.0, 0.0], [1.0, 0.5]]
    assert _group_scores(m, ["xq-de", "xq-ru"], "missing", "mrr") is None
