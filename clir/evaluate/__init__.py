"""ranx scoring, the experiment grid, reports and plots, BM25 baseline (Pyserini), fusion."""

from clir.evaluate.grid import load_eval_config, plan_grid, run_grid
from clir.evaluate.metrics import DEFAULT_METRICS, evaluate

__all__ = ["DEFAULT_METRICS", "evaluate", "load_eval_config", "plan_grid", "run_grid"]
