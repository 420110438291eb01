"""``clir search``: one query to the terminal, or a query set to a TREC run file."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from clir.cli.common import add_model_args, model_overrides, positive_int
from clir.index.faiss_index import DEFAULT_NPROBE

HELP = "search an index: one --query, or --queries to a TREC --run file"
DESCRIPTION = """Search an index folder with the encoder recorded in its manifest (or --model).

  clir search --index indexes/xquad-de --query "Who wrote Faust?"
  clir search --index indexes/xquad-de --queries ../data/xquad-r/de/queries.tsv --run runs/de.trec --k 100"""

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", required=True, help="index folder")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--query", help="one query; prints ranked hits")
    q.add_argument("--queries", help="queries: a .tsv file, a collection folder or irds:<id>")
    p.add_argument("--run", help="TREC run file to write (with --queries)")
    p.add_argument(
        "--k", type=positive_int, default=None, help="hits per query (default 10, or 1000 with --run)"
    )
    p.add_argument(
        "--query-lang", help="language of the queries (default: the model's source language, en for most)"
    )
    p.add_argument("--query-field", help="irds topics: title, description or title+description")
    p.add_argument("--json", action="store_true", help="print hits as JSON")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--tag", default="clir", help="run tag (last column of the run file)")
    p.add_argument(
        "--nprobe",
        type=positive_int,
        help=f"IVF lists to visit (default: {DEFAULT_NPROBE}, or all lists when fewer)",
    )
    p.add_argument("--ef-search", type=positive_int, help="HNSW search breadth")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--doc-score",
        choices=["maxp", "firstp"],
        default="maxp",
        help="indexes of split documents: a document scores its best passage (maxp, default) or its first",
    )
    g.add_argument("--passages", action="store_true", help="return passages (docid#n) instead of documents")
    p.add_argument("--force", action="store_true", help="use --model even if it does not match the index")
    add_model_args(p)


def run(args: argparse.Namespace) -> int:
    from clir.data import load_queries
    from clir.data.collections import check_text
    from clir.errors import ClirError
    from clir.search import Searcher, write_trec_run
    from clir.search.searcher import check_run_tag

    if args.queries and not args.run and not args.json:
        raise ClirError("--queries needs --run FILE (or --json to print the hits)")
    check_run_tag(args.tag)
    # bad input is refused before the model loads
    queries = None
    if args.query is not None:
        if not args.query.strip():
            raise ClirError("--query is empty")
        check_text(args.query, "--query")
    else:
        queries = load_queries(args.queries, field=args.query_field)
        if not queries:
            raise ClirError(f"no queries in {args.queries}")
    if args.run:
        _check_run_path(Path(args.run))
    searcher = Searcher(
        args.index,
        model=args.model,
        overrides=model_overrides(args),
        force=args.force,
        device=args.device,
        nprobe=args.nprobe,
        ef_search=args.ef_search,
        mode="passages" if args.passages else args.doc_score,
    )
    if queries is None:
        hits = searcher.search(args.query, args.k or 10, query_lang=args.query_lang, return_text=True)
        if args.json:
            print(json.dumps({"query": args.query, "hits": [h.as_dict() for h in hits]}, ensure_ascii=False))
        else:
            for h in hits:
                text = ((h.passage or {}).get("text") or h.text or "").replace("\n", " ")
                snippet = text[:100] + ("…" if len(text) > 100 else "")
                print(f"{h.rank:>3}  {h.score:8.4f}  {h.doc_id}  {snippet}")
        return 0

    k = args.k or 1000
    t = time.perf_counter()
    results = searcher.batch_search(
        [q.text for q in queries], k, query_lang=args.query_lang, batch_size=args.batch_size
    )
    took = time.perf_counter() - t
    by_qid = {q.query_id: hits for q, hits in zip(queries, results, strict=True)}
    log.info(
        "searched %d queries in %.2fs (%.1f queries/s)", len(queries), took, len(queries) / max(took, 1e-9)
    )
    if args.run:
        write_trec_run(args.run, by_qid, tag=args.tag)
        log.info("wrote %s", args.run)
    if args.json:
        json.dump(
            {qid: [h.as_dict() for h in hits] for qid, hits in by_qid.items()}, sys.stdout, ensure_ascii=False
        )
        sys.stdout.write("\n")
    return 0


def _check_run_path(run: Path) -> None:
    from clir.errors import ClirError

    if run.is_dir():
        raise ClirError(f"--run {run} is a folder; give a file name")
    if run.exists() and not run.is_file():
        raise ClirError(f"--run {run} is not a regular file (a device, pipe or socket): give a file name")
    parent = next((p for p in run.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ClirError(f"--run {run}: {parent} is a file, so the run file cannot be created")
    if parent is not None and not os.access(parent, os.W_OK):
        raise ClirError(f"--run {run}: {parent} is not writable")
