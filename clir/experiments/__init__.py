"""Experiments (``clir experiment``): a grid of collections x models x language-adapter routings, planned
offline (:mod:`.plan`), run (:mod:`.runner`), scored (:mod:`.scoring`) and reported (:mod:`.report`), with the
BM25 baseline, fusion and significance tests beside them."""

from clir.experiments.grid import load_experiment_config
from clir.experiments.plan import format_plan, plan_grid
from clir.experiments.runner import run_grid

__all__ = ["format_plan", "load_experiment_config", "plan_grid", "run_grid"]
