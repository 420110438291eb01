"""Embedding measures that can explain a ranking: none changes when one vector is added to every document
(what the centroid gap of :mod:`clir.experiments.analysis` measures, and what cannot reorder the documents of
a query, whose every score it shifts alike).

- translation pairs (:func:`translation_scores`): how a text's own translation scores against the other
  candidates, per anchor: by inner product when the anchors are on the query side (a Tatoeba English sentence
  as its query; an English XQuAD-R sentence), by Euclidean distance between two sets of documents;
- neighbourhood agreement (:func:`neighbourhood_rho`): Spearman's rho between a document's distances to the
  others under two routings, averaged over documents;
- linear CKA (:func:`linear_cka`) between two representations of the same documents (per layer: English
  vs target adapter), invariant to offsets, rotations and scale (Kornblith et al. 2019);
- :func:`measure_check`: does a measure order the rows as the metric does (Kendall's tau), and where not."""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np


def _scores(A: np.ndarray, D: np.ndarray, kind: Literal["ip", "l2"]) -> np.ndarray:
    A, D = np.asarray(A, np.float64), np.asarray(D, np.float64)
    match kind:
        case "ip":
            return A @ D.T
        case "l2":
            # -squared distance; per anchor, -|a|^2 is a constant: -(|d|^2 - 2 a.d) ranks alike
            return 2 * A @ D.T - (D * D).sum(axis=1)[None, :]
    raise ValueError(f"unknown similarity {kind!r} (ip or l2)")


def translation_scores(
    A: np.ndarray,
    D: np.ndarray,
    pairs: Sequence[tuple[int, int]],
    *,
    kind: Literal["ip", "l2"] = "ip",
    candidates: Sequence[int] | None = None,
) -> dict[str, float]:
    """Each anchor ``A[i]`` against its translation ``D[j]`` (``pairs``) among ``candidates`` (rows of D;
    default all): ``pair_auc`` the fraction of the other candidates scoring below the translation (ties
    half; 0.5 = chance), ``pair_margin`` the translation's score minus the others' mean, ``pair_top1`` how
    often the translation scores first. ``ip``: inner product, as searched (anchors on the query side: an
    offset on D shifts an anchor's every score alike); ``l2``: Euclidean distance (anchors and candidates
    both documents: a common offset cancels)."""
    if not pairs:
        return {"pair_auc": float("nan"), "pair_margin": float("nan"), "pair_top1": float("nan")}
    cand = np.arange(len(D)) if candidates is None else np.asarray(candidates)
    pos = {int(c): k for k, c in enumerate(cand)}
    ai = np.array([i for i, j in pairs if j in pos])
    ti = np.array([pos[j] for _i, j in pairs if j in pos])
    S = _scores(np.asarray(A)[ai], np.asarray(D)[cand], kind)
    true = S[np.arange(len(ai)), ti][:, None]
    n_other = S.shape[1] - 1
    below = (S < true).sum(axis=1) + 0.5 * ((S == true).sum(axis=1) - 1)
    others_mean = (S.sum(axis=1) - true[:, 0]) / max(n_other, 1)
    return {
        "pair_auc": float((below / max(n_other, 1)).mean()),
        "pair_margin": float((true[:, 0] - others_mean).mean()),
        "pair_top1": float((below == n_other).mean()),
    }


def _ranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x, axis=1)


