"""Long documents as overlapping token windows (passages), the field's practice for documents longer than an
encoder reads (Dai & Callan's MaxP; Pyserini's segmented MS MARCO documents; ColBERT-X / PLAID-X).

A window holds ``passage_length`` encoder tokens in all: special tokens, the passage prefix and the document's
title (repeated in every passage) included, so no passage is truncated by the encoder. Windows start every
``stride`` text tokens (default: half a window, i.e. 50% overlap); the last one ends at the text's end and
may be shorter. A document that fits one window is kept whole (one passage, its own id); a longer one gives
passages ``docid#0``, ``docid#1`` ... (Pyserini's convention, read by its ``FaissSearcher --max-passage``)."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from clir.config.index import (  # noqa: F401  (PassageSpec's home is config; kept importable here)
    DEFAULT_PASSAGE_LENGTH,
    MIN_WINDOW,
    SPLIT_MODES,
    PassageSpec,
    SplitMode,
)
from clir.errors import ClirError

log = logging.getLogger(__name__)

ID_SEP = "#"
#: texts longer than this are tokenised in pieces (see Splitter._offsets); longer than any article of the
#: collections evaluated here, so their passages are those of one call
PIECE_CHARS = 200_000


def window_starts(n_tokens: int, window: int, stride: int) -> list[int]:
    """Start token of each window over ``n_tokens`` tokens: 0, stride, 2*stride ... until one reaches the end."""
    if n_tokens <= window:
        return [0]
    count = 1 + math.ceil((n_tokens - window) / stride)
    return [i * stride for i in range(count)]


class Splitter:
    """Cuts a document's text into passages (character spans) with the encoder's tokenizer."""

    def __init__(self, tokenizer: Any, settings: dict[str, Any], prefix: str = "") -> None:
        self.tokenizer = tokenizer
        self.length = int(settings["passage_length"])
        self.stride = settings.get("stride")
        specials = tokenizer.num_special_tokens_to_add(pair=False)
        self.overhead = specials + (len(self._ids(prefix)) if prefix else 0)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]

    def window(self, title: str) -> int:
        """Text tokens per window for a document with this title (title repeated in each passage)."""
        title_tokens = len(self._ids(f"{title} ")) if title else 0
        return max(MIN_WINDOW, self.length - self.overhead - title_tokens)

    def split(self, title: str, text: str) -> list[tuple[int, int]]:
        """Character spans ``[start, end)`` of ``text``'s passages; ``[(0, len(text))]`` when it fits one."""
        window = self.window(title)
        starts, ends = self._offsets(text)
        if len(starts) <= window:
            return [(0, len(text))]
        stride = min(self.stride or max(1, window // 2), window)
        return [
            (int(starts[s]), int(ends[min(s + window, len(starts)) - 1]))
            for s in window_starts(len(starts), window, stride)
        ]

    def _offsets(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Start and end characters of ``text``'s tokens (zero-width ones carry no text and are dropped).
        A long text is tokenised in pieces of about :data:`PIECE_CHARS` characters cut between words: one
        call on a 10 MB document held 1.7 GB of token objects for 17 s, pieces hold a few MB each."""
        starts, ends = [], []
        pieces = _pieces(text, PIECE_CHARS)
        if len(pieces) > 1:
            log.info("splitting a document of %d characters into passages", len(text))
        for at, piece in pieces:
            enc = self.tokenizer(
                piece, add_special_tokens=False, truncation=False, verbose=False, return_offsets_mapping=True
            )
            off = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
            off = off[off[:, 1] > off[:, 0]] + at
            starts.append(off[:, 0])
            ends.append(off[:, 1])
        return np.concatenate(starts), np.concatenate(ends)


def _pieces(text: str, size: int) -> list[tuple[int, str]]:
    """``text`` as (start, piece) pieces of about ``size`` characters, cut where whitespace separates words
    (no tokenizer joins two words across whitespace, so the pieces give the tokens the whole text gives);
    a stretch without whitespace (CJK, say) is cut at ``size``."""
    out = []
    at = 0
    while len(text) - at > size:
        cut = at + size
        space = max(text.rfind(c, at + size // 2, cut) for c in " \n\t")
        if space > at:
            cut, nxt = space, space + 1
            while nxt < len(text) and text[nxt].isspace():
                nxt += 1
        else:
            nxt = cut
        out.append((at, text[at:cut]))
        at = nxt
    out.append((at, text[at:]))
    return out


def passage_id(doc_id: str, n: int, n_passages: int) -> str:
    """A passage's row id: the document's own id when it is whole, else ``docid#n``."""
    return doc_id if n_passages == 1 else f"{doc_id}{ID_SEP}{n}"


def check_passage_ids(doc_id: str, seen: set[str], numbered: set[str], collection: str, ordinal: int) -> None:
    """Passages of a split document are ``docid#0``, ``docid#1`` ...: a document whose own id has that form
    beside a document ``docid`` could share a row id with its passage (two rows, one id in ``docid``).
    Refused whether or not the split happens, so the rule does not depend on lengths, shards or resumes."""
    base, sep, n = doc_id.rpartition(ID_SEP)
    if sep and base and n.isdigit():
        numbered.add(base)
        clash, other = (doc_id, base) if base in seen else (None, None)
    elif doc_id in numbered:
        head = doc_id + ID_SEP
        clash = next(s for s in seen if s.startswith(head) and s[len(head) :].isdigit())
        other = doc_id
    else:
        return
    if clash is not None:
        raise ClirError(
            f"doc id {clash!r} in {collection} (by document #{ordinal + 1}) clashes with the passage ids of "
            f"document {other!r} (a split document's passages are {other}#0, {other}#1, ...): rename one, or "
            "index with --split none"
        )
