"""Why a routing helps or hurts: measurements on the embeddings of one experiment row (the paper's
"why swapping the language adapter is suboptimal for dense retrieval").

Every function takes plain arrays (queries ``Q``: n x d, documents ``D``: m x d, one row each) so that the
numbers can be checked against a direct computation. Vectors are compared as they are searched: by inner
product; the geometric measures (centroid gap, alignment, uniformity) L2-normalise first, as in Wang & Isola
(2020), so that rows with and without normalisation are comparable."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n == 0, 1, n)


def centroid_gap(Q: np.ndarray, D: np.ndarray) -> dict[str, float]:
    """Distance between the query and the document distributions: the Euclidean gap between their
    centroids (unit vectors) and the cosine of the two centroids."""
    q, d = _unit(Q).mean(axis=0), _unit(D).mean(axis=0)
    cos = float(q @ d / (np.linalg.norm(q) * np.linalg.norm(d) or 1.0))
    return {"centroid_gap": float(np.linalg.norm(q - d)), "centroid_cos": cos}


def alignment(Q: np.ndarray, D: np.ndarray, pairs: Sequence[tuple[int, int]]) -> float:
    """Mean squared distance between a query and its relevant document (unit vectors; lower is better)."""
    if not pairs:
        return float("nan")
    qi, di = np.array(pairs).T
    diff = _unit(Q[qi]) - _unit(D[di])
    return float((diff * diff).sum(axis=1).mean())


def uniformity(X: np.ndarray, *, t: float = 2.0, max_points: int = 2000, seed: int = 0) -> float:
    """log E exp(-t ||x - y||^2) over distinct pairs (unit vectors; lower = more spread out)."""
    X = _unit(X)
    if len(X) > max_points:
        X = X[np.random.default_rng(seed).choice(len(X), max_points, replace=False)]
    sq = np.clip(2 - 2 * (X @ X.T), 0, None)
    iu = np.triu_indices(len(X), k=1)
    return float(np.log(np.exp(-t * sq[iu]).mean()))


def similarity_margin(
    Q: np.ndarray, D: np.ndarray, pairs: Sequence[tuple[int, int]], *, seed: int = 0
) -> dict[str, float]:
    """Mean query-document score (inner product, as searched) of relevant pairs and of random pairs."""
    if not pairs:
        return {"sim_relevant": float("nan"), "sim_random": float("nan"), "sim_margin": float("nan")}
    qi, di = np.array(pairs).T
    rel = (np.asarray(Q, np.float64)[qi] * np.asarray(D, np.float64)[di]).sum(axis=1)
    rnd_d = np.random.default_rng(seed).integers(0, len(D), size=len(qi))
    rnd = (np.asarray(Q, np.float64)[qi] * np.asarray(D, np.float64)[rnd_d]).sum(axis=1)
    return {
        "sim_relevant": float(rel.mean()),
        "sim_random": float(rnd.mean()),
        "sim_margin": float(rel.mean() - rnd.mean()),
    }


def language_accuracy(X: np.ndarray, labels: Sequence[str], *, folds: int = 5, seed: int = 0) -> float:
    """How strongly embeddings encode their language: accuracy of a nearest-centroid classifier (a linear
    probe with no parameters to tune) under k-fold cross-validation. Chance is 1 / number of languages."""
    X = _unit(X)
    y = np.asarray(labels)
    classes = np.unique(y)
    if len(classes) < 2:
        return float("nan")
    order = np.random.default_rng(seed).permutation(len(y))
    correct = 0
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        cents = np.stack([X[train][y[train] == c].mean(axis=0) for c in classes])
        pred = classes[np.argmax(X[test] @ cents.T, axis=1)]
        correct += int((pred == y[test]).sum())
    return correct / len(y)


@dataclass
class WinLoss:
    wins: int
    losses: int
    ties: int


def wins_losses(a: dict[str, float], b: dict[str, float], *, eps: float = 1e-9) -> WinLoss:
    """Per-query comparison of one routing (``a``) against another (``b``) on the queries both have."""
    common = sorted(set(a) & set(b))
    diff = np.array([a[q] - b[q] for q in common])
    return WinLoss(int((diff > eps).sum()), int((diff < -eps).sum()), int((np.abs(diff) <= eps).sum()))


def pca_2d(X: np.ndarray) -> np.ndarray:
    """The first two principal components of ``X`` (rows), via SVD."""
    X = np.asarray(X, dtype=np.float64)
    Xc = X - X.mean(axis=0)
    _, _, vt = np.linalg.svd(Xc, full_matrices=False)
    return Xc @ vt[:2].T


def row_measures(
    Q: np.ndarray,
    D: np.ndarray,
    pairs: Sequence[tuple[int, int]],
    doc_langs: Sequence[str] | None = None,
    *,
    seed: int = 0,
) -> dict[str, float]:
    """Every measure of one row, as a flat dict for metrics.json and the report."""
    out = {**centroid_gap(Q, D), "alignment": alignment(Q, D, pairs)}
    out["uniformity"] = uniformity(D, seed=seed)
    out.update(similarity_margin(Q, D, pairs, seed=seed))
    if doc_langs is not None and len(set(doc_langs)) > 1:
        out["lang_accuracy"] = language_accuracy(D, doc_langs, seed=seed)
    # how well a probe tells English queries from documents: the language gap the query side must cross
    n = min(len(Q), len(D))
    rng = np.random.default_rng(seed)
    qs, ds = rng.choice(len(Q), n, replace=False), rng.choice(len(D), n, replace=False)
    out["query_doc_accuracy"] = language_accuracy(
        np.concatenate([Q[qs], D[ds]]), ["q"] * n + ["d"] * n, seed=seed
    )
    return {k: round(float(v), 5) for k, v in out.items()}


# ---------------------------------------------------------------------- rows of an experiment
VECTORS_SUFFIX = ".vectors.npz"


def save_vectors(path, Q: np.ndarray, query_ids, D: np.ndarray, doc_ids, doc_langs) -> None:
    """The embeddings behind one run (fp16: the measures need no more), for the analysis of the report."""
    from pathlib import Path

    from clir.atomic import replacing

    with replacing(Path(path), ".tmp.npz") as tmp:  # np.savez adds .npz to a name without it
        np.savez(
            tmp,
            Q=np.asarray(Q, dtype=np.float16),
            D=np.asarray(D, dtype=np.float16),
            query_ids=np.asarray(query_ids, dtype=str),
            doc_ids=np.asarray(doc_ids, dtype=str),
            doc_langs=np.asarray(doc_langs, dtype=str),
        )


def load_vectors(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:  # arrays only: nothing in the file can run code
        return {k: z[k] for k in z.files}


def relevant_pairs(v: dict[str, np.ndarray], qrels: dict[str, dict[str, int]]) -> list[tuple[int, int]]:
    """(query row, document row) of each relevant pair. A document split into passages (ids ``DOCID#n``)
    is represented by its best-scoring passage for that query, as MaxP ranks it."""
    qpos = {q: i for i, q in enumerate(v["query_ids"].tolist())}
    rows: dict[str, list[int]] = {}
    for i, d in enumerate(v["doc_ids"].tolist()):
        rows.setdefault(d, []).append(i)
        if "#" in d:
            rows.setdefault(d.rsplit("#", 1)[0], []).append(i)
    Q, D = v["Q"].astype(np.float32), v["D"].astype(np.float32)
    pairs = []
    for q, rel in qrels.items():
        if q not in qpos:
            continue
        for d, r in rel.items():
            cand = rows.get(d)
            if r > 0 and cand:
                best = cand[int(np.argmax(D[cand] @ Q[qpos[q]]))] if len(cand) > 1 else cand[0]
                pairs.append((qpos[q], best))
    return pairs


def measure_row(path, qrels: dict[str, dict[str, int]], *, seed: int = 0) -> dict[str, float]:
    v = load_vectors(path)
    Q, D = v["Q"].astype(np.float32), v["D"].astype(np.float32)
    langs = v["doc_langs"].tolist()
    return row_measures(Q, D, relevant_pairs(v, qrels), langs if len(set(langs)) > 1 else None, seed=seed)


# ---------------------------------------------------------------------- one collection of a grid
def per_query(
    run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]], metric: str
) -> dict[str, float]:
    """``metric`` of each query of the qrels (0 for queries the run misses), as the significance tests
    score them."""
    from clir.experiments.significance import per_query_scores

    scores = per_query_scores(qrels, run, [metric])[metric]  # in the qrels' sorted query order
    return dict(zip(sorted(qrels), scores.tolist(), strict=True))


def collection_analysis(
    collection: str,
    vectors: dict[str, str],
    runs: dict[str, dict[str, dict[str, float]]],
    qrels: dict[str, dict[str, int]],
    pairs: list[tuple[str, str]],
    metric: str,
    *,
    seed: int = 0,
) -> tuple[list[dict], list[dict]]:
    """Measures of every row with saved vectors, and per-query wins/losses of each routing pair."""
    rows = [
        {"collection": collection, "variant": v, "measures": measure_row(path, qrels, seed=seed)}
        for v, path in vectors.items()
    ]
    out_pairs = []
    for a, b in pairs:
        if a in runs and b in runs:
            wl = wins_losses(per_query(runs[b], qrels, metric), per_query(runs[a], qrels, metric))
            out_pairs.append(
                {
                    "collection": collection,
                    "a": a,
                    "b": b,
                    "metric": metric,
                    "wins_losses": {"wins": wl.wins, "losses": wl.losses, "ties": wl.ties},
                }
            )
    return rows, out_pairs
