"""Benchmark 1: passage-encoding throughput, clir vs sentence-transformers, and what each speed lever gives.

Both encoders load the same folder (multilingual-e5-small): clir's ``DualEncoder.encode_passages`` and a
``SentenceTransformer`` built from ``Transformer + Pooling(mean) + Normalize`` modules, on the same texts, with
the same batch size, the same maximum length and the same ``"passage: "`` prefix. Contenders alternate
(A B A B ...) and medians are reported; every clir variant's vectors are compared with sentence-transformers'
fp32 vectors (cosine per text).

    python -m eval.bench.encode_throughput            # ~5-8 minutes on 2 busy cores
    python -m eval.bench.encode_throughput --quick    # a smoke run (tiny sets, no levers)
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from eval.bench import common
from eval.bench.encode_contenders import (
    build_sentence_transformer,
    clir_encode,
    cosines,
    measure,
    padding_share,
    st_encode,
)
from eval.bench.encode_levers import levers, omp_wait_policy

log = logging.getLogger(__name__)
TITLE = "Encoding throughput"


# ---------------------------------------------------------------------------------------------- measuring
def main_comparison(
    enc, st, sets: dict[str, list[str]], bs: int, rounds: int, budget_s: float
) -> dict[str, Any]:
    """Alternating runs of the four contenders on every set. The first, untimed pass (warm-up + the vectors
    for the agreement check) also prices one round, so the number of timed rounds fits ``budget_s``."""
    import time

    t0 = time.perf_counter()
    contenders: dict[str, dict[str, Callable[[], Any]]] = {}
    vectors: dict[str, dict[str, np.ndarray]] = {}
    for set_name, texts in sets.items():
        fns = {
            "clir fp32": lambda t=texts: clir_encode(enc, t, bs, "fp32"),
            "sentence-transformers fp32": lambda t=texts: st_encode(st, t, bs),
            "clir bf16 (auto)": lambda t=texts: clir_encode(enc, t, bs, "bf16"),
            "sentence-transformers bf16 autocast": lambda t=texts: st_encode(st, t, bs, bf16=True),
        }
        contenders[set_name] = fns
        vectors[set_name] = {name: fn() for name, fn in fns.items()}
    round_s = time.perf_counter() - t0
    fit = int((budget_s - round_s) // max(round_s, 1e-9))
    rounds = max(1, min(rounds, fit))
    log.info("one round takes %.0f s: %d timed round(s) fit the %.0f s budget", round_s, rounds, budget_s)
    out: dict[str, Any] = {}
    for set_name, texts in sets.items():
        rates = measure(contenders[set_name], len(texts), rounds)
        ref = vectors[set_name]["sentence-transformers fp32"]
        agree = {name: float(cosines(v, ref).min()) for name, v in vectors[set_name].items()}
        out[set_name] = {"rates": rates, "min_cosine_vs_st_fp32": agree, "n": len(texts), "rounds": rounds}
        log.info("%s: %s", set_name, {k: round(v["median"], 1) for k, v in rates.items()})
    return out


def worker(per_lang: int) -> None:
    """One process, one rate (for the OMP_WAIT_POLICY A/B): clir bf16 on the sentence set, best of 2."""
    enc = common.e5_encoder("auto")
    texts = common.sentence_texts(per_lang)
    clir_encode(enc, texts[:32], 32, "auto")
    best = 0.0
    for _ in range(2):
        t = time.perf_counter()
        clir_encode(enc, texts, 32, "auto")
        best = max(best, len(texts) / (time.perf_counter() - t))
    print(json.dumps({"rate": best}))


# ---------------------------------------------------------------------------------------------- report
def plot(main: dict[str, Any], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(main)
    names = list(main[sets[0]]["rates"])
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 3.6))
    for ax, s in zip(np.atleast_1d(axes), sets, strict=True):
        meds = [main[s]["rates"][n]["median"] for n in names]
        colors = ["tab:blue" if n.startswith("clir") else "tab:gray" for n in names]
        ax.barh(range(len(names)), meds, color=colors)
        for i, n in enumerate(names):
            rates = main[s]["rates"][n]["rates"]
            ax.plot(rates, [i] * len(rates), "k.", ms=4)
        ax.set_yticks(range(len(names)), [n.replace("sentence-transformers", "ST") for n in names])
        ax.set_xlabel("passages / s (bars: median, dots: runs)")
        ax.set_title(f"{s} (n={main[s]['n']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(
    main: dict[str, Any],
    lever_rows: list[dict[str, Any]],
    omp: list[dict[str, Any]],
    pads: dict[str, dict[str, float]],
    args,
    load_before: str,
) -> str:
    lines = [
        f"clir `DualEncoder.encode_passages` vs sentence-transformers `SentenceTransformer.encode` on "
        f"`{common.E5_DIR.name}` (mean pooling + L2 norm), batch size {args.batch_size}, max length 256, "
        '"passage: " prefix on both. Sets: **sentences** = xquad-r sentences from all 10 languages '
        f"({args.per_lang} per language, interleaved); **long passages** = consecutive xquad-r sentences "
        "joined to 200-300 tokens. Alternating runs, "
        f"{next(iter(main.values()))['rounds']} timed each (cut to fit --budget); *ratio* = passages/s over "
        "sentence-transformers fp32 (as shipped) / with the same bf16 autocast as clir; "
        "*min cosine* = lowest per-text cosine against sentence-transformers fp32 vectors.",
        "",
        common.conditions(load_before),
        "",
    ]
    for set_name, res in main.items():
        lines += set_table(set_name, res)
    lines += ["![encoding throughput](encode_throughput.png)", ""]
    if pads:
        lines += padding_lines(pads, args.batch_size)
    if lever_rows:
        lines += lever_lines(lever_rows)
    if omp:
        lines += omp_lines(omp)
    return "\n".join(lines)


def set_table(set_name: str, res: dict[str, Any]) -> list[str]:
    """One text set's contenders: rates, ratios to sentence-transformers, agreement with its fp32 vectors."""
    st32 = res["rates"]["sentence-transformers fp32"]["median"]
    st16 = res["rates"]["sentence-transformers bf16 autocast"]["median"]
    rows = []
    for name, r in res["rates"].items():
        rows.append(
            [
                name,
                f"{r['median']:.1f}",
                common.spread(r["rates"]),
                f"{r['median'] / st32:.2f}x",
                f"{r['median'] / st16:.2f}x",
                f"{res['min_cosine_vs_st_fp32'][name]:.6f}",
            ]
        )
    return [
        f"**{set_name}** ({res['n']} texts)",
        "",
        common.table(
            [
                "encoder",
                "passages/s (median)",
                "runs",
                "ratio vs ST fp32",
                "ratio vs ST bf16",
                "min cosine vs ST fp32",
            ],
            rows,
        ),
        "",
    ]


