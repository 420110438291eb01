"""One strategy per adapter mode (``full`` / ``task`` / ``madx``): which adapters a model has, which stack a side
encodes through for a text's language under a routing, and the fallback when that language has no adapter.

Code outside :mod:`clir.model` and :mod:`clir.config` asks these questions of :func:`adapter_mode` (or of the
encoder, which asks it), never by comparing mode names: a new mode is one class here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from clir.config import ModelConfig
from clir.config.model import Routing
from clir.errors import ClirError

Side = Literal["query", "passage"]

#: the adapter ``random`` routing puts under the task adapter: fresh and untrained (``new``), unless
#: ``language_adapters`` names one for this key
RANDOM_ADAPTER = "random"


class FullMode:
    """All weights trained, no adapters: routing has nothing to route."""

    name = "full"
    #: whether the backbone's own weights train (the other modes freeze them)
    trains_backbone = True
    #: whether the model has adapters at all (the other modes load the backbone by name, under them)
    has_adapters = False
    #: whether language adapters sit under the task adapter (and a routing picks them)
    routes_languages = False

    def task_adapters(self, config: ModelConfig) -> list[str]:
        return []

    def task_adapter(self, config: ModelConfig, side: Side) -> str | None:
        return None

    def language_adapter(
        self, config: ModelConfig, routing: Routing, side: Side, lang: str | None
    ) -> str | None:
        return None

    def stack(self, config: ModelConfig, routing: Routing, side: Side, lang: str | None) -> list[str] | None:
        """The adapters ``side`` encodes ``lang`` text through, bottom first (None: no adapters at all)."""
        return None

    def routes_docs_by_lang(self, routing: Routing) -> bool:
        """Whether documents of different languages go through different adapters (encoded per language)."""
        return False

    def doc_lang(
        self, config: ModelConfig, routing: Routing, lang: str | None, available: Callable[[str], bool]
    ) -> str | None:
        """The language a document is encoded as (the fallback rule): ``lang`` itself where nothing routes."""
        return lang


class TaskMode(FullMode):
    """A task adapter alone (one, or one per side when untied) on a frozen backbone."""

    name = "task"
    trains_backbone = False
    has_adapters = True

    def task_adapters(self, config: ModelConfig) -> list[str]:
        return ["task"] if config.tied else ["task_query", "task_passage"]

    def task_adapter(self, config: ModelConfig, side: Side) -> str | None:
        return "task" if config.tied else f"task_{side}"

    def stack(self, config: ModelConfig, routing: Routing, side: Side, lang: str | None) -> list[str] | None:
        la = self.language_adapter(config, routing, side, lang)
        task = self.task_adapter(config, side)
        assert task is not None
        return [task] if la is None else [la, task]


class MadxMode(TaskMode):
    """MAD-X: the task adapter stacked on a language adapter that the routing picks per side."""

    name = "madx"
    routes_languages = True

    def language_adapter(
        self, config: ModelConfig, routing: Routing, side: Side, lang: str | None
    ) -> str | None:
        """The one rule: None for ``none`` routing, the source language's for ``source``, the untrained control
        adapter for ``random``, the text's own for ``target`` (documents: or the language ``doc_map`` sends it
        to, a wrong-language control)."""
        route = routing.query if side == "query" else routing.doc
        if route == "none":
            return None
        if route == "source":
            return config.source_lang
        if route == "random":
            return RANDOM_ADAPTER
        if not lang:
            raise ClirError(
                f"{side} routing is 'target' but the text's language is unknown: pass --doc-lang/--query-lang "
                "or give documents a 'lang' field"
            )
        return routing.doc_map.get(lang, lang) if side == "passage" else lang

    def routes_docs_by_lang(self, routing: Routing) -> bool:
        return routing.doc == "target"

    def doc_lang(
        self, config: ModelConfig, routing: Routing, lang: str | None, available: Callable[[str], bool]
    ) -> str | None:
        """Under ``target`` routing a document whose language is unknown, or whose routed adapter is not
        ``available``, goes through the source language's adapter (what ``source`` routing does); index
        manifests count these under ``routing_fallback``."""
        if not self.routes_docs_by_lang(routing):
            return lang
        adapter = self.language_adapter(config, routing, "passage", lang) if lang else None
        return str(lang) if adapter and available(adapter) else config.source_lang


MODES: dict[str, FullMode] = {m.name: m for m in (FullMode(), TaskMode(), MadxMode())}


def routes_languages(mode: str | None) -> bool:
    """Whether a mode's models have language adapters to route (False for an unknown or undeclared mode)."""
    return mode in MODES and MODES[str(mode)].routes_languages


def adapter_mode(config: ModelConfig | str) -> FullMode:
    """The strategy of a model's adapter mode (or of a mode's name)."""
    name = config if isinstance(config, str) else config.adapter_mode
    if name not in MODES:
        raise ClirError(f"adapter mode {name!r} unknown (known: {', '.join(MODES)})")
    return MODES[name]
