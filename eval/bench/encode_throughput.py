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
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from eval.bench import common

log = logging.getLogger(__name__)
TITLE = "Encoding throughput"


# ---------------------------------------------------------------------------------------------- contenders
def build_sentence_transformer(model_dir: str, max_length: int):
    """The peer: sentence-transformers on the same folder, e5's recipe (mean pooling + L2 normalisation)."""
    try:
        from sentence_transformers import SentenceTransformer, models
    except ImportError:
        from clir.errors import ClirError

        raise ClirError("the encoding benchmark's peer is missing: pip install 'clir[bench]'") from None

    word = models.Transformer(model_dir, max_seq_length=max_length)
    # the newer name where it exists: the old one warns when looked up
    dim = (getattr(word, "get_embedding_dimension", None) or word.get_word_embedding_dimension)()
    pool = models.Pooling(dim, pooling_mode="mean")
    return SentenceTransformer(modules=[word, pool, models.Normalize()], device="cpu")


def st_encode(st, texts: list[str], batch_size: int, *, bf16: bool = False) -> np.ndarray:
    """``SentenceTransformer.encode`` with the e5 passage prompt; ``bf16`` wraps it in the same CPU bf16
    autocast clir uses (sentence-transformers has no precision setting of its own for autocast)."""
    import torch

    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with ctx:
        return st.encode(
            texts, prompt="passage: ", batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False
        )


def clir_encode(enc, texts: list[str], batch_size: int, precision: str) -> np.ndarray:
    enc.config.precision = precision  # read on every encode() call
    return enc.encode_passages(texts, batch_size=batch_size, show_progress=False)


def clir_unbucketed(enc, texts: list[str], batch_size: int, precision: str) -> np.ndarray:
    """clir without length bucketing: batches in input order (each call sees one batch, so no sorting)."""
    enc.config.precision = precision
    parts = [
        enc.encode_passages(texts[i : i + batch_size], batch_size=batch_size, show_progress=False)
        for i in range(0, len(texts), batch_size)
    ]
    return np.concatenate(parts)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


def padding_share(tokenizer, texts: list[str], batch_size: int, key: str) -> float:
    """Fraction of the token slots in padded batches that are padding, when batches are formed by sorting
    on ``key`` ("tokens": clir; "chars": sentence-transformers sorts by string length; "none": input order)."""
    lens = [
        len(x)
        for x in tokenizer(["passage: " + t for t in texts], truncation=True, max_length=256)["input_ids"]
    ]
    idx = list(range(len(texts)))
    if key == "tokens":
        idx.sort(key=lambda i: -lens[i])
    elif key == "chars":
        idx.sort(key=lambda i: -len(texts[i]))
    slots = real = 0
    for s in range(0, len(idx), batch_size):
        b = [lens[i] for i in idx[s : s + batch_size]]
        slots += max(b) * len(b)
        real += sum(b)
    return 1 - real / slots


# ---------------------------------------------------------------------------------------------- measuring
def measure(contenders: dict[str, Callable[[], Any]], n: int, rounds: int) -> dict[str, dict[str, Any]]:
    times = common.alternate(contenders, rounds=rounds, warmup=0)
    return {
        name: {"rates": [n / t for t in ts], "median": n / common.median(ts), "seconds": ts}
        for name, ts in times.items()
    }


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


