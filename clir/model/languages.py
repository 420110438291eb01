"""The encoder's language adapters: loading them (lazily, one head per stack), unloading them, and which one
each side encodes a text through under a routing (:mod:`clir.model.modes` gives the rule). A mixin of
:class:`clir.model.encoder.DualEncoder`, kept apart so that each file holds one idea."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clir.config import ModelConfig, Routing
from clir.errors import ClirError
from clir.model import adapters as adapter_rules
from clir.model.adapters import Side, adapter_message
from clir.model.modes import FullMode, adapter_mode


class LanguageAdapters:
    """Language adapters of a :class:`DualEncoder` (the attributes below are set by its ``__init__``)."""

    config: ModelConfig
    model_dir: Path | None
    device: Any
    query_model: Any
    passage_model: Any
    _lock: threading.RLock
    _lang_loaded: set[str]
    _lang_heads: dict[str, str]
    _fingerprint: dict[str, Any] | None

    @property
    def dim(self) -> int:
        return int(self.query_model.config.hidden_size)

    def task_adapter_names(self) -> list[str]:
        return adapter_rules.task_adapter_names(self.config)

    @property
    def mode(self) -> FullMode:
        """The adapter mode's strategy (:mod:`clir.model.modes`)."""
        return adapter_mode(self.config)

    @property
    def routes_languages(self) -> bool:
        """Whether this encoder has language adapters for a routing to pick."""
        return self.mode.routes_languages

    def language_adapter_source(self, lang: str) -> str:
        return adapter_rules.language_adapter_source(self.config, self.model_dir, lang)

    def load_language_adapter(self, lang: str) -> None:
        """Load the language adapter for ``lang`` (lazily: only languages that are routed to get loaded)."""
        if lang in self._lang_loaded:
            return
        source = self.language_adapter_source(lang)
        model = self.query_model
        adapter_rules.check_language_adapter(self.config, source, self.dim)
        with self._lock:
            if source == "new":
                # a fresh, untrained language adapter (for MLM training or ablations)
                model.add_adapter(lang, config=self.config.language_adapter.to_adapters_config())
            else:
                adapter_rules.check_same_head(self._lang_heads, lang, source)
                try:
                    model.load_adapter(source, load_as=lang, set_active=False)
                except Exception as e:  # the adapters/hub stack raises many types; all mean "could not load"
                    raise ClirError(adapter_message(lang, source, e)) from None
            model.to(self.device)
            self._lang_loaded.add(lang)
            self._fingerprint = None

    def load_recorded_adapters(self, names: Sequence[str]) -> None:
        """Load the configured language adapters among ``names`` (an index fingerprint's), so that this
        encoder's fingerprint can be compared with the index's."""
        if not self.routes_languages:
            return
        for name in names:
            if name not in self.task_adapter_names() and name in self.config.language_adapters:
                self.load_language_adapter(name)

    def loaded_languages(self) -> list[str]:
        return sorted(self._lang_loaded)

    def unload_language_adapter(self, lang: str) -> None:
        """Drop a loaded language adapter (not the source one), so that the fingerprint an index records names
        only the adapters its documents went through."""
        if lang not in self._lang_loaded or lang == self.config.source_lang:
            return
        with self._lock:
            self.query_model.active_adapters = None
            self.query_model.delete_adapter(lang)
            self._lang_loaded.discard(lang)
            self._fingerprint = None

    # ------------------------------------------------------------------ routing
    def language_adapter_for(
        self, side: Side, lang: str | None, routing: Routing | None = None
    ) -> str | None:
        """Which language adapter ``side`` encodes ``lang`` text through under ``routing`` (default: the
        model's): :meth:`clir.model.modes.MadxMode.language_adapter`, the one rule."""
        return self.mode.language_adapter(self.config, routing or self.config.routing, side, lang)

    def has_language_adapter(self, lang: str | None) -> bool:
        """Whether an adapter for ``lang`` can be loaded (bundled, configured, or the ``random`` control)."""
        if not lang:
            return False
        try:
            self.language_adapter_source(lang)
        except ClirError:
            return False
        return True

    def routes_docs_by_lang(self, routing: Routing | None = None) -> bool:
        """Whether documents of different languages go through different adapters under ``routing``."""
        return self.mode.routes_docs_by_lang(routing or self.config.routing)

    def doc_lang(self, lang: str | None, routing: Routing | None = None) -> str | None:
        """The language a document in ``lang`` is encoded as: its own, or the source language's when it has
        no adapter (the fallback rule, :meth:`clir.model.modes.MadxMode.doc_lang`)."""
        return self.mode.doc_lang(
            self.config, routing or self.config.routing, lang, self.has_language_adapter
        )

    def doc_adapters(self, langs: Sequence[str | None], routing: Routing | None = None) -> set[str]:
        """The language adapters documents in ``langs`` go through under ``routing``, the source one included
        (empty without language adapters)."""
        if not self.routes_languages:
            return set()
        routing = routing or self.config.routing
        out = {self.config.source_lang}
        for lang in langs:
            adapter = self.language_adapter_for("passage", self.doc_lang(lang, routing), routing)
            if adapter is not None:
                out.add(adapter)
        return out

    def adapter_setup(self, side: Side, lang: str | None, routing: Routing | None = None):
        """The ``adapters`` composition active for ``side`` encoding text in ``lang`` (None in full mode)."""
        from adapters.composition import Stack

        names = self.mode.stack(self.config, routing or self.config.routing, side, lang)
        if names is None:
            return None
        for la in names[:-1]:  # the stack's bottom first: everything under the task adapter is a language's
            self.load_language_adapter(la)
        return Stack(*names)

    def activate(self, side: Side, lang: str | None, routing: Routing | None = None):
        """The model that encodes ``side``, with the adapters for ``lang`` text on that side active."""
        model = self.query_model if side == "query" else self.passage_model
        setup = self.adapter_setup(side, lang, routing)
        if setup is not None:
            model.active_adapters = setup
        return model
