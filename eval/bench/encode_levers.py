"""What each speed lever of clir's encoder gives (eval.bench.encode_throughput): A/Bs of clir with and
without it, and the OpenMP wait policy, which needs a fresh process per setting."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from eval.bench import common
from eval.bench.encode_contenders import clir_encode, clir_unbucketed, measure

log = logging.getLogger("eval.bench.encode_throughput")


@dataclasses.dataclass
class LeverAB:
    """A/Bs of clir with and without one lever at a time on one text set (bf16 unless named); a row each."""

    enc: Any
    texts: list[str]
    bs: int
    rounds: int
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def bf16(self) -> None:
        """The "with" side of most levers: clir as it runs by default here."""
        clir_encode(self.enc, self.texts, self.bs, "bf16")

    def bf16_with(self, model: Any) -> Callable[[], None]:
        """The bf16 run with ``model`` as the encoder's (both sides), the encoder's own put back after."""

        def run() -> None:
            enc, keep = self.enc, self.enc.passage_model
            enc.query_model = enc.passage_model = model
            try:
                self.bf16()
            finally:
                enc.query_model = enc.passage_model = keep

        return run

    def ab(self, name: str, with_: Callable[[], Any], without: Callable[[], Any], note: str = "") -> None:
        r = measure({"with": with_, "without": without}, len(self.texts), self.rounds)
        self.rows.append(
            {
                "lever": name,
                "with": r["with"]["median"],
                "without": r["without"]["median"],
                "gain": r["with"]["median"] / r["without"]["median"],
                "note": note,
            }
        )
        log.info("lever %s: %.2fx", name, self.rows[-1]["gain"])


def levers(enc, texts: list[str], bs: int, rounds: int, *, compile_: bool) -> list[dict[str, Any]]:
    """What each speed lever gives, as an A/B of clir with and without it (bf16, the default here)."""
    lab = LeverAB(enc, texts, bs, rounds)
    precision_and_batching(lab)
    runtime_settings(lab)
    attention(lab)
    tokenisation(lab)
    if compile_:
        compiled(lab)
    return lab.rows


def precision_and_batching(lab: LeverAB) -> None:
    """bf16 autocast, packed batches and length bucketing."""
    enc, texts, bs = lab.enc, lab.texts, lab.bs
    lab.ab(
        "bf16 autocast (precision auto on this CPU)",
        lambda: clir_encode(enc, texts, bs, "bf16"),
        lambda: clir_encode(enc, texts, bs, "fp32"),
    )
    enc.encode_passages(texts[:2], show_progress=False)  # the packing probe runs outside the timings

    def padded() -> None:  # packing switched off: batches of one padded width, as before packing
        enc.allow_packing = False
        try:
            lab.bf16()
        finally:
            enc.allow_packing = True

    lab.ab(
        "packed batches (clir.model.packing)",
        lab.bf16,
        padded,
        "without: batches of one padded width each",
    )
    lab.ab(
        "length bucketing (sort by token count)",
        lab.bf16,
        lambda: clir_unbucketed(enc, texts, bs, "bf16"),
        "without: batches in input order",
    )


def runtime_settings(lab: LeverAB) -> None:
    """Flush-denormal and torch's thread count: process settings, not encoder ones."""
    import torch

    def no_flush() -> None:
        torch.set_flush_denormal(False)
        try:
            lab.bf16()
        finally:
            torch.set_flush_denormal(True)

    lab.ab("flush denormals", lab.bf16, no_flush)

    threads = torch.get_num_threads()
    if threads > 1:

        def one_thread() -> None:
            torch.set_num_threads(1)
            try:
                lab.bf16()
            finally:
                torch.set_num_threads(threads)

        lab.ab(f"{threads} torch threads vs 1", lab.bf16, one_thread)


def attention(lab: LeverAB) -> None:
    """SDPA is transformers' default for BERT; the A/B swaps in a backbone with the eager attention."""
    from transformers import AutoModel

    eager = AutoModel.from_pretrained(
        str(common.E5_DIR), add_pooling_layer=False, attn_implementation="eager"
    ).eval()
    lab.ab(
        "SDPA attention (transformers default)",
        lab.bf16,
        lab.bf16_with(eager),
        "without: eager attention, which cannot be packed (padded batches)",
    )


def tokenisation(lab: LeverAB) -> None:
    """Tokenisation runs once, up front, for the whole call (the Rust tokenizer); its share of the encode
    time bounds what overlapping it with compute could save."""
    t = time.perf_counter()
    for _ in range(3):
        lab.enc.tokenize(lab.texts, "passage", padding=False)
    t_tok = (time.perf_counter() - t) / 3
    t_enc = len(lab.texts) / lab.rows[0]["with"]
    lab.rows.append(
        {
            "lever": "tokenisation overlapped with compute (upper bound)",
            "with": None,
            "without": None,
            "gain": t_enc / max(t_enc - t_tok, 1e-9),
            "note": f"tokenising takes {100 * t_tok / t_enc:.1f}% of encode time: not worth a thread",
        }
    )


def compiled(lab: LeverAB) -> None:
    """torch.compile of the bf16 encoder against the eager one (compiling takes minutes)."""
    import torch

    enc = lab.enc
    eager_model = enc.passage_model
    t = time.perf_counter()
    model = torch.compile(eager_model, dynamic=True)
    enc.query_model = enc.passage_model = model
    lab.bf16()
    t_compile = time.perf_counter() - t
    lab.ab(
        "torch.compile (inductor, dynamic shapes)",
        lab.bf16,
        lab.bf16_with(eager_model),
        f"compiling took {t_compile:.0f} s",
    )
    enc.query_model = enc.passage_model = eager_model


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
