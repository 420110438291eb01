"""``clir experiment`` (deprecated alias ``clir eval``): run an experiment grid (collections x models x language-adapter
routings) end to end."""

from __future__ import annotations

import argparse
import shlex

from clir.config.requests import ExperimentRequest

ALIASES = ["eval"]  # the verb's first name, kept for existing scripts
#: spellings that still work but warn: "eval" names the eval/ folder (benchmarks and committed results)
DEPRECATED_ALIASES = ALIASES
HELP = "run an experiment grid: indexes, TREC runs, ranx metrics, significance, report and plots"
DESCRIPTION = """Run the experiment grid a config describes: every collection x model x language-adapter
routing (madx models; full/task models give one row), plus optional BM25 and fusion rows. Each index is built
once (under OUT/indexes, or the config's index_root; an existing one is reused when its manifest matches the
encoder), runs go to OUT/runs/*.trec, and OUT gets metrics.json, report.md and plots/*.png. Re-running the
same config skips finished runs. ir_datasets collections are checked first: missing files stop the run before
any work, with one message listing them.

  clir experiment --config configs/eval/xquad-r-e5.yaml
  clir experiment --config configs/eval/paper-hc4.yaml --dry-run  (validate offline, print the plan)
  clir experiment --config configs/eval/xquad-r-e5.yaml --only 'xquad-r-de/*' 'tatoeba-*/e5'

--only takes shell patterns over row ids COLLECTION/MODEL[/q-ROUTE_d-ROUTE] (bm25 rows: COLLECTION/bm25;
one seed of a seeded model: MODEL@SEED, and MODEL alone selects every seed); a pattern also selects the rows
below it (`xquad-r-de` = `xquad-r-de/*`). `clir eval` still runs this verb (deprecated)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="experiment YAML (see configs/eval/)")
    p.add_argument("--out", help="output folder (default: the config's `output`, else eval/results/NAME)")
    p.add_argument("--only", nargs="+", metavar="PATTERN", help="compute only rows whose id matches")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the config offline and print the plan (indexes, runs, metrics, downloads); do nothing",
    )


def _command(args: argparse.Namespace) -> str:
    parts = ["clir", args.verb, "--config", args.config]
    if args.out:
        parts += ["--out", args.out]
    if args.only:
        parts += ["--only", *args.only]
    return shlex.join(parts)


def request(args: argparse.Namespace) -> ExperimentRequest:
    return ExperimentRequest(
        config=args.config, out=args.out, only=tuple(args.only) if args.only else None, dry_run=args.dry_run
    )


def run(args: argparse.Namespace) -> int:
    import logging

    from clir.experiments import format_plan, load_experiment_config, plan_grid, run_grid
    from clir.experiments.report import overview_text

    req = request(args)
    cfg = load_experiment_config(req.config)
    plan = plan_grid(cfg, config_path=req.config, out=req.out, only=list(req.only) if req.only else None)
    if req.dry_run:
        print(format_plan(plan), end="")
        return 0
    result = run_grid(plan, command=_command(args))
    print(overview_text(result), end="")
    print(f"\nreport: {plan.out / 'report.md'}  ({result.seconds:.1f} s)")
    logging.getLogger(__name__).info(
        "%d run(s) computed, %d reused; outputs in %s", len(result.computed), len(result.skipped), plan.out
    )
    return 0
