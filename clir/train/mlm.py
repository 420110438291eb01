"""Masked language modelling pieces of ``clir train-language-adapter``: the text it reads (a text file or
any collection, streamed without end), the held-out dev slice, seeded masking, and the dev loss that tells a
trained language adapter from a fresh MLM head doing the work."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clir.errors import ClirError


class TextSource:
    """Texts from a plain text file (one a line) or any collection source (``load_collection``)."""

    def __init__(self, src: str) -> None:
        from clir.data.collections import IRDS_PREFIX
        from clir.data.resolve import load_collection

        self.name = src
        p = Path(src).expanduser()
        self._path: Path | None = None
        self._collection = None
        if src.startswith(IRDS_PREFIX) or p.is_dir() or p.suffix in (".jsonl", ".json", ".tsv"):
            self._collection = load_collection(src)
        elif p.is_file():
            self._path = p
        else:
            raise ClirError(
                f"--text {src}: not a text file, a .jsonl/.tsv docs file, a collection folder or irds:<id>"
            )

    def records(self, start: int = 0) -> Iterator[str]:
        if self._path is not None:
            texts: Iterator[str] = (
                line.strip() for line in open(self._path, encoding="utf-8", errors="replace")
            )
        else:
            assert self._collection is not None
            texts = (d.full_text().strip() for d in self._collection.docs())
        return itertools.islice((t for t in texts if t), start, None)


def texts_forever(source: TextSource, *, block: int, seed: int) -> Iterator[str]:
    from clir.data.triples import block_shuffled

    for epoch in itertools.count():
        n = 0
        for text in block_shuffled(source.records, block=block, seed=seed, epoch=epoch):
            n += 1
            yield text
        if n == 0:
            raise ClirError(f"--text {source.name}: no text found")


@dataclass(frozen=True)
class DevSplit:
    """Which texts are held out: a text is dev when a seeded hash of its content falls under ``fraction``.

    Hashing the content (not the line number) keeps duplicates on one side and works on streamed sources
    of any size; ``limit`` caps the dev set (the first dev texts in source order)."""

    fraction: float
    seed: int
    limit: int

    def is_dev(self, text: str) -> bool:
        if self.fraction <= 0:
            return False
        h = hashlib.sha1(f"{self.seed}\x00{text}".encode("utf-8", "surrogatepass")).digest()
        return int.from_bytes(h[:8], "big") / 2**64 < self.fraction

    def dev(self, texts: Iterable[str]) -> list[str]:
        return list(itertools.islice((t for t in texts if self.is_dev(t)), self.limit))

    def train(self, texts: Iterable[str]) -> Iterator[str]:
        return (t for t in texts if not self.is_dev(t))


def mask_tokens(batch: dict[str, Any], tokenizer, probability: float, generator) -> tuple[Any, Any]:
    """BERT's masking (``probability`` of the real tokens: 80% [MASK], 10% random, 10% kept), drawn from
    ``generator`` so that dev masks are fixed and training masks resume exactly. Returns (input_ids, labels)."""
    import torch

    ids = batch["input_ids"].clone()
    labels = ids.clone()
    special = batch["special_tokens_mask"].bool() | (batch["attention_mask"] == 0)
    draw = torch.rand(ids.shape, generator=generator)
    masked = (draw < probability) & ~special
    if not masked.any():  # a batch of very short texts: mask one real token so the loss is defined
        first = (~special).nonzero()
        if len(first):
            masked[first[0, 0], first[0, 1]] = True
    labels[~masked] = -100
    action = torch.rand(ids.shape, generator=generator)
    ids[masked & (action < 0.8)] = tokenizer.mask_token_id
    randomise = masked & (action >= 0.8) & (action < 0.9)
    random_ids = torch.randint(len(tokenizer), ids.shape, generator=generator)
    ids[randomise] = random_ids[randomise]
    return ids, labels


def tokenize(tokenizer, texts: list[str], max_length: int) -> dict[str, Any]:
    return tokenizer(
        texts,
        truncation=True,
        max_length=max_length,
        padding=True,
        return_special_tokens_mask=True,
        return_tensors="pt",
    )


@dataclass
class DevBatch:
    input_ids: Any
    attention_mask: Any
    labels: Any


def dev_batches(
    tokenizer, texts: list[str], *, max_length: int, probability: float, seed: int, batch_size: int
) -> list[DevBatch]:
    """The dev set, tokenised and masked once: every model is scored on the same masked tokens."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenize(tokenizer, texts[i : i + batch_size], max_length)
        ids, labels = mask_tokens(enc, tokenizer, probability, gen)
        out.append(DevBatch(ids, enc["attention_mask"], labels))
    return out


def masked_loss(model, head, input_ids, attention_mask, labels, *, encoder_grad: bool = True):
    """Mean cross entropy over the masked tokens, with logits computed only there (the 250k-word output
    layer of XLM-R vocabularies dominates otherwise). Returns (sum of token losses, number of tokens)."""
    import contextlib

    import torch

    ctx = contextlib.nullcontext() if encoder_grad else torch.no_grad()
    with ctx:
        hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    sel = labels != -100
    logits = head(hidden[sel])
    loss = torch.nn.functional.cross_entropy(logits.float(), labels[sel], reduction="sum")
    return loss, int(sel.sum())


def dev_loss(model, head, batches: list[DevBatch], device) -> float:
    """Mean MLM loss per masked dev token (the model is left in eval mode)."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for b in batches:
            loss, n = masked_loss(
                model, head, b.input_ids.to(device), b.attention_mask.to(device), b.labels.to(device)
            )
            total += float(loss)
            count += n
    return total / max(count, 1)
