"""Scale: the `--preset large` recipe (IVF + 4-bit fast-scan PQ + exact re-ranking against memory-mapped
full vectors) against exact (Flat) search, on synthetic vectors up to 10M and on real e5-small vectors.

    python -m eval.bench.scale                          # real vectors + 1M synthetic (~10-15 min on 2 cores)
    python -m eval.bench.scale --sizes 1000000 10000000 # adds the 10M run (~1 h, ~8 GB of disk)
    python -m eval.bench.scale --sizes 100000 --no-real --no-write

Real vectors: every document and query text of ``../shared/data`` (collections + ``mono/``, ~30k texts,
duplicates removed) encoded with multilingual-e5-small (e5 conventions: mean pooling, L2 norm, "query: " /
"passage: " prefixes), cached under eval/results/scale. Synthetic vectors: faiss_scaling's generator,
written chunk by chunk so no step holds the whole collection in memory. Each build and each search runs in
a child process, so its peak memory (VmHWM: resident, file-backed pages of the memory-mapped vectors
included) is its own."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np

from clir.index.faiss_index import nlist_of
from eval.bench import common

log = logging.getLogger(__name__)
SECTION = "Scale: the large preset"
WORK = common.REPO / "eval" / "results" / "scale"


# ---------------------------------------------------------------------------------------------- real vectors
def shared_texts() -> tuple[list[str], list[str]]:
    """(passages, queries): every document text of the shared collections plus the mono sentences, and every
    query text, each deduplicated in first-seen order."""
    data = common.SHARED / "data"
    docs: dict[str, None] = {}
    queries: dict[str, None] = {}
    for folder in sorted((data / "collections").glob("*/*")):
        if (folder / "docs.jsonl").is_file():
            with open(folder / "docs.jsonl", encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        docs.setdefault(json.loads(line)["text"], None)
        if (folder / "queries.tsv").is_file():
            with open(folder / "queries.tsv", encoding="utf-8") as f:
                for line in f:
                    parts = line.rstrip("\n").split("\t")
                    if len(parts) >= 2 and parts[1].strip():
                        queries.setdefault(parts[1], None)
    for path in sorted((data / "mono").glob("*.txt")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                docs.setdefault(line, None)
    return list(docs), list(queries)


def real_vectors(folder: Path = WORK / "real", n_queries: int = 2000, step: int = 2048):
    """(passage vectors, query vectors) of :func:`shared_texts` with e5-small: every passage, and a seeded
    sample of ``n_queries`` queries (recall@10 over 2,000 queries is within ~0.01). Encoded ``step`` texts at
    a time into a cache, so an interrupted run resumes where it stopped."""
    folder.mkdir(parents=True, exist_ok=True)
    passages, queries = shared_texts()
    rng = np.random.default_rng(0)
    queries = [
        queries[i] for i in sorted(rng.choice(len(queries), min(n_queries, len(queries)), replace=False))
    ]
    enc = None
    parts = {"queries": [], "passages": []}
    for side, texts in (("queries", queries), ("passages", passages)):
        for no, s in enumerate(range(0, len(texts), step)):
            path = folder / f"{side}-{len(texts)}-{no:04d}.npy"
            if not path.is_file():
                if enc is None:
                    common.require_shared()
                    log.info("encoding %d passages and %d queries with e5-small", len(passages), len(queries))
                    enc = common.e5_encoder()
                batch = texts[s : s + step]
                vecs = enc.encode_queries(batch) if side == "queries" else enc.encode_passages(batch)
                np.save(path.with_suffix(".tmp.npy"), vecs)
                path.with_suffix(".tmp.npy").replace(path)
                log.info("%s: %d/%d encoded", side, min(s + step, len(texts)), len(texts))
            parts[side].append(np.load(path))
    return np.concatenate(parts["passages"]), np.concatenate(parts["queries"])


# ---------------------------------------------------------------------------------------------- children
def _peak_mib() -> dict[str, float]:
    """This process's peak resident memory and its current anonymous / file-backed parts, MiB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmHWM", "RssAnon", "RssFile"):
            out[key] = int(val.split()[0]) / 1024
    return out


