"""Benchmark 5 (GPU only): bf16 encode throughput of an mBERT-size encoder, as passages/s and MFU.

An mBERT-base-shaped BERT (12 layers, hidden 768, 12 heads, FFN 3072, vocabulary 119,547) with random
weights (speed does not depend on them) is encoded at 128 / 256 / 512 tokens per passage in two ways:

- **clir path**: ``DualEncoder.encode_passages`` (tokenising, length sorting, padding, bf16 autocast,
  pooling, copy back to numpy), texts long enough to be truncated to exactly the target length;
- **model only**: the same backbone's forward under bf16 autocast on ready-made token ids on the GPU (the
  ceiling the clir path can reach).

MFU = achieved FLOP/s over the GPU's dense bf16 peak (H100 SXM / H200: 989 TFLOP/s; pass --peak-tflops for
other cards). FLOPs per token (forward) = 2 x non-embedding parameters + 4 x layers x seq_len x hidden
(attention scores and weighted sum). Target: >= 40% MFU at 256 tokens. Runs in ~1-3 minutes.

    python -m eval.bench.gpu_encode            # writes the "GPU encoding" section of RESULTS.md
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from eval.bench import common

log = logging.getLogger(__name__)
TITLE = "GPU encoding (bf16, mBERT-size)"
PEAKS_TFLOPS = {
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "H200": 989.0,
    "GH200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
}
MBERT = {
    "vocab_size": 119_547,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
}
BATCH = {128: 256, 256: 128, 512: 64}


def peak_tflops(name: str) -> float | None:
    for key in sorted(PEAKS_TFLOPS, key=len, reverse=True):  # "H100 PCIe" before "H100"
        if key in name:
            return PEAKS_TFLOPS[key]
    return None


def build_model_dir(out: Path) -> Path:
    """A random mBERT-size backbone with a small WordPiece tokenizer (ids < 600 are valid in any vocab)."""
    import torch
    from transformers import BertConfig, BertModel

    from clir.testing import build_tiny_bert

    build_tiny_bert(out)  # for its tokenizer; the model is replaced below
    torch.manual_seed(0)
    BertModel(BertConfig(**MBERT), add_pooling_layer=False).save_pretrained(out)
    return out


def flops_per_token(model, seq_len: int) -> float:
    cfg = model.config
    non_embedding = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
    return 2 * non_embedding + 4 * cfg.num_hidden_layers * seq_len * cfg.hidden_size


def long_texts(n: int, seq_len: int) -> list[str]:
    from clir.testing import corpus_lines

    lines = corpus_lines()
    words_needed = seq_len  # a word is >= 1 token: enough words always truncate to seq_len
    out = []
    for i in range(n):
        words: list[str] = []
        j = i
        while len(words) < words_needed:
            words += lines[j % len(lines)].split()
            j += 7
        out.append(" ".join(words[: words_needed + 8]))
    return out


def timed(fn, repeats: int) -> float:
    import torch

    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def run(seq_lens: list[int], passages: int, repeats: int) -> dict[str, Any]:
    import torch

    from clir.model import load_encoder

    name = torch.cuda.get_device_name(0)
    with tempfile.TemporaryDirectory() as d:
        model_dir = build_model_dir(Path(d))
        rows = []
        for s in seq_lens:
            enc = load_encoder(
                str(model_dir),
                {"precision": "bf16", "pooling": "cls", "max_passage_length": s},
                device="cuda",
            )
            model = enc.passage_model
            bs = BATCH.get(s, 64)
            fpt = flops_per_token(model, s)
            texts = long_texts(passages, s)
            ntok = len(enc.tokenize(texts[:1], "passage", padding=False)["input_ids"][0])
            assert ntok == s, f"texts tokenise to {ntok} tokens, expected {s}"
            t_clir = timed(
                lambda t=texts, b=bs, e=enc: e.encode_passages(t, batch_size=b, show_progress=False), repeats
            )

            ids = torch.randint(5, 600, (bs, s), device="cuda")
            mask = torch.ones_like(ids)
            steps = max(1, passages // bs)

            def forward(ids=ids, mask=mask, steps=steps, m=model) -> None:
                with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
                    for _ in range(steps):
                        m(input_ids=ids, attention_mask=mask)

            t_model = timed(forward, repeats)
            for path, secs, n in (
                ("clir encode_passages", t_clir, passages),
                ("model forward only", t_model, steps * bs),
            ):
                rate = n / secs
                rows.append(
                    {
                        "seq_len": s,
                        "path": path,
                        "batch": bs,
                        "passages_per_s": rate,
                        "tflops": rate * s * fpt / 1e12,
                    }
                )
            log.info("%d tokens: %s", s, rows[-2:])
            torch.cuda.empty_cache()
    return {"device": name, "rows": rows}


def report(res: dict[str, Any], peak: float, load_before: str) -> str:
    rows = [
        [
            r["seq_len"],
            r["path"],
            r["batch"],
            f"{r['passages_per_s']:,.0f}",
            f"{r['tflops']:.0f}",
            f"{100 * r['tflops'] / peak:.1f}%",
        ]
        for r in res["rows"]
    ]
    at256 = [r for r in res["rows"] if r["seq_len"] == 256 and r["path"].startswith("clir")]
    verdict = ""
    if at256:
        mfu = 100 * at256[0]["tflops"] / peak
        verdict = f"clir path at 256 tokens: **{mfu:.1f}% MFU** (target >= 40%: {'met' if mfu >= 40 else 'not met'})."
    return "\n".join(
        [
            f"Device: {res['device']} (bf16 dense peak taken as {peak:.0f} TFLOP/s). mBERT-size random "
            "encoder, bf16 autocast; best of the timed repeats; FLOPs/token = 2 x non-embedding params + "
            "4 x layers x seq_len x hidden.",
            "",
            common.conditions(load_before),
            "",
            common.table(["tokens", "path", "batch", "passages/s", "TFLOP/s", "MFU"], rows),
            "",
            verdict,
        ]
    )


NOT_RUN = (
    "**Not run yet**: the machines these benchmarks were written on have no GPU (this session was not lent "
    "the GPU machine). On a CUDA machine run `python -m eval.bench.gpu_encode` (1-3 minutes); it replaces this "
    "section with passages/s and MFU at 128/256/512 tokens for the clir encode path and the bare model forward."
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.bench.gpu_encode", description=__doc__.split("\n")[0])
    p.add_argument("--seq-lens", type=int, nargs="+", default=[128, 256, 512])
    p.add_argument("--passages", type=int, default=4096, help="passages per timed run (default 4096)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak (default: from its name)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    common.quiet_libraries()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device here: the GPU benchmark did not run")
        if not args.no_write and f"## {TITLE}" not in (
            common.RESULTS.read_text() if common.RESULTS.is_file() else ""
        ):
            common.write_section(TITLE, NOT_RUN)
        return 0
    load_before = common.load_avg()
    res = run(args.seq_lens, args.passages, args.repeats)
    peak = args.peak_tflops or peak_tflops(res["device"])
    if peak is None:
        print(f"unknown GPU {res['device']!r}: pass --peak-tflops (dense bf16 peak) for the MFU column")
        peak = float("nan")
    common.save_json("gpu_encode", {**res, "peak_tflops": peak})
    body = report(res, peak, load_before)
    print(body)
    if not args.no_write:
        common.write_section(TITLE, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
