"""Rows with several training seeds, pooled into the row of their arm: a metric's mean and standard deviation
over the seeds (each seed's metric is its mean over queries), the per-seed values beside them, and the
per-query scores as a seeds x queries matrix for the tests (:func:`clir.experiments.significance.compare_seeded`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1) of the seeds' values; no sd for one seed."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return math.nan, None
    return float(x.mean()), (float(x.std(ddof=1)) if x.size > 1 else None)


def arm_record(seed_rows: list[dict[str, Any]], metrics: list[str]) -> dict[str, Any]:
    """The record of an arm's row from its seeds' records (those of ``_row_record``, one per seed, each with a
    ``seed``); one record without a seed is returned as it is."""
    if len(seed_rows) == 1 and seed_rows[0].get("seed") is None:
        return dict(seed_rows[0])
    first = seed_rows[0]
    out = {k: v for k, v in first.items() if k not in ("run", "seconds", "metrics", "queries", "seed")}
    out["variant"] = first["arm_variant"]
    out["model"] = first["arm"]
    out["seeds"] = [r["seed"] for r in seed_rows]
    out["run"] = [r["run"] for r in seed_rows]
    out["queries"] = min(r["queries"] for r in seed_rows)
    secs = [r["seconds"] for r in seed_rows if r.get("seconds") is not None]
    out["seconds"] = round(sum(secs), 1) if secs else None
    out["metrics"], out["sd"] = {}, {}
    for m in metrics:
        mean, sd = mean_sd([r["metrics"][m] for r in seed_rows])
        out["metrics"][m] = mean
        out["sd"][m] = sd
    out["per_seed"] = {str(r["seed"]): r["metrics"] for r in seed_rows}
    return out


def score_matrices(per_query: list[dict[str, np.ndarray]], metrics: list[str]) -> dict[str, np.ndarray]:
    """Seeds' per-query scores (``{metric: array}`` each, the same queries in one order) as ``{metric:
    seeds x queries}``."""
    return {m: np.stack([pq[m] for pq in per_query]) for m in metrics}


def group_mean(matrices: list[dict[str, np.ndarray]], metrics: list[str]) -> dict[str, np.ndarray]:
    """Per-question scores averaged over collections that ask the same questions (each a seeds x queries
    matrix over the same seeds and queries): the claim-level unit is the question, counted once."""
    return {m: np.mean(np.stack([x[m] for x in matrices]), axis=0) for m in metrics}
