"""The embedding analysis of the paper experiment against direct computations on small known embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from clir.experiments import analysis as A


def two_clusters(n=40, d=8, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 0.05, (n, d)) + np.eye(d)[0]
    b = rng.normal(0, 0.05, (n, d)) + np.eye(d)[1]
    return np.concatenate([a, b]), ["de"] * n + ["ru"] * n


def test_language_accuracy_separates_clusters_and_is_chance_on_noise():
    X, y = two_clusters()
    assert A.language_accuracy(X, y) == 1.0
    rng = np.random.default_rng(1)
    noise = rng.normal(size=(400, 16))
    labels = list(rng.choice(["de", "ru"], 400))
    assert 0.35 < A.language_accuracy(noise, labels) < 0.65
    assert np.isnan(A.language_accuracy(noise, ["de"] * 400))


def test_centroid_gap_alignment_and_margin_match_direct_computation():
    Q = np.array([[1.0, 0.0], [0.0, 1.0]])
    D = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    gap = A.centroid_gap(Q, D)
    qc, dc = Q.mean(0), D.mean(0)
    assert gap["centroid_gap"] == pytest.approx(np.linalg.norm(qc - dc))
    assert gap["centroid_cos"] == pytest.approx(qc @ dc / (np.linalg.norm(qc) * np.linalg.norm(dc)))
    assert A.alignment(Q, D, [(0, 0), (1, 1)]) == pytest.approx(0.0)
    assert A.alignment(Q, D, [(0, 2)]) == pytest.approx(4.0)  # opposite unit vectors
    m = A.similarity_margin(Q, D, [(0, 0), (1, 1)])
    assert m["sim_relevant"] == pytest.approx(1.0)
    assert m["sim_margin"] == pytest.approx(m["sim_relevant"] - m["sim_random"])


def test_uniformity_orders_spread_and_collapsed_sets():
    rng = np.random.default_rng(0)
    spread = rng.normal(size=(300, 16))
    collapsed = np.ones((300, 16)) + rng.normal(0, 0.01, (300, 16))
    assert A.uniformity(spread) < A.uniformity(collapsed)
    assert A.uniformity(collapsed) == pytest.approx(0.0, abs=1e-2)  # every pair at distance ~0
    # direct: two orthogonal unit vectors are sqrt(2) apart: log exp(-2 * 2)
    assert A.uniformity(np.eye(2)) == pytest.approx(-4.0)


def test_wins_losses_and_pca():
    wl = A.wins_losses({"a": 1.0, "b": 0.5, "c": 0.2, "x": 9}, {"a": 0.5, "b": 0.5, "c": 0.3})
    assert (wl.wins, wl.losses, wl.ties) == (1, 1, 1)
    X, _ = two_clusters()
    P = A.pca_2d(X)
    assert P.shape == (len(X), 2)
    # the first component separates the two clusters
    assert (np.sign(P[:40, 0]) != np.sign(P[40:, 0])).all() or abs(P[:40, 0].mean() - P[40:, 0].mean()) > 0.5


def test_row_measures_flat_and_rounded():
    X, y = two_clusters()
    Q = X[:10] + 0.01
    out = A.row_measures(Q, X, [(i, i) for i in range(10)], y)
    assert out["lang_accuracy"] == 1.0
    assert set(out) >= {"centroid_gap", "alignment", "uniformity", "sim_margin", "query_doc_accuracy"}
    assert all(isinstance(v, float) for v in out.values())


def test_holm_adjustment_matches_hand_computation():
    from clir.experiments.significance import adjust

    p = {"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.5}
    # sorted: a 0.01*4=0.04, c 0.03*3=0.09, b 0.04*2=0.08 -> monotone 0.09, d 0.5*1=0.5
    assert adjust(p, "holm") == pytest.approx({"a": 0.04, "c": 0.09, "b": 0.09, "d": 0.5})
    assert adjust(p, "bonferroni") == pytest.approx({"a": 0.04, "b": 0.16, "c": 0.12, "d": 1.0})
    assert adjust(p, "none") == p
    # y: 0.8 * 2 capped at 1; x: max(1, 0.9 * 1) keeps the order monotone
    assert adjust({"x": 0.9, "y": 0.8}, "holm") == pytest.approx({"y": 1.0, "x": 1.0})


def test_compare_runs_marks_significance_after_the_correction():
    from clir.experiments.significance import compare_runs

    rng = np.random.default_rng(0)
    qrels = {f"q{i}": {"d0": 1} for i in range(60)}

    def run(p_hit):  # the relevant document at rank 1 with probability p_hit, else at rank 3
        return {q: {"d0": 3.0 if rng.random() < p_hit else 1.0, "x": 2.0, "y": 1.5} for q in qrels}

    runs = {"base": run(0.5), "good": run(0.95), "same1": run(0.5), "same2": run(0.5)}
    pairs = [("base", "good"), ("base", "same1"), ("base", "same2")]
    res = compare_runs(qrels, runs, ["mrr"], pairs=pairs, tests=["student"], correction="holm")
    raw = {pair: res[pair]["student"]["mrr"]["p_value"] for pair in pairs}
    adj = {pair: res[pair]["student"]["mrr"]["p_adjusted"] for pair in pairs}
    from clir.experiments.significance import adjust

    assert adj == pytest.approx(adjust(raw, "holm"))
    assert res[("base", "good")]["student"]["mrr"]["significant"]
    for pair in pairs:
        assert res[pair]["student"]["mrr"]["significant"] == (adj[pair] < 0.05)
        assert adj[pair] >= raw[pair]


def test_vectors_round_trip_and_row_measures_from_file(tmp_path):
    X, y = two_clusters()
    Q = X[:10] + 0.01
    path = tmp_path / "row.vectors.npz"
    A.save_vectors(path, Q, [f"q{i}" for i in range(10)], X, [f"d{i}" for i in range(len(X))], y)
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(10)}
    got = A.measure_row(path, qrels)
    want = A.row_measures(
        Q.astype(np.float16).astype(np.float32),
        X.astype(np.float16).astype(np.float32),
        [(i, i) for i in range(10)],
        y,
    )
    assert got == want and got["lang_accuracy"] == 1.0


def test_per_query_and_collection_pairs():
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 1}}
    a = {"q1": {"d1": 2.0, "x": 1.0}, "q2": {"x": 2.0, "d2": 1.0}}  # q3 missing: scores 0
    b = {"q1": {"x": 2.0, "d1": 1.0}, "q2": {"d2": 2.0, "x": 1.0}, "q3": {"d3": 1.0}}
    pa = A.per_query(a, qrels, "mrr")
    assert pa == pytest.approx({"q1": 1.0, "q2": 0.5, "q3": 0.0})
    _, pairs = A.collection_analysis("c", {}, {"src": a, "tgt": b}, qrels, [("src", "tgt")], "mrr")
    assert pairs[0]["wins_losses"] == {"wins": 2, "losses": 1, "ties": 0}  # tgt better on q2, q3; worse on q1


def test_split_documents_pair_with_their_best_passage(tmp_path):
    Q = np.array([[1.0, 0.0], [0.0, 1.0]])
    D = np.array([[0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])  # a#0, a#1, b
    path = tmp_path / "p.vectors.npz"
    A.save_vectors(path, Q, ["q1", "q2"], D, ["a#0", "a#1", "b"], ["de"] * 3)
    v = A.load_vectors(path)
    assert A.relevant_pairs(v, {"q1": {"a": 1}, "q2": {"a": 1, "b": 1}}) == [(0, 1), (1, 0), (1, 2)]
    assert np.isnan(A.similarity_margin(Q, D, [])["sim_margin"])


def test_per_query_scores_of_a_single_metric():
    from clir.experiments.significance import per_query_scores

    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    run = {"q1": {"d1": 2.0, "x": 1.0}, "q2": {"x": 2.0, "d2": 1.0}}
    one = per_query_scores(qrels, run, ["ndcg@10"])
    two = per_query_scores(qrels, run, ["ndcg@10", "mrr"])
    assert one["ndcg@10"] == pytest.approx(two["ndcg@10"]) and two["mrr"] == pytest.approx([1.0, 0.5])