def padding_lines(pads: dict[str, dict[str, float]], batch_size: int) -> list[str]:
    return [
        "Padding share of the token slots (batch size "
        f"{batch_size}): "
        + "; ".join(
            f"{s}: sorted by tokens (clir's padded fallback; its packed batches pad nothing) "
            f"{100 * p['tokens']:.1f}%, by characters (sentence-transformers) "
            f"{100 * p['chars']:.1f}%, input order {100 * p['none']:.1f}%"
            for s, p in pads.items()
        ),
        "",
    ]


def lever_lines(lever_rows: list[dict[str, Any]]) -> list[str]:
    return [
        "**Levers** (clir on the sentences set, A/B alternated; bf16 unless named):",
        "",
        common.table(
            ["lever", "with (p/s)", "without (p/s)", "gain", "note"],
            [
                [
                    r["lever"],
                    "-" if r["with"] is None else f"{r['with']:.1f}",
                    "-" if r["without"] is None else f"{r['without']:.1f}",
                    f"{r['gain']:.2f}x",
                    r["note"],
                ]
                for r in lever_rows
            ],
        ),
        "",
    ]


def omp_lines(omp: list[dict[str, Any]]) -> list[str]:
    base = omp[0]["median"]
    return [
        "**OpenMP wait policy** (fresh process per run, clir bf16, sentences; read at library load, so "
        "it is an environment setting, not an encoder one):",
        "",
        common.table(
            ["OMP_WAIT_POLICY", "passages/s (median)", "runs", "vs default"],
            [
                [
                    o["policy"],
                    f"{o['median']:.1f}",
                    common.spread(o["rates"]),
                    f"{o['median'] / base:.2f}x",
                ]
                for o in omp
            ],
        ),
        "",
    ]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m eval.bench.encode_throughput", description=__doc__.split("\n")[0]
    )
    p.add_argument("--per-lang", type=int, default=30, help="sentences per xquad-r language (default 30)")
    p.add_argument("--long", type=int, default=40, help="long passages (default 40)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5, help="most timed runs per contender (default 5)")
    p.add_argument(
        "--budget",
        type=float,
        default=500,
        help="seconds for the measurements (default 500); rounds are cut to fit, at least one is run",
    )
    p.add_argument("--no-levers", action="store_true", help="skip the lever A/Bs")
    p.add_argument(
        "--compile", action="store_true", help="also measure torch.compile (compiling takes minutes)"
    )
    p.add_argument("--quick", action="store_true", help="smoke run: tiny sets, 1 round, no levers")
    p.add_argument("--no-write", action="store_true", help="print the section instead of writing RESULTS.md")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    common.quiet_libraries()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    common.require_shared()
    if args.worker:
        worker(args.per_lang)
        return 0
    if args.quick:
        args.per_lang, args.long, args.rounds, args.no_levers = 4, 8, 1, True

    load_before = common.load_avg()
    enc = common.e5_encoder("auto")
    st = build_sentence_transformer(str(common.E5_DIR), enc.config.max_passage_length)
    sets = {
        "sentences": common.sentence_texts(args.per_lang),
        "long passages": common.long_passages(args.long, enc.tokenizer),
    }
    pads = {
        s: {k: padding_share(enc.tokenizer, t, args.batch_size, k) for k in ("tokens", "chars", "none")}
        for s, t in sets.items()
    }
    t0 = time.perf_counter()
    main_res = main_comparison(
        enc, st, sets, args.batch_size, args.rounds, args.budget * (1.0 if args.no_levers else 0.55)
    )
    del st
    lever_rows: list[dict[str, Any]] = []
    omp: list[dict[str, Any]] = []
    if not args.no_levers:
        lever_rows, omp = lever_runs(args, enc, sets["sentences"], main_res, t0)
    write(args, main_res, lever_rows, omp, pads, load_before)
    return 0


def lever_runs(
    args: argparse.Namespace, enc, sentences: list[str], main_res: dict[str, Any], t0: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The lever A/Bs, then the OpenMP A/B if the budget still holds it (both sized to what is left)."""
    omp: list[dict[str, Any]] = []
    # one lever round ~ 14 bf16 encodes of the sentence set (fp32, unbucketed and 1-thread runs are slower)
    t_bf16 = len(sentences) / main_res["sentences"]["rates"]["clir bf16 (auto)"]["median"]
    left = args.budget - (time.perf_counter() - t0)
    lever_rounds = max(1, min(args.rounds, int(0.7 * left // (14 * t_bf16))))
    lever_rows = levers(enc, sentences, args.batch_size, lever_rounds, compile_=args.compile)
    left = args.budget - (time.perf_counter() - t0)
    if left > 4 * (15 + 3 * t_bf16):  # 4 fresh processes: model load + 3 encodes each
        omp = omp_wait_policy(args.per_lang, 2)
    else:
        log.info("OMP_WAIT_POLICY A/B skipped: %.0f s left in the budget", left)
    return lever_rows, omp


def write(
    args: argparse.Namespace,
    main_res: dict[str, Any],
    lever_rows: list[dict[str, Any]],
    omp: list[dict[str, Any]],
    pads: dict[str, dict[str, float]],
    load_before: str,
) -> None:
    """The numbers to eval/bench/results, the plot and the section to RESULTS.md (printed with --no-write)."""
    if not args.no_write:
        common.save_json(
            "encode_throughput",
            {
                "main": main_res,
                "levers": lever_rows,
                "omp": omp,
                "padding": pads,
                "machine": common.machine(),
            },
        )
    body = report(main_res, lever_rows, omp, pads, args, load_before)
    if not args.no_write:
        plot(main_res, common.BENCH_DIR / "encode_throughput.png")
    common.publish(TITLE, body, no_write=args.no_write)


if __name__ == "__main__":
    raise SystemExit(main())