def neighbourhood_rho(
    D1: np.ndarray, D2: np.ndarray, *, n_anchors: int = 200, max_others: int = 2000, seed: int = 0
) -> float:
    """Mean Spearman rho, over anchor documents, between their squared distances to the other documents
    under two representations of the same documents (rows aligned): 1 = the same neighbourhoods."""
    D1, D2 = np.asarray(D1, np.float64), np.asarray(D2, np.float64)
    n = len(D1)
    if n < 3 or len(D2) != n:
        return float("nan")
    perm = np.random.default_rng(seed).permutation(n)
    k = min(n_anchors, n // 2)
    anchors, others = perm[:k], perm[k : k + max_others]  # disjoint: no anchor is its own neighbour

    def ranks(D: np.ndarray) -> np.ndarray:
        a, o = D[anchors], D[others]
        r = _ranks((o * o).sum(1)[None, :] - 2 * a @ o.T)  # + |a|^2, the same for an anchor's every other
        return r - r.mean(axis=1, keepdims=True)

    r1, r2 = ranks(D1), ranks(D2)
    with np.errstate(invalid="ignore"):
        rho = (r1 * r2).sum(1) / np.sqrt((r1 * r1).sum(1) * (r2 * r2).sum(1))
    return float(np.nanmean(rho))


def linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Linear CKA of two representations of the same n items (rows): ||Y'X||_F^2 / (||X'X||_F ||Y'Y||_F)
    after centring each (so an offset does not count); 1 for identical ones, up to rotation and scale."""
    X = np.asarray(X, np.float64) - np.mean(X, axis=0)
    Y = np.asarray(Y, np.float64) - np.mean(Y, axis=0)
    num = np.linalg.norm(Y.T @ X) ** 2
    den = np.linalg.norm(X.T @ X) * np.linalg.norm(Y.T @ Y)
    return float(num / den) if den > 0 else float("nan")


# ---------------------------------------------------------------------- XQuAD-R translation pairs
@lru_cache(maxsize=32)
def _xquad_bytes(folder: str, lang: str) -> bytes:
    """A language's XQuAD-R file: from a folder of them, or ``irds:clir/xquad-r`` (the checked upstream file
    clir's ir_datasets datasets read)."""
    if folder.rstrip("/") == "irds:clir/xquad-r":
        from clir.data.public import xquad_file

        return xquad_file(lang).read_bytes()
    return (Path(folder) / f"{lang}.json").read_bytes()


def xquad_aligned(folder: str, lang_a: str, lang_b: str) -> tuple[tuple[str, str], ...]:
    """Sentence ids (``<lang>-s<n>``, numbered as :mod:`clir.data.public` numbers them) that translate each
    other: XQuAD-R's paragraphs are translations, but their sentence splits differ; sentences are paired
    where both paragraphs have the same number of sentences (same position), else left out."""
    data = {lang: json.loads(_xquad_bytes(folder, lang))["data"] for lang in (lang_a, lang_b)}
    out: list[tuple[str, str]] = []
    na = nb = 0
    for art_a, art_b in zip(data[lang_a], data[lang_b], strict=True):
        for pa, pb in zip(art_a["paragraphs"], art_b["paragraphs"], strict=True):
            sa, sb = pa["sentences"], pb["sentences"]
            same = {q["id"] for q in pa["qas"]} == {q["id"] for q in pb["qas"]}
            if same and len(sa) == len(sb):
                out += [(f"{lang_a}-s{na + j}", f"{lang_b}-s{nb + j}") for j in range(len(sa))]
            na, nb = na + len(sa), nb + len(sb)
    return tuple(out)


# ---------------------------------------------------------------------- does a measure follow the metric?
def measure_check(points: list[dict[str, Any]], *, sign: int = 1) -> dict[str, Any]:
    """Kendall's tau between a measure and the metric over rows (``{"collection", "variant", "measure",
    "metric"}``), per collection and pooled over pairs of rows within a collection (the collections' own
    difficulty left out), with the pairs of rows the measure orders against the metric. ``sign``: the
    direction in which the measure should follow the metric (-1: lower is better)."""
    from scipy.stats import kendalltau

    by: dict[str, list[dict[str, Any]]] = {}
    for p in points:
        if p["measure"] is not None and np.isfinite(p["measure"]):
            by.setdefault(p["collection"], []).append(p)
    per, concordant, discordant, wrong = {}, 0, 0, []
    for coll, ps in by.items():
        if len(ps) < 2:
            continue
        tau = kendalltau([sign * p["measure"] for p in ps], [p["metric"] for p in ps]).statistic
        per[coll] = None if tau is None or np.isnan(tau) else round(float(tau), 3)
        for i in range(len(ps)):
            for j in range(i + 1, len(ps)):
                dm = sign * (ps[i]["measure"] - ps[j]["measure"])
                dy = ps[i]["metric"] - ps[j]["metric"]
                if dm * dy > 0:
                    concordant += 1
                elif dm * dy < 0:
                    discordant += 1
                    wrong.append(
                        {
                            "collection": coll,
                            "rows": [ps[i]["variant"], ps[j]["variant"]],
                            "metric_gap": round(abs(dy), 4),
                        }
                    )
    total = concordant + discordant
    wrong.sort(key=lambda w: -w["metric_gap"])
    return {
        "tau_within": round((concordant - discordant) / total, 3) if total else None,
        "pairs": total,
        "per_collection": per,
        "discordant": wrong,
    }
