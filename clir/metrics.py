"""Scoring a run with ranx: :func:`evaluate`, behind ``clir evaluate`` and the experiment grid."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from clir.config.experiment import DEFAULT_METRICS, check_metric
from clir.errors import ClirError

__all__ = ["DEFAULT_METRICS", "evaluate"]


def _as_run(run: Any) -> dict[str, dict[str, float]]:
    from clir.search import read_trec_run

    if isinstance(run, str | Path):
        return read_trec_run(run)
    return run


def _as_qrels(qrels: Any) -> dict[str, dict[str, int]]:
    from clir.data import load_qrels

    if isinstance(qrels, str | Path):
        return load_qrels(qrels)
    return qrels


def evaluate(run: Any, qrels: Any, metrics: list[str] | None = None) -> dict[str, float]:
    """ranx metrics of ``run`` (a TREC file or dict) against ``qrels`` (a qrels file, collection folder,
    ``irds:`` id, or dict). Queries in the qrels that the run misses score 0 (ranx ``make_comparable``)."""
    import ranx

    metrics = list(metrics or DEFAULT_METRICS)
    for m in metrics:
        check_metric(m)
    q = _as_qrels(qrels)
    r = _as_run(run)
    if not q:
        raise ClirError("the qrels are empty")
    if not r:
        raise ClirError("the run is empty")
    if not set(q) & set(r):
        raise ClirError("the run and the qrels share no query id (wrong qrels for this run?)")
    try:
        with warnings.catch_warnings():
            # numba's uint64->int64 cast notice inside ranx is harmless noise on stderr
            warnings.filterwarnings("ignore", message=".*unsafe cast.*")
            scores = ranx.evaluate(ranx.Qrels(q), ranx.Run(r), metrics, make_comparable=True)
    except (KeyError, ValueError, AssertionError) as e:
        raise ClirError(f"ranx could not compute {metrics}: {e}") from None
    if isinstance(scores, float):  # ranx returns a bare float for a single metric
        scores = {metrics[0]: scores}
    return {m: float(v) for m, v in scores.items()}
