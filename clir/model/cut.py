"""Cutting a long text short before it is tokenised, keeping the tokens the encoder will read.

Only a query's first ``max_query_length`` tokens are encoded, but the tokenizer read all of it first, twice
(to count and to encode): a 900k-character query took 4-13 s on a loaded server, holding the tokenizer that
every encoder lane shares."""

from __future__ import annotations

import threading
from typing import Any

#: characters kept per token of the limit before the first check (a token rarely spans more)
CHARS_PER_TOKEN = 8
#: how far the cut must fall past the end of the last token that is kept
MARGIN = 256


def cut_long_text(tokenizer: Any, text: str, prefix: str, limit: int, lock: threading.Lock) -> str:
    """A prefix of ``text`` whose first ``limit`` tokens (after ``prefix``) are those of all of it, and
    still more than ``limit``, so that truncation happens as it would have; ``text`` itself when it is
    short.

    The cut is by characters first (``limit`` x :data:`CHARS_PER_TOKEN` + :data:`MARGIN`), then checked in
    tokens: the cut gives more than ``limit`` tokens, and the last of the first ``limit`` ends
    :data:`MARGIN` characters before the cut. Only tokens near the cut, of the word it splits, can come out
    differently from the whole text's. Otherwise (long runs of spaces, or of characters the tokenizer
    drops) the cut is widened fourfold, at worst to the whole text: the checks read less than 4/3 of it.
    ``lock`` is the one held around every use of the tokenizer."""
    if not getattr(tokenizer, "is_fast", False):  # offsets need a fast (Rust) tokenizer
        return text
    n = limit * CHARS_PER_TOKEN + MARGIN
    while len(text) > n:
        cut = text[:n]
        with lock:
            spans = tokenizer(prefix + cut, add_special_tokens=False, return_offsets_mapping=True)
        offsets = spans["offset_mapping"]
        if len(offsets) > limit and offsets[limit - 1][1] <= len(prefix) + n - MARGIN:
            return cut
        n *= 4
    return text
