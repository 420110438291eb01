"""Benchmark 2: ``clir index`` end to end vs encoding the same texts alone (target: within 1.1x).

End to end = ``clir.index.build_index`` (what ``clir index`` runs): reading the collection, the encoder
fingerprint (hash of the weights, written to the manifest), chunked encoding with checkpoints, the FAISS
index, the doc store, docid and manifest, and the final rename. Pure encode = ``encode_passages`` on the
same texts with the same batch size. The two alternate; the encoder is loaded once (model loading is the
same fixed cost for both and is reported apart).

    python -m eval.bench.index_build          # ~2-5 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from eval.bench import common

log = logging.getLogger(__name__)
TITLE = "Index build vs pure encoding"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.bench.index_build", description=__doc__.split("\n")[0])
    p.add_argument("--lang", default="de", help="xquad-r language to index (default de: 1,276 passages)")
    p.add_argument("--factory", nargs="+", default=["Flat", "HNSW32"], help="FAISS factories to build")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-write", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    common.quiet_libraries()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    common.require_shared()
    from clir.data import load_collection

    load_before = common.load_avg()
    t = time.perf_counter()
    enc = common.e5_encoder("auto")
    t_load = time.perf_counter() - t
    src = common.XQUAD / args.lang
    texts = [d.full_text() for d in load_collection(str(src)).docs()]
    times, results = alternate_builds(args, enc, src, texts)
    rows, summary = breakdown(args.factory, times, results)
    body = "\n".join(
        [
            f"xquad-r/{args.lang} ({len(texts):,} passages), multilingual-e5-small (precision auto = bf16 here), "
            f"batch size {args.batch_size}; {args.rounds} alternating rounds, medians. Model loading "
            f"({t_load:.1f} s) is outside both. *Measured* = end-to-end time over pure-encode time, which on "
            "a shared machine also carries the run-to-run noise of the encoding itself; *pure encode + "
            "non-encoding work* adds to the pure-encode time only what build_index does besides encoding, "
            "timed inside each build. The fingerprint hashes all weights (~470 MB) once per process whatever "
            "the collection size, so the last column is the ratio large collections approach.",
            "",
            common.conditions(load_before),
            "",
            common.table(
                [
                    "run",
                    "seconds (median)",
                    "measured vs pure encode",
                    "of which encoding s",
                    "non-encoding work s",
                    "pure encode + non-encoding work",
                    "same, fingerprint excluded",
                ],
                rows,
            ),
            "",
        ]
    )
    if not args.no_write:
        common.save_json(
            "index_build",
            {"encode_s": times["encode_passages"], "builds": summary, "machine": common.machine()},
        )
    common.publish(TITLE, body, no_write=args.no_write)
    return 0


def alternate_builds(
    args: argparse.Namespace, enc: Any, src: Path, texts: list[str]
) -> tuple[dict[str, list[float]], dict[str, list[Any]]]:
    """Pure encoding and one build per factory, alternating: (seconds per contender, per factory the
    (fingerprint seconds, build result) of each build)."""
    from clir.index import IndexArgs, build_index

    work = Path(tempfile.mkdtemp(prefix="clir-bench-index-"))
    results: dict[str, list[Any]] = {}
    try:
        contenders = {"encode_passages": lambda: enc.encode_passages(texts, batch_size=args.batch_size)}
        for factory in args.factory:

            def build(f: str = factory):
                # every build pays the fingerprint, as each `clir index` process does
                enc.weights_changed()
                t = time.perf_counter()
                enc.fingerprint()
                t_fp = time.perf_counter() - t
                res = build_index(
                    IndexArgs(
                        collection=str(src),
                        model=str(common.E5_DIR),
                        out=str(work / f),
                        factory=f,
                        batch_size=args.batch_size,
                        overwrite=True,
                        overrides=common.E5_SETTINGS,
                    ),
                    encoder=enc,
                )
                results.setdefault(f, []).append((t_fp, res))

            contenders[f"build_index {factory}"] = build
        enc.encode_passages(texts[:64], batch_size=args.batch_size)  # warm-up
        times = common.alternate(contenders, rounds=args.rounds, warmup=0)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return times, results


def breakdown(
    factories: list[str], times: dict[str, list[float]], results: dict[str, list[Any]]
) -> tuple[list[list[str]], list[dict[str, Any]]]:
    """The table's rows and index_build.json's ``builds``: each build's time against pure encoding, and
    what it adds besides encoding."""
    enc_s = common.median(times["encode_passages"])
    rows = [["encode_passages (pure encode)", f"{enc_s:.1f}", "1.00x", f"{enc_s:.1f}", "-", "1.00x", "1.00x"]]
    summary = []
    for factory in factories:
        name = f"build_index {factory}"
        total = common.median(times[name])
        fp = common.median([x[0] for x in results[factory]])
        enc_in = common.median([x[1].seconds_encoding for x in results[factory]])
        # the work build_index adds to encoding, timed inside each build (immune to the encode-time noise
        # between runs that the end-to-end ratio carries on a shared machine)
        rest = common.median([x[1].seconds_total - x[1].seconds_encoding for x in results[factory]])
        rows.append(
            [
                f"`clir index --factory {factory}` (build_index)",
                f"{total:.1f}",
                f"{total / enc_s:.2f}x",
                f"{enc_in:.1f}",
                f"fingerprint {fp:.2f} + FAISS, doc store, manifest {rest:.2f}",
                f"{(enc_s + fp + rest) / enc_s:.3f}x",
                f"{(enc_s + rest) / enc_s:.3f}x",
            ]
        )
        summary.append(
            {
                "factory": factory,
                "total": total,
                "fingerprint": fp,
                "encode": enc_in,
                "rest": rest,
                "ratio": total / enc_s,
                "ratio_overhead": (enc_s + fp + rest) / enc_s,
                "ratio_overhead_without_fingerprint": (enc_s + rest) / enc_s,
            }
        )
    return rows, summary


if __name__ == "__main__":
    raise SystemExit(main())
