"""Long documents: truncation vs passages (MaxP, FirstP) on xquad-r-articles/{de,ru,zh} with
multilingual-e5-small (mean pooling, L2 norm, e5 prefixes).

Each article (2.5-11k characters, mostly longer than 512 tokens) is indexed twice at the same passage length:
truncated (``--split none``: the encoder reads its first ``L`` tokens) and split into passages of ``L``
tokens (half-window stride, ``--split passages``); search ranks documents by their best passage (MaxP) or
their first (FirstP, same index). Reported: MRR@100, nDCG@10, R@1, R@10; passages, encoding passages/s and
the index size (FAISS ``index`` file and the whole folder). Writes ``eval/results/long-docs/``.

    python -m eval.bench.long_docs                    # de ru zh at 128, 256 (the default) and 512 tokens
    python -m eval.bench.long_docs --langs de --lengths 256
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clir.portable import portable
from eval.bench import common

log = logging.getLogger(__name__)
ARTICLES = common.SHARED / "data" / "collections" / "xquad-r-articles"
OUT = common.REPO / "eval" / "results" / "long-docs"
METRICS = ["mrr@100", "ndcg@10", "recall@1", "recall@10"]


def _size(folder: Path) -> tuple[int, int]:
    index = (folder / "index").stat().st_size
    return index, sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != "bench.json")


@dataclass
class BuildTimes:
    num_docs: int
    num_passages: int
    encoded_docs: int
    seconds_encoding: float


def run_one(
    encoder, lang: str, length: int, split: str, work: Path, queries, qvecs, qrels
) -> list[dict[str, Any]]:
    from clir.index import IndexArgs, PassageSpec, build_index
    from clir.metrics import evaluate
    from clir.search import Searcher

    coll = ARTICLES / lang
    out = work / f"{lang}-{split}-{length}"
    done = out / "bench.json"  # an index this benchmark already built and timed: reused
    if done.is_file():
        res = BuildTimes(**json.loads(done.read_text()))
    else:
        r = build_index(
            IndexArgs(
                collection=str(coll),
                model=str(common.E5_DIR),
                out=str(out),
                overwrite=True,
                batch_size=8,
                passages=PassageSpec(split),  # type: ignore[arg-type]
            ),
            encoder=encoder,
        )
        res = BuildTimes(r.num_docs, r.num_passages, r.encoded_docs, r.seconds_encoding)
        done.write_text(json.dumps(res.__dict__))
    index_bytes, folder_bytes = _size(out)
    rows = []
    modes = ["maxp", "firstp"] if split == "passages" else ["maxp"]
    for mode in modes:
        s = Searcher(out, encoder=encoder, mode=mode)
        sc, rw = s.search_vectors(qvecs, 100)
        run = {
            q.query_id: {s.hit_id(int(r)): float(x) for x, r in zip(sc[i], rw[i], strict=True) if r >= 0}
            for i, q in enumerate(queries)
        }
        scores = evaluate(run, qrels, METRICS)
        rows.append(
            {
                "lang": lang,
                "passage_length": length,
                "method": "truncation" if split == "none" else mode,
                "docs": res.num_docs,
                "passages": res.num_passages,
                "passages_per_s": round(res.encoded_docs / res.seconds_encoding, 2),
                "encode_s": round(res.seconds_encoding, 1),
                "index_bytes": index_bytes,
                "folder_bytes": folder_bytes,
                **{m: round(v, 4) for m, v in scores.items()},
            }
        )
        log.info("%s", rows[-1])
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = "| lang | L | method | passages | MRR@100 | nDCG@10 | R@1 | R@10 | passages/s | index | folder |"
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r['lang']} | {r['passage_length']} | {r['method']} | {r['passages']} | {r['mrr@100']:.4f} | "
            f"{r['ndcg@10']:.4f} | {r['recall@1']:.4f} | {r['recall@10']:.4f} | {r['passages_per_s']:.1f} | "
            f"{r['index_bytes'] / 1024:.0f} KiB | {r['folder_bytes'] / 1024:.0f} KiB |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--langs", nargs="+", default=["de", "ru", "zh"])
    p.add_argument("--lengths", nargs="+", type=int, default=[256, 128, 512])
    p.add_argument("--work", type=Path, default=common.REPO / "indexes" / "long-docs")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    common.quiet_libraries()
    from clir.data import load_collection
    from clir.model import load_encoder
    from clir.testing import provision_e5_small

    why = provision_e5_small(common.SHARED, common.E5_DIR)
    if why:
        raise SystemExit(f"multilingual-e5-small unavailable: {why}")
    rows: list[dict[str, Any]] = []
    for length in args.lengths:
        enc = load_encoder(str(common.E5_DIR), {**common.E5_SETTINGS, "max_passage_length": length})
        for lang in args.langs:
            coll = load_collection(ARTICLES / lang)
            queries, qrels = coll.queries(), coll.qrels()
            qvecs = enc.encode_queries([q.text for q in queries], batch_size=64)  # once for every index
            for split in ("none", "passages"):
                rows += run_one(enc, lang, length, split, args.work, queries, qvecs, qrels)
                write(args.out, rows)  # as it goes: a partial run keeps what it measured
    print(table(rows))
    return 0


def write(out: Path, rows: list[dict[str, Any]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": common.machine_summary(),
        "load_avg_end": common.load_avg(),
        "model": "multilingual-e5-small",
    }
    doc = portable({"meta": meta, "rows": rows})
    (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "table.md").write_text(table(rows) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
