"""``clir evaluate``: ranx metrics of a TREC run, as JSON."""

from __future__ import annotations

import argparse
import json

from clir.config.requests import EvaluateRequest

HELP = "score a TREC run with ranx (prints JSON)"
DESCRIPTION = """Score a TREC run file against qrels with ranx and print the metrics as JSON.

  clir evaluate --run runs/de.trec --qrels ../data/xquad-r/de
  clir evaluate --run runs/fa.trec --qrels irds:hc4/fa/test --metrics ndcg@20 recall@1000"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="TREC run file to score (`clir search --out` writes one)")
    p.add_argument("--qrels", required=True, help="a qrels file, a collection folder or irds:<id>")
    p.add_argument(
        "--metrics",
        nargs="+",
        default=None,
        help="ranx metric names (default: ndcg@10 ndcg@20 map mrr@100 recall@100 recall@1000)",
    )


def request(args: argparse.Namespace) -> EvaluateRequest:
    return EvaluateRequest(args.run, args.qrels, tuple(args.metrics) if args.metrics else None)


def run(args: argparse.Namespace) -> int:
    from clir.metrics import evaluate

    req = request(args)
    scores = evaluate(req.run, req.qrels, list(req.metrics) if req.metrics else None)
    print(json.dumps({k: round(v, 4) for k, v in scores.items()}, indent=2))
    return 0
