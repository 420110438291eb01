"""``clir search``: one query to the terminal, or a query set to a TREC run file."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from clir.cli.common import add_model_args, deprecated_alias, model_overrides, positive_int, spelled
from clir.config.requests import DOC_SCORES, SearchRequest
from clir.index.faiss_index import DEFAULT_NPROBE

HELP = "search an index: one --query, or --queries to a TREC run file (--out)"
DESCRIPTION = """Search an index folder with the encoder recorded in its manifest (or --model).

  clir search --index indexes/xquad-de --query "Who wrote Faust?"
  clir search --index indexes/xquad-de --queries ../data/xquad-r/de/queries.tsv --out runs/de.trec --k 100

On an index of split documents --doc-score says how documents rank: by their best passage (maxp, default),
by their first (firstp), or not at all (passages: the passages themselves, docid#n). --run (now --out) and
--passages (now --doc-score passages) are deprecated spellings that still work."""

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", required=True, help="index folder")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--query", help="one query; prints ranked hits")
    q.add_argument("--queries", help="queries: a .tsv file, a collection folder or irds:<id>")
    p.add_argument("--out", help="TREC run file to write (with --queries; formerly --run)")
    deprecated_alias(p, "--run", "--out", dest="out")
    p.add_argument(
        "--k", type=positive_int, default=None, help="hits per query (default 10, or 1000 with --out)"
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
        choices=list(DOC_SCORES),
        default="maxp",
        help="indexes of split documents: a document scores its best passage (maxp, default) or its first "
        "(firstp); passages: return the passages (docid#n) instead of documents (formerly --passages)",
    )
    deprecated_alias(
        g, "--passages", "--doc-score passages", action="store_const", const="passages", dest="doc_score"
    )
    p.add_argument("--force", action="store_true", help="use --model even if it does not match the index")
    add_model_args(p)


def request(args: argparse.Namespace) -> SearchRequest:
    return SearchRequest(
        index=args.index,
        query=args.query,
        queries=args.queries,
        out=args.out,
        k=args.k,
        query_lang=args.query_lang,
        query_field=args.query_field,
        json=args.json,
        batch_size=args.batch_size,
        tag=args.tag,
        nprobe=args.nprobe,
        ef_search=args.ef_search,
        doc_score=args.doc_score,
        force=args.force,
        model=args.model,
        overrides=model_overrides(args),
        device=args.device,
    )


def run(args: argparse.Namespace) -> int:
    from clir.data import load_queries
    from clir.data.collections import check_text
    from clir.errors import ClirError
    from clir.search import Searcher
    from clir.search.searcher import check_run_tag

    req = request(args)
    out_flag = spelled(args, "out", "--out")
    if req.queries and not req.out and not req.json:
        raise ClirError(f"--queries needs {out_flag} FILE (or --json to print the hits)")
    check_run_tag(req.tag)
    # bad input is refused before the model loads
    queries = None
    if req.query is not None:
        if not req.query.strip():
            raise ClirError("--query is empty")
        check_text(req.query, "--query")
    else:
        assert req.queries is not None  # argparse: --query or --queries
        queries = load_queries(req.queries, field=req.query_field)
        if not queries:
            raise ClirError(f"no queries in {req.queries}")
    if req.out:
        _check_run_path(Path(req.out), out_flag)
    searcher = Searcher(
        req.index,
        model=req.model,
        overrides=req.overrides,
        force=req.force,
        device=req.device,
        nprobe=req.nprobe,
        ef_search=req.ef_search,
        doc_score=req.doc_score,
    )
    if queries is None:
        _print_hits(searcher, req)
        return 0
    _search_all(searcher, req, queries)
    return 0


def _print_hits(searcher, req: SearchRequest) -> None:
    """One query's hits, as JSON or one line each."""
    assert req.query is not None
    hits = searcher.search(req.query, req.k or 10, query_lang=req.query_lang, return_text=True)
    if req.json:
        print(json.dumps({"query": req.query, "hits": [h.as_dict() for h in hits]}, ensure_ascii=False))
        return
    for h in hits:
        text = ((h.passage or {}).get("text") or h.text or "").replace("\n", " ")
        snippet = text[:100] + ("…" if len(text) > 100 else "")
        print(f"{h.rank:>3}  {h.score:8.4f}  {h.doc_id}  {snippet}")


def _search_all(searcher, req: SearchRequest, queries) -> None:
    """A query set's hits to the run file (and as JSON with ``json``)."""
    from clir.search import write_trec_run

    k = req.k or 1000
    t = time.perf_counter()
    results = searcher.batch_search(
        [q.text for q in queries], k, query_lang=req.query_lang, batch_size=req.batch_size
    )
    took = time.perf_counter() - t
    by_qid = {q.query_id: hits for q, hits in zip(queries, results, strict=True)}
    log.info(
        "searched %d queries in %.2fs (%.1f queries/s)", len(queries), took, len(queries) / max(took, 1e-9)
    )
    if req.out:
        write_trec_run(req.out, by_qid, tag=req.tag)
        log.info("wrote %s", req.out)
    if req.json:
        json.dump(
            {qid: [h.as_dict() for h in hits] for qid, hits in by_qid.items()}, sys.stdout, ensure_ascii=False
        )
        sys.stdout.write("\n")


def _check_run_path(run: Path, flag: str) -> None:
    from clir.errors import ClirError

    if run.is_dir():
        raise ClirError(f"{flag} {run} is a folder; give a file name")
    if run.exists() and not run.is_file():
        raise ClirError(f"{flag} {run} is not a regular file (a device, pipe or socket): give a file name")
    parent = next((p for p in run.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ClirError(f"{flag} {run}: {parent} is a file, so the run file cannot be created")
    if parent is not None and not os.access(parent, os.W_OK):
        raise ClirError(f"{flag} {run}: {parent} is not writable")
