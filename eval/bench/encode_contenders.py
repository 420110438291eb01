"""The contenders of the encoding benchmark (eval.bench.encode_throughput): clir's encoder and its
sentence-transformers peer on the same folder, the padding each batching leaves, and timing them in turns."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np

from eval.bench import common


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