def _vectors_file(folder: Path, n: int) -> Path:
    """Synthetic vectors (faiss_scaling's generator, one stream per 100k chunk) written once as fp32."""
    from eval.bench.faiss_scaling import DIM, Synthetic

    path = folder / f"synthetic-{n}.f32.npy"
    if path.is_file():
        return path
    gen = Synthetic()
    tmp = path.with_name(path.name + ".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, DIM))
    step = 100_000
    for s in range(0, n, step):
        out[s : s + step] = gen.draw(min(step, n - s), stream=s // step)
    out.flush()
    del out
    tmp.replace(path)
    return path


def child_build(vectors: Path, folder: Path) -> dict:
    """Build the large preset from a vector file into ``folder`` (clir's own `clir index --preset` code)."""
    import time

    from clir.index.presets import write_faiss

    vecs = np.load(vectors, mmap_mode="r")
    n, dim = vecs.shape
    step = 200_000

    def chunks():
        for s in range(0, n, step):
            yield np.ascontiguousarray(vecs[s : s + step])

    def sample(k: int) -> np.ndarray:
        return vecs[np.sort(np.random.default_rng(1).choice(n, size=k, replace=False))]

    folder.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    fields = write_faiss(folder, dim, n, chunks, sample, preset="large")
    secs = time.perf_counter() - t
    (folder / "fields.json").write_text(json.dumps(fields))
    return {"fields": fields, "build_s": secs, **_peak_mib()}


def child_search(folder: Path, queries: Path, nprobe: int | None, refine: bool) -> dict:
    """Open the built index as `clir search` does (memory-mapped refine vectors), search the queries in one
    batch (k=10): rows, ms/query, memory."""
    import time

    import faiss

    from clir.index.faiss_index import set_search_params
    from clir.index.presets import open_index

    fields = json.loads((folder / "fields.json").read_text())
    index = open_index(folder, fields)
    opened = _peak_mib()
    set_search_params(index, nprobe=nprobe or fields["search"]["nprobe"])
    target = index if refine else index.base
    q = np.load(queries)
    target.search(q[:8], 10)  # warm-up
    t = time.perf_counter()
    _, rows = target.search(q, 10)
    ms = (time.perf_counter() - t) / len(q) * 1000
    return {"rows": rows.tolist(), "ms_per_query": ms, "opened": opened, "threads": faiss.omp_get_max_threads(),
            "index_mib": (folder / "index").stat().st_size / 2**20,
            "refine_mib": (folder / "refine.npy").stat().st_size / 2**20, **_peak_mib()}  # fmt: skip


def exact(vectors: Path, queries: np.ndarray, k: int = 10, step: int = 500_000) -> tuple[np.ndarray, float]:
    """Exact top-k by inner product, streaming the vector file (Flat search, chunk by chunk so 10M fit):
    rows and Flat's ms/query (FAISS search time over the chunks, reading excluded)."""
    import time

    import faiss

    from clir.index.faiss_index import use_blas_for_flat

    # the setting clir's searches run with (1,000 queries: BLAS either way)
    use_blas_for_flat(queries.shape[1])
    vecs = np.load(vectors, mmap_mode="r")
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_r = np.full((len(queries), k), -1, dtype=np.int64)
    spent = 0.0
    for s in range(0, len(vecs), step):
        flat = faiss.IndexFlatIP(vecs.shape[1])
        flat.add(np.ascontiguousarray(vecs[s : s + step]))
        t = time.perf_counter()
        sc, rows = flat.search(queries, k)
        spent += time.perf_counter() - t
        sc = np.concatenate([best_s, sc], axis=1)
        rows = np.concatenate([best_r, rows + s], axis=1)
        top = np.argsort(-sc, axis=1, kind="stable")[:, :k]
        best_s, best_r = np.take_along_axis(sc, top, 1), np.take_along_axis(rows, top, 1)
    return best_r, spent / len(queries) * 1000


def recall_at_10(truth: np.ndarray, found: np.ndarray) -> float:
    return float(np.mean([len(set(t[:10]) & set(f[:10])) / 10 for t, f in zip(truth, found, strict=True)]))


# ---------------------------------------------------------------------------------------------- driver
def _child(*args: str) -> dict:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "eval.bench.scale", "--child", *args],
        capture_output=True, text=True, cwd=common.REPO,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"scale child {args[0]} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(
    name: str, vectors: Path, queries: np.ndarray, folder: Path, more_nprobe: bool = False
) -> list[dict]:
    """Build the preset over ``vectors`` and search it with and without re-ranking; exact search for truth."""
    import time

    n, dim = np.load(vectors, mmap_mode="r").shape
    qpath = folder / "queries.npy"
    folder.mkdir(parents=True, exist_ok=True)
    np.save(qpath, queries)
    t = time.perf_counter()
    truth, flat_ms = exact(vectors, queries)
    log.info("%s: exact top-10 of %d queries in %.0f s (Flat %.2f ms/query)", name, len(queries),
             time.perf_counter() - t, flat_ms)  # fmt: skip
    build = _child("build", str(vectors), str(folder / "index"))
    log.info("%s: built %s in %.0f s, peak %.0f MiB", name, build["fields"]["factory"], build["build_s"],
             build["VmHWM"])  # fmt: skip
    rows = [{"set": name, "n": n, "index": "Flat (exact)", "recall": 1.0, "ms": flat_ms,
             "ram_mib": n * dim * 4 / 2**20, "disk_mib": n * dim * 4 / 2**20}]  # fmt: skip
    nprobe = build["fields"]["search"]["nprobe"]
    nlist = nlist_of(build["fields"]["factory"]) or 0
    # the preset (re-ranked), its shortlist alone, and (for the real vectors) other nprobes, re-ranked
    runs = [(True, nprobe), (False, nprobe)]
    runs += [(True, p) for p in (nlist // 8, nlist // 2) if more_nprobe and p not in (0, nprobe)]
    for refine, probe in runs:
        res = _child("search", str(folder / "index"), str(qpath), "1" if refine else "0", str(probe))
        label = (
            f"{build['fields']['factory']} + re-rank (preset large)" if refine else build["fields"]["factory"]
        )
        if probe != nprobe:
            label = f"{build['fields']['factory']} + re-rank, --nprobe {probe}"
        rows.append({"set": name, "n": n, "index": label, "recall": recall_at_10(truth, np.asarray(res["rows"])),
                     "ms": res["ms_per_query"], "nprobe": probe,
                     "search_peak_mib": res["VmHWM"], "rss_anon_mib": res["RssAnon"], "rss_file_mib": res["RssFile"],
                     "opened_mib": res["opened"]["VmHWM"], "index_mib": res["index_mib"],
                     "refine_mib": res["refine_mib"] if refine else 0.0,
                     "build_s": build["build_s"], "build_peak_mib": build["VmHWM"],
                     "build_anon_mib": build["RssAnon"]})  # fmt: skip
        log.info("%s: %s", name, rows[-1])
    return rows


def report(rows: list[dict], conditions: str) -> str:
    table = []
    for r in rows:
        flat = next(
            x for x in rows if (x["set"], x["n"]) == (r["set"], r["n"]) and x["index"].startswith("Flat")
        )
        if r["index"].startswith("Flat"):
            table.append([r["set"], f"{r['n']:,}", r["index"], "exact", f"{r['ms']:.3g}", "1x", "-", "-",
                          f"{r['ram_mib']:,.0f} (all in RAM)", "-"])  # fmt: skip
            continue
        table.append([r["set"], f"{r['n']:,}", r["index"], f"{r['recall']:.3f}", f"{r['ms']:.3g}",
                      f"{flat['ms'] / r['ms']:.3g}x",
                      f"{r['build_s']:.0f} s / {r['build_peak_mib']:,.0f} MiB (anon {r['build_anon_mib']:,.0f})",
                      f"{r['index_mib']:,.0f} + {r['refine_mib']:,.0f} mmap",
                      f"{r['search_peak_mib']:,.0f} (anon {r['rss_anon_mib']:,.0f}, file {r['rss_file_mib']:,.0f})",
                      r["nprobe"]])  # fmt: skip
    return "\n".join([
        "`python -m eval.bench.scale`: the `clir index --preset large` recipe (docs/large-indexes.md) built by "
        "clir's own code (`clir.index.presets.write_faiss`, what `clir index --preset large` runs after encoding) "
        "and opened as `clir search` opens it (refine vectors memory-mapped), against exact search (FAISS Flat "
        "over the same vectors). *real*: every passage of ../shared/data (collections + mono, deduplicated) "
        "encoded with multilingual-e5-small, queries: a seeded sample of 2,000 of the collections' query texts "
        "('query: ' prefix). *synthetic*: faiss_scaling's generator (dim 384), queries from the same "
        "distribution. k=10, one batch of queries, 2 FAISS threads; *search peak* = the search process's VmHWM "
        "(resident set incl. the touched pages of the memory-mapped file), its anonymous and file-backed parts "
        "at the end; *build* = wall time and VmHWM of the build process (training, adding, writing refine.npy; the "
        "input vectors are a memory-mapped file, so VmHWM counts their page cache too) and its anonymous memory at the end.",
        "",
        common.table(["vectors", "N", "index", "recall@10 vs exact", "ms/query", "vs Flat", "build (wall / peak)",
                      "index + refine on disk MiB", "search peak MiB", "nprobe"], table),  # fmt: skip
        "",
        conditions,
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    import argparse

    from eval.bench.faiss_scaling import Synthetic

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="*", default=[1_000_000], help="synthetic collection sizes")
    p.add_argument("--queries", type=int, default=1000, help="synthetic queries")
    p.add_argument("--no-real", action="store_true", help="skip the real e5-small vectors")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the synthetic vector files (GBs) for a rerun")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        if kind == "build":
            res = child_build(Path(rest[0]), Path(rest[1]))
        else:
            res = child_search(Path(rest[0]), Path(rest[1]), int(rest[3]), rest[2] == "1")
        print(json.dumps(res))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    common.quiet_libraries()
    load_before = common.load_avg()
    rows: list[dict] = []
    if not args.no_real:
        passages, queries = real_vectors()
        np.save(WORK / "real" / "passages.f32.npy", passages)
        rows += measure(
            "real (e5-small)",
            WORK / "real" / "passages.f32.npy",
            queries,
            WORK / "real-run",
            more_nprobe=True,
        )
    for n in args.sizes:
        path = _vectors_file(WORK, n)
        queries = Synthetic().draw(args.queries, stream=10**9 + n)
        try:
            rows += measure("synthetic", path, queries, WORK / f"synthetic-{n}")
        finally:
            if not args.keep:
                path.unlink(missing_ok=True)
        common.save_json("scale", rows)
    text = report(rows, common.conditions(load_before))
    print(text) if args.no_write else common.write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
