"""What the rest of clir may ask of an encoder: the typed surface of :class:`clir.model.encoder.DualEncoder`.

Indexing, search, serving, experiments and training are written against this protocol, so a test double or
another encoder implementation fits wherever the dual encoder does."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from clir.config import ModelConfig, Routing
from clir.model.modes import Side


class Encoder(Protocol):
    config: ModelConfig
    source: str
    tokenizer: Any
    query_model: Any
    passage_model: Any
    device: Any

    @property
    def dim(self) -> int: ...

    # the adapter mode and language routing (clir.model.modes answers for the encoder)
    @property
    def routes_languages(self) -> bool: ...

    def task_adapter_names(self) -> list[str]: ...

    def language_adapter_for(
        self, side: Side, lang: str | None, routing: Routing | None = None
    ) -> str | None: ...

    def routes_docs_by_lang(self, routing: Routing | None = None) -> bool: ...

    def doc_lang(self, lang: str | None, routing: Routing | None = None) -> str | None: ...

    def doc_adapters(self, langs: Sequence[str | None], routing: Routing | None = None) -> set[str]: ...

    def language_adapter_source(self, lang: str) -> str: ...

    def load_language_adapter(self, lang: str) -> None: ...

    def unload_language_adapter(self, lang: str) -> None: ...

    def loaded_languages(self) -> list[str]: ...

    def load_recorded_adapters(self, names: Sequence[str]) -> None: ...

    # encoding
    def encode(
        self,
        texts: Sequence[str],
        side: Side,
        lang: str | None = None,
        *,
        batch_size: int = 32,
        show_progress: bool | None = None,
        routing: Routing | None = None,
    ) -> np.ndarray: ...

    def encode_queries(self, texts: Sequence[str], lang: str | None = None, **kw: Any) -> np.ndarray: ...

    def encode_passages(self, texts: Sequence[str], lang: str | None = None, **kw: Any) -> np.ndarray: ...

    def count_tokens(self, text: str, side: Side = "query") -> tuple[int, bool]: ...

    def cut(self, text: str, side: Side) -> str: ...

    def max_length(self, side: Side) -> int: ...

    # the training path: tokenised batches, differentiable forward, pooling
    def tokenize(self, texts: Sequence[str], side: Side, *, padding: bool = True) -> Any: ...

    def pool(self, hidden: Any, mask: Any) -> Any: ...

    def finish(self, pooled: Any) -> Any: ...

    def activate(self, side: Side, lang: str | None, routing: Routing | None = None) -> Any: ...

    def adapter_setup(self, side: Side, lang: str | None, routing: Routing | None = None) -> Any: ...

    def forward(
        self, batch: Any, side: Side, lang: str | None = None, routing: Routing | None = None
    ) -> Any: ...

    def packs(self, side: Side, lang: str | None = None, routing: Routing | None = None) -> bool: ...

    def models(self) -> list[Any]: ...

    # threads: a group of calls held together; another lane's encoder over the same weights
    def exclusive(self) -> contextlib.AbstractContextManager[Any]: ...

    def replica(self) -> Encoder: ...

    # identity and saving
    def fingerprint(self, routing: Routing | None = None) -> dict[str, Any]: ...

    def weights_changed(self) -> None: ...

    def save(self, out_dir: str | Path, *, save_lang: Sequence[str] = ()) -> Path: ...
