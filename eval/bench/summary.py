"""The "Summary" section at the top of RESULTS.md: the headline ratios against the targets, read from the raw
numbers the benchmarks saved last (``eval/bench/results/*.json``), and what made the difference.

    python -m eval.bench.summary          # run_all calls it at the end
"""

from __future__ import annotations

from typing import Any

from eval.bench import common

TITLE = "Summary"


def _met(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def _runs(res: dict[str, Any], name: str) -> str:
    return common.spread(res["rates"][name]["rates"])


def encoding_lines(d: dict[str, Any]) -> list[str]:
    out = []
    for set_name, res in d["main"].items():
        r = {k: v["median"] for k, v in res["rates"].items()}
        cos = res["min_cosine_vs_st_fp32"]
        ratio = r["clir bf16 (auto)"] / r["sentence-transformers fp32"]
        out.append(
            f"- Encoding, {set_name}: clir (default precision, bf16 autocast here) "
            f"**{ratio:.2f}x** sentence-transformers as shipped (fp32), min cosine "
            f"{cos['clir bf16 (auto)']:.5f} (target >= 1.5x with cosine >= 0.9999: "
            f"{_met(ratio >= 1.5 and cos['clir bf16 (auto)'] >= 0.9999)}). Same precision on both sides: "
            f"fp32 {r['clir fp32'] / r['sentence-transformers fp32']:.2f}x, bf16 autocast "
            f"{r['clir bf16 (auto)'] / r['sentence-transformers bf16 autocast']:.2f}x (medians; fp32 runs "
            f"{_runs(res, 'clir fp32')} vs {_runs(res, 'sentence-transformers fp32')} passages/s)."
        )
    pads = d.get("padding", {})
    if d.get("levers"):
        gains = "; ".join(f"{x['lever']}: {x['gain']:.2f}x" for x in d["levers"])
        out.append(f"- Encoding levers (clir A/B on the sentences set): {gains}.")
    if pads.get("sentences"):
        p = pads["sentences"]
        out.append(
            f"- Padding on the mixed-language sentences: {100 * p['tokens']:.0f}% of token slots when batches "
            f"are sorted by token count (clir's padded fallback; clir packs where the model allows, padding "
            f"nothing), {100 * p['chars']:.0f}% sorted by characters "
            f"(sentence-transformers), {100 * p['none']:.0f}% unsorted."
        )
    if d.get("omp"):
        o = {x["policy"]: x["median"] for x in d["omp"]}
        (k0, v0), (k1, v1) = list(o.items())[:2]
        out.append(
            f"- OpenMP wait policy (fresh processes; load average in its section): {k1} {v1 / v0:.2f}x the throughput of "
            f"{k0}."
        )
    return out


def contrastive_line(c: dict[str, Any]) -> str:
    before, fp32, bf16 = list(c)[:3]
    t = {k: common.median(v["times"][1:]) for k, v in c.items()}
    last = max(c[before]["dev"], key=int)
    ratio = t[before] / t[bf16]
    same = abs(c[bf16]["dev"][last] - c[before]["dev"][last]) < 0.01
    return (
        f"- Contrastive training (`clir train`, e5-small task adapter, batch 16 WikiQA): **{ratio:.2f}x** the "
        f"steps/s of the trainer before issue 31 at the new default on this CPU (packed, bf16 autocast), dev loss "
        f"{c[bf16]['dev'][last]:.4f} vs {c[before]['dev'][last]:.4f} after {last} steps (target >= 1.5x at equal "
        f"dev loss: {_met(ratio >= 1.5 and same)}); packed fp32 alone {t[before] / t[fp32]:.2f}x."
    )


def index_build_lines(ib: dict[str, Any]) -> list[str]:
    """index_build's ratio of a build to pure encoding, per factory."""
    lines: list[str] = []
    for b in ib["builds"]:
        ov = b["ratio_overhead"]
        lines.append(
            f"- `clir index --factory {b['factory']}` vs pure encoding of the same texts: pure encode + the "
            f"non-encoding work of the build = **{ov:.3f}x** ({b['fingerprint']:.2f} s weight fingerprint, "
            f"once per process; {b['rest']:.2f} s reading, FAISS, doc store, manifest), "
            f"{b['ratio_overhead_without_fingerprint']:.3f}x without the fingerprint; end-to-end time "
            f"measured {b['ratio']:.2f}x, encode-time noise included (target <= 1.1x: {_met(ov <= 1.1)})."
        )
    return lines


def search_lines(se: dict[str, Any]) -> list[str]:
    """search's ratios to Pyserini, and what the cached bf16 weight copies save."""
    lines: list[str] = []
    med = {k: common.median(v) for k, v in se["batch"].items()}
    clir_b = med["clir Searcher.batch_search"]
    wrapped = "Pyserini FaissSearcher.batch_search (clir encoder wrapped)"
    lat = {k: common.median(v) for k, v in se["wall_ms"].items()}
    line = (
        f"- Search (xquad-r/de): batch throughput **{med[wrapped] / clir_b:.2f}x** Pyserini's "
        f"FaissSearcher with the same encoder (it encodes per query)"
    )
    auto = "Pyserini FaissSearcher + its AutoQueryEncoder"
    if auto in med:
        line += f", {med[auto] / clir_b:.2f}x Pyserini with its own AutoQueryEncoder"
    wl = "Pyserini FaissSearcher.search (clir encoder wrapped)"
    line += (
        f"; single-query p50 {lat['clir Searcher.search']:.1f} ms vs {lat[wl]:.1f} ms (same encoder)"
        + (f" and {lat[auto]:.1f} ms (AutoQueryEncoder)" if auto in lat else "")
        + f"; MRR@100 {se['mrr']['clir Searcher.batch_search']:.4f} vs {se['mrr'][wrapped]:.4f}."
    )
    lines.append(line)
    cpu = {k: sum(v) / len(v) for k, v in se["cpu_ms"].items()}
    lines.append(
        "- Cached bf16 weight copies (this issue's encoder change): one-query CPU time "
        f"{cpu['clir Searcher.search']:.1f} ms vs {cpu['clir, autocast casting weights per call']:.1f} ms "
        "with autocast re-casting the weights per call; vectors bit-identical."
    )
    return lines


def faiss_lines(fs: dict[str, Any]) -> list[str]:
    """faiss_scaling's approximate indexes against Flat at the largest size."""
    lines: list[str] = []
    rows = [r for r in fs["rows"] if "skipped" not in r]
    big = max(r["n"] for r in rows)
    flat = next(r for r in rows if r["n"] == big and r["index"] == "Flat")
    for r in rows:
        if r["n"] == big and r["index"] != "Flat":
            lines.append(
                f"- FAISS at {big:,} synthetic passages: {r['index']} {r['bytes'] / 2**20:,.0f} MiB on disk "
                f"(Flat {flat['bytes'] / 2**20:,.0f} MiB), {flat['ms_per_query'] / r['ms_per_query']:.0f}x "
                "faster per query than Flat, recall@10 "
                + ", ".join(f"{k} {v:.2f}" for k, v in r["recall"].items())
                + "."
            )
    return lines


def int8_lines(i8: dict[str, Any]) -> list[str]:
    """int8's speed and quality against fp32 and bf16."""
    lines: list[str] = []
    t = {k: common.median(v) for k, v in i8["times"].items()}
    lines.append(
        f"- int8 dynamic quantisation: {t['fp32'] / t['int8 dynamic']:.2f}x fp32 and "
        f"{t['bf16 autocast (auto)'] / t['int8 dynamic']:.2f}x bf16 speed, MRR@100 on xquad-r/de "
        f"{i8['mrr']['int8 dynamic']:.4f} vs {i8['mrr']['bf16 autocast (auto)']:.4f} (bf16) and "
        f"{i8['mrr']['fp32']:.4f} (fp32); min cosine to fp32 {i8['cosine']['int8 dynamic']:.3f}: kept "
        "out of the default path."
    )
    return lines


#: the summary's closing paragraph: why clir's numbers are what they are
WHAT_MADE_THE_DIFFERENCE = (
    "**What made the difference.** On this CPU (AMX since 2026-12-04; AVX512-BF16 before), bf16 autocast (clir's `precision: auto`) "
    "gives the bulk of the encoding ratio over sentence-transformers as shipped, while keeping every vector "
    "within cosine 0.9999 of fp32. At equal precision the transformer's matrix products are the same on "
    "both sides, so what is left is padding: clir packs a batch's texts into one row with no padding (1.08x over its own padded batches sorted by token count), sentence-transformers sorts by "
    "characters, which on mixed-script collections leaves it much more padding (see the padding line); on "
    "long passages, where neither pads much, the two are even within run-to-run noise. Flush-denormal, SDPA "
    "(already transformers' default) and tokenisation (about 1% of the time, so no overlap thread) are "
    "small next to those, and their A/Bs move by ~10% from run to run. For search and serving, clir "
    "encodes a batch of queries in one call where Pyserini loops per query, and its encoder keeps bf16 "
    "copies of the weights between calls instead of autocast re-casting them on every request. "
    "Environment: `OMP_WAIT_POLICY=PASSIVE` is a trade: on a machine shared with other jobs (load 4-12, an "
    "earlier run) it gave 3.39x, because spinning OpenMP threads starve the thread that has work; on a "
    "quiet machine it costs a little (the OpenMP line above). `make bench` sets it for both sides of every "
    "comparison, so the ratios hold either way. FAISS IVF-PQ builds skip polysemous training (FAISS's "
    "factory default, unused by search): identical results, and in a one-off A/B here IVF64,PQ32 on 10k "
    "vectors trained and filled in 6.6 s instead of 77.7 s. Tried and left out: `torch.compile` (inductor, "
    "dynamic shapes; `encode_throughput --compile` measures it) of the bf16 encoder gave 1.06x on the "
    "sentences and 1.16x on the long passages over clir's eager path after 10 s of compiling (1.11x / "
    "1.16x with weight freezing, 17 s) in a one-off alternating A/B on the quiet machine (2026-11-26): too "
    "little for a compile per process and a C++ toolchain at run time."
)


def main(argv: list[str] | None = None) -> int:
    lines: list[str] = []
    enc = common.load_json("encode_throughput")
    if enc:
        lines += encoding_lines(enc)
    ib = common.load_json("index_build")
    if ib:
        lines += index_build_lines(ib)
    se = common.load_json("search")
    if se:
        lines += search_lines(se)
    fs = common.load_json("faiss_scaling")
    if fs:
        lines += faiss_lines(fs)
    i8 = common.load_json("int8")
    if i8 and i8.get("mrr"):
        lines += int8_lines(i8)
    ct = common.load_json("contrastive_train")
    if ct:
        lines.append(contrastive_line(ct["contenders"]))
    if "## REST serving" in (common.RESULTS.read_text(encoding="utf-8") if common.RESULTS.is_file() else ""):
        lines.append("- REST serving vs Pyserini's REST server: see the REST serving section (serve_load).")
    if common.load_json("gpu_encode") is None:
        lines.append("- GPU (MFU at 256 tokens, target >= 40%): not run here (no GPU); see its section.")
    lines += ["", WHAT_MADE_THE_DIFFERENCE]
    common.write_section(TITLE, "\n".join(lines), first=True)
    print(f"wrote the '{TITLE}' section of {common.RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