def levers(enc, texts: list[str], bs: int, rounds: int, *, compile_: bool) -> list[dict[str, Any]]:
    """What each speed lever gives, as an A/B of clir with and without it (bf16, the default here)."""
    import torch

    rows: list[dict[str, Any]] = []
    n = len(texts)

    def ab(name: str, with_: Callable[[], Any], without: Callable[[], Any], note: str = "") -> None:
        r = measure({"with": with_, "without": without}, n, rounds)
        rows.append(
            {
                "lever": name,
                "with": r["with"]["median"],
                "without": r["without"]["median"],
                "gain": r["with"]["median"] / r["without"]["median"],
                "note": note,
            }
        )
        log.info("lever %s: %.2fx", name, rows[-1]["gain"])

    ab(
        "bf16 autocast (precision auto on this CPU)",
        lambda: clir_encode(enc, texts, bs, "bf16"),
        lambda: clir_encode(enc, texts, bs, "fp32"),
    )
    enc.encode_passages(texts[:2], show_progress=False)  # the packing probe runs outside the timings

    def padded() -> None:  # packing switched off: batches of one padded width, as before packing
        enc.allow_packing = False
        try:
            clir_encode(enc, texts, bs, "bf16")
        finally:
            enc.allow_packing = True

    ab(
        "packed batches (clir.model.packing)",
        lambda: clir_encode(enc, texts, bs, "bf16"),
        padded,
        "without: batches of one padded width each",
    )
    ab(
        "length bucketing (sort by token count)",
        lambda: clir_encode(enc, texts, bs, "bf16"),
        lambda: clir_unbucketed(enc, texts, bs, "bf16"),
        "without: batches in input order",
    )

    def no_flush() -> None:
        torch.set_flush_denormal(False)
        try:
            clir_encode(enc, texts, bs, "bf16")
        finally:
            torch.set_flush_denormal(True)

    ab("flush denormals", lambda: clir_encode(enc, texts, bs, "bf16"), no_flush)

    threads = torch.get_num_threads()
    if threads > 1:

        def one_thread() -> None:
            torch.set_num_threads(1)
            try:
                clir_encode(enc, texts, bs, "bf16")
            finally:
                torch.set_num_threads(threads)

        ab(f"{threads} torch threads vs 1", lambda: clir_encode(enc, texts, bs, "bf16"), one_thread)

    # SDPA is transformers' default for BERT; the A/B swaps in a backbone with the eager attention
    from transformers import AutoModel

    sdpa = enc.passage_model
    eager = AutoModel.from_pretrained(
        str(common.E5_DIR), add_pooling_layer=False, attn_implementation="eager"
    ).eval()

    def with_eager() -> None:
        enc.query_model = enc.passage_model = eager
        try:
            clir_encode(enc, texts, bs, "bf16")
        finally:
            enc.query_model = enc.passage_model = sdpa

    ab(
        "SDPA attention (transformers default)",
        lambda: clir_encode(enc, texts, bs, "bf16"),
        with_eager,
        "without: eager attention, which cannot be packed (padded batches)",
    )

    # tokenisation runs once, up front, for the whole call (the Rust tokenizer); its share of the encode
    # time bounds what overlapping it with compute could save
    t = time.perf_counter()
    for _ in range(3):
        enc.tokenize(texts, "passage", padding=False)
    t_tok = (time.perf_counter() - t) / 3
    t_enc = n / rows[0]["with"]
    rows.append(
        {
            "lever": "tokenisation overlapped with compute (upper bound)",
            "with": None,
            "without": None,
            "gain": t_enc / max(t_enc - t_tok, 1e-9),
            "note": f"tokenising takes {100 * t_tok / t_enc:.1f}% of encode time: not worth a thread",
        }
    )

    if compile_:
        eager_model = enc.passage_model
        t = time.perf_counter()
        compiled = torch.compile(eager_model, dynamic=True)
        enc.query_model = enc.passage_model = compiled
        clir_encode(enc, texts, bs, "bf16")
        t_compile = time.perf_counter() - t

        def eager_run() -> None:
            enc.query_model = enc.passage_model = eager_model
            try:
                clir_encode(enc, texts, bs, "bf16")
            finally:
                enc.query_model = enc.passage_model = compiled

        ab(
            "torch.compile (inductor, dynamic shapes)",
            lambda: clir_encode(enc, texts, bs, "bf16"),
            eager_run,
            f"compiling took {t_compile:.0f} s",
        )
        enc.query_model = enc.passage_model = eager_model
    return rows


def omp_wait_policy(per_lang: int, rounds: int) -> list[dict[str, Any]]:
    """OMP_WAIT_POLICY is read when the OpenMP runtime loads, so each setting runs in a fresh process."""
    variants = {"default (spin, then sleep)": None, "PASSIVE (sleep at once)": "PASSIVE"}
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(rounds):
        names = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in names:
            env = dict(os.environ)
            env.pop("OMP_WAIT_POLICY", None)
            if variants[name]:
                env["OMP_WAIT_POLICY"] = variants[name]
            res = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "eval.bench.encode_throughput",
                    "--worker",
                    "--per-lang",
                    str(per_lang),
                ],
                capture_output=True,
                text=True,
                env=env,
                cwd=common.REPO,
                check=True,
            )
            rates[name].append(json.loads(res.stdout.strip().splitlines()[-1])["rate"])
    return [{"policy": k, "median": common.median(v), "rates": v} for k, v in rates.items()]


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
        lines += [
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
    lines += ["![encoding throughput](encode_throughput.png)", ""]
    if pads:
        lines += [
            "Padding share of the token slots (batch size "
            f"{args.batch_size}): "
            + "; ".join(
                f"{s}: sorted by tokens (clir's padded fallback; its packed batches pad nothing) "
                f"{100 * p['tokens']:.1f}%, by characters (sentence-transformers) "
                f"{100 * p['chars']:.1f}%, input order {100 * p['none']:.1f}%"
                for s, p in pads.items()
            ),
            "",
        ]
    if lever_rows:
        lines += [
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
    if omp:
        base = omp[0]["median"]
        lines += [
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
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
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
    args = p.parse_args(argv)
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
        # one lever round ~ 14 bf16 encodes of the sentence set (fp32, unbucketed and 1-thread runs are slower)
        t_bf16 = len(sets["sentences"]) / main_res["sentences"]["rates"]["clir bf16 (auto)"]["median"]
        left = args.budget - (time.perf_counter() - t0)
        lever_rounds = max(1, min(args.rounds, int(0.7 * left // (14 * t_bf16))))
        lever_rows = levers(enc, sets["sentences"], args.batch_size, lever_rounds, compile_=args.compile)
        left = args.budget - (time.perf_counter() - t0)
        if left > 4 * (15 + 3 * t_bf16):  # 4 fresh processes: model load + 3 encodes each
            omp = omp_wait_policy(args.per_lang, 2)
        else:
            log.info("OMP_WAIT_POLICY A/B skipped: %.0f s left in the budget", left)
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
    if args.no_write:
        print(body)
    else:
        plot(main_res, common.BENCH_DIR / "encode_throughput.png")
        common.write_section(TITLE, body)
        print(f"wrote the '{TITLE}' section of {common.RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
