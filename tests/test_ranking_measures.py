"""The analysis measures that can explain a ranking: unchanged by an offset common to every document (which the
centroid gap is not), CKA of identical representations is 1, and the check of a measure against the metric."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clir.experiments import analysis as A
from clir.experiments import ranking as R


def _data(seed=0, n=60, d=16):
    rng = np.random.default_rng(seed)
    Q = rng.normal(size=(n, d))
    D = Q + rng.normal(0, 0.8, size=(n, d))  # document i translates query i, noisily
    return Q, D, [(i, i) for i in range(n)]


def test_a_common_offset_moves_the_centroid_gap_but_not_the_ranking_measures():
    Q, D, pairs = _data()
    c = np.full(Q.shape[1], 0.7)  # one vector added to every document
    assert A.centroid_gap(Q, D + c)["centroid_gap"] != pytest.approx(
        A.centroid_gap(Q, D)["centroid_gap"], abs=1e-3
    )
    # anchors on the query side, scored as searched (inner product): every score of an anchor moves alike
    ip, ip_shift = R.translation_scores(Q, D, pairs), R.translation_scores(Q, D + c, pairs)
    assert ip_shift == pytest.approx(ip) and 0.5 < ip["pair_auc"] <= 1.0
    # two sets of documents (e.g. German and Russian sentences of one row): Euclidean, both shifted
    l2, l2_shift = (
        R.translation_scores(D, Q, pairs, kind="l2"),
        R.translation_scores(D + c, Q + c, pairs, kind="l2"),
    )
    assert l2_shift == pytest.approx(l2)
    rho = R.neighbourhood_rho(D, Q, n_anchors=20)
    assert R.neighbourhood_rho(D + c, Q, n_anchors=20) == pytest.approx(rho)
    assert R.neighbourhood_rho(D, Q - c, n_anchors=20) == pytest.approx(rho)
    assert R.linear_cka(D + c, Q) == pytest.approx(R.linear_cka(D, Q))
    # the old margin is on raw scores, hence also offset-free; alignment (unit vectors) is not
    assert A.similarity_margin(Q, D + c, pairs)["sim_margin"] == pytest.approx(
        A.similarity_margin(Q, D, pairs)["sim_margin"]
    )
    assert A.alignment(Q, D + c, pairs) != pytest.approx(A.alignment(Q, D, pairs), abs=1e-3)


def test_translation_scores_against_a_direct_count():
    Q = np.array([[1.0, 0.0], [0.0, 1.0]])
    D = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5], [-1.0, 0.0]])
    s = R.translation_scores(Q, D, [(0, 0), (1, 2)])
    # anchor 0: its translation (0.9) beats the other 3 (0.2, 0.5, -1.0): 3/3; anchor 1: 0.5 beats 0.1 and
    # 0.0, not 0.8: 2/3
    assert s["pair_auc"] == pytest.approx((1 + 2 / 3) / 2) and s["pair_top1"] == pytest.approx(0.5)
    assert s["pair_margin"] == pytest.approx(
        ((0.9 - (0.2 + 0.5 - 1.0) / 3) + (0.5 - (0.1 + 0.8 + 0.0) / 3)) / 2
    )
    tie = R.translation_scores(Q[:1], np.array([[1.0, 0.0], [1.0, 0.0]]), [(0, 0)])
    assert tie["pair_auc"] == 0.5  # a tie counts half
    assert np.isnan(R.translation_scores(Q, D, [])["pair_auc"])


def test_neighbourhoods_and_cka_of_identical_and_unrelated_representations():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 32))
    rot, _ = np.linalg.qr(rng.normal(size=(32, 32)))
    assert R.linear_cka(X, X) == pytest.approx(1.0)
    assert R.linear_cka(X, 3.0 * X @ rot + 5.0) == pytest.approx(1.0)  # rotation, scale and offset
    assert R.linear_cka(X, rng.normal(size=(200, 32))) < 0.3
    assert R.neighbourhood_rho(X, X) == pytest.approx(1.0)
    assert R.neighbourhood_rho(X, X @ rot) == pytest.approx(1.0)  # distances kept: neighbourhoods too
    assert abs(R.neighbourhood_rho(X, rng.normal(size=(200, 32)))) < 0.1
    noisy = R.neighbourhood_rho(X, X + rng.normal(0, 0.5, X.shape))
    assert 0.5 < noisy < 1.0


def test_measure_check_says_where_a_measure_fails():
    points = [
        {"collection": c, "variant": v, "measure": m, "metric": y}
        for c, rows in {
            "a": [("src", 0.9, 0.8), ("tgt", 0.5, 0.4), ("none", 0.7, 0.6)],
            "b": [("src", 0.8, 0.9), ("tgt", 0.9, 0.5), ("none", 0.1, 0.7)],  # tgt and none out of order
        }.items()
        for v, m, y in rows
    ]
    check = R.measure_check(points)
    assert check["per_collection"] == {"a": 1.0, "b": pytest.approx(-1 / 3, abs=1e-3)}
    assert check["pairs"] == 6 and check["tau_within"] == pytest.approx((4 - 2) / 6, abs=1e-3)
    assert [w["rows"] for w in check["discordant"]] == [["src", "tgt"], ["tgt", "none"]]
    assert R.measure_check(points, sign=-1)["per_collection"]["a"] == -1.0  # a lower-is-better reading


def test_xquad_sentences_pair_only_where_paragraphs_split_alike(tmp_path):
    def article(*paras):
        return {"paragraphs": [{"sentences": s, "qas": [{"id": q}]} for q, s in paras]}

    en = {"data": [article(("q1", ["A.", "B."]), ("q2", ["C.", "D.", "E."])), article(("q3", ["F."]))]}
    de = {"data": [article(("q1", ["A'.", "B'."]), ("q2", ["C'. D'.", "E'."])), article(("q3", ["F'."]))]}
    (tmp_path / "en.json").write_text(json.dumps(en))
    (tmp_path / "de.json").write_text(json.dumps(de))
    got = R.xquad_aligned(str(tmp_path), "en", "de")
    # paragraph 2 splits differently (3 vs 2 sentences): left out; numbering runs on across paragraphs
    assert got == (("en-s0", "de-s0"), ("en-s1", "de-s1"), ("en-s5", "de-s4"))


@pytest.mark.shared
def test_xquad_alignment_on_the_real_files(shared_dir):
    folder = str(shared_dir / "data/raw/lareqa/xquad-r")
    pairs = R.xquad_aligned(folder, "en", "de")
    assert 500 < len(pairs) < 1180  # paragraphs that split alike in both languages
    docs = {}
    for lang in ("en", "de"):
        path = shared_dir / f"data/collections/xquad-r/{lang}/docs.jsonl"
        if path.is_file():
            docs[lang] = {json.loads(x)["doc_id"] for x in path.read_text().splitlines()}
    if "de" in docs:
        assert {d for _e, d in pairs} <= docs["de"]  # the collection's own ids
