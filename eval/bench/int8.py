"""Benchmark 1b (optional path): int8 dynamic quantisation of the encoder's Linear layers, speed and quality.

``torch.ao.quantization.quantize_dynamic`` (int8 weights, activations quantised on the fly) applied to the
e5-small backbone that clir loads, vs the same encoder in fp32 and in bf16 autocast (clir's default on this
CPU). Speed: passages/s on xquad-r sentences, alternating. Quality: MRR@100 of English queries against
xquad-r/de passages (exact inner-product search), the reference being 0.767 for e5-small; plus the cosine of
each text's vector to the fp32 one. Reported apart from the main comparison: int8 changes the vectors.

    python -m eval.bench.int8          # ~3-6 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import copy
import logging
import warnings
from typing import Any

import numpy as np

from eval.bench import common

log = logging.getLogger(__name__)
TITLE = "int8 dynamic quantisation (optional path)"


def quantized_encoder(enc):
    """A copy of ``enc`` whose backbone has int8 dynamically quantised Linear layers (fp32 elsewhere)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        from torch.ao.quantization import quantize_dynamic

        q = quantize_dynamic(copy.deepcopy(enc.passage_model), {torch.nn.Linear}, dtype=torch.qint8)
    out = enc.replica()  # its own settings and caches over the same tokenizer
    out.config.precision = "fp32"  # int8 kernels take fp32 activations; bf16 autocast does not apply
    out.query_model = out.passage_model = q
    return out


def mrr_at_100(enc, lang: str = "de") -> float:
    from clir.data import load_collection, load_qrels, load_queries
    from clir.metrics import evaluate

    src = str(common.XQUAD / lang)
    docs = list(load_collection(src).docs())
    queries = load_queries(src)
    d = enc.encode_passages([x.full_text() for x in docs], show_progress=False)
    q = enc.encode_queries([x.text for x in queries], show_progress=False)
    scores = q @ d.T
    top = np.argsort(-scores, axis=1)[:, :100]
    run = {qq.query_id: {docs[j].doc_id: float(scores[i, j]) for j in top[i]} for i, qq in enumerate(queries)}
    return evaluate(run, load_qrels(src), ["mrr@100"])["mrr@100"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.bench.int8", description=__doc__.split("\n")[0])
    p.add_argument("--per-lang", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-quality", action="store_true", help="skip the MRR@100 runs")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    common.quiet_libraries()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    common.require_shared()
    load_before = common.load_avg()
    fp32 = common.e5_encoder("fp32")
    bf16 = fp32.replica()  # the same weights, its own settings and bf16 weight copies
    bf16.config.precision = "auto"
    int8 = quantized_encoder(fp32)
    variants = {"fp32": fp32, "bf16 autocast (auto)": bf16, "int8 dynamic": int8}
    texts = common.sentence_texts(args.per_lang)
    ref = fp32.encode_passages(texts, show_progress=False)
    cos = {}
    for name, e in variants.items():
        v = e.encode_passages(texts, show_progress=False)  # also the warm-up
        cos[name] = float(((v * ref).sum(1)).min())
    times = common.alternate(
        {name: (lambda e=e: e.encode_passages(texts, show_progress=False)) for name, e in variants.items()},
        rounds=args.rounds,
        warmup=0,
    )
    mrr: dict[str, Any] = {}
    if not args.no_quality:
        for name, e in variants.items():
            mrr[name] = mrr_at_100(e)
            log.info("MRR@100 %s: %.4f", name, mrr[name])
    n = len(texts)
    base = n / common.median(times["fp32"])
    rows = [
        [
            name,
            f"{n / common.median(ts):.1f}",
            common.spread([n / t for t in ts]),
            f"{n / common.median(ts) / base:.2f}x",
            f"{cos[name]:.4f}",
            f"{mrr[name]:.4f}" if name in mrr else "-",
        ]
        for name, ts in times.items()
    ]
    body = "\n".join(
        [
            f"e5-small passage encoder, {n} xquad-r sentences (all languages), batch size 32, "
            f"{args.rounds} alternating rounds; quality = MRR@100 of English queries on xquad-r/de (reference "
            "0.767), min cosine = lowest per-text cosine to the fp32 vectors.",
            "",
            common.conditions(load_before),
            "",
            common.table(
                ["encoder", "passages/s (median)", "runs", "vs fp32", "min cosine vs fp32", "MRR@100 de"],
                rows,
            ),
            "",
        ]
    )
    if not args.no_write:
        common.save_json("int8", {"times": times, "cosine": cos, "mrr": mrr, "machine": common.machine()})
    common.publish(TITLE, body, no_write=args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
