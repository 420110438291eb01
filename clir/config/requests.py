"""One typed, frozen request per verb: what the verb asks of the library, built from its flags by
``clir/cli/<verb>.py`` (or, for the verbs a grid builds with, from a config's ``args`` by
:func:`clir.config.build_flags.request_from_flags`).

| verb | request |
|---|---|
| ``index`` | :class:`IndexRequest` (with :class:`PassageSpec`, and :class:`RayRequest` for ``--ray``) |
| ``search`` | :class:`SearchRequest` |
| ``evaluate`` | :class:`EvaluateRequest` |
| ``experiment`` | :class:`ExperimentRequest` |
| ``train`` | :class:`TrainRequest` |
| ``train-language-adapter`` | :class:`LanguageAdapterRequest` |
| ``train-mlm-head`` | :class:`MlmHeadRequest` |
| ``serve`` | :class:`ServeRequest` (with :class:`ServeSettings`) |"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from clir.config.index import IndexRequest, PassageSpec, RayRequest
from clir.config.mlm import DevSettings, LanguageAdapterRequest, MlmHeadRequest
from clir.config.serve import ServeRequest, ServeSettings
from clir.config.train import TrainConfig
from clir.errors import ClirError

#: how a split index ranks (``--doc-score``, ``doc_score`` in configs, ``Searcher(doc_score=...)``): documents
#: by their best passage (maxp), by their first (firstp), or the passages themselves
DOC_SCORES = ("maxp", "firstp", "passages")


@dataclass(frozen=True)
class TrainRequest:
    """What ``clir train`` asks of :func:`clir.train.train`: a training config file and the flags over it."""

    config: str
    #: output model folder (None: the config's ``out``)
    out: str | None = None
    max_steps: int | None = None
    resume: bool = False
    overwrite: bool = False
    dry_run: bool = False
    stop_after: int | None = None
    triples: str | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int | None = None
    #: ``LANG=SOURCE`` overrides of ``model.language_adapters``
    language_adapters: tuple[str, ...] = ()
    device: str | None = None

    def train_config(self) -> TrainConfig:
        """The config file with this request's overrides (flags win over the file)."""
        from clir.config.train import load_train_config

        cfg = load_train_config(self.config)
        optim: dict[str, Any] = {
            k: v
            for k, v in (
                ("max_steps", self.max_steps),
                ("batch_size", self.batch_size),
                ("lr", self.lr),
                ("seed", self.seed),
            )
            if v is not None
        }
        if optim:
            cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, **optim))
            cfg.optim.validate()
        if self.triples:
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, triples=self.triples))
        if self.language_adapters:
            langs = dict(cfg.model.language_adapters)
            for item in self.language_adapters:
                lang, sep, source = item.partition("=")
                if not sep or not lang.strip() or not source.strip():
                    raise ClirError(f"--language-adapter {item!r}: give LANG=SOURCE (e.g. en=models/lang/en)")
                langs[lang.strip()] = source.strip()
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, language_adapters=langs))
            cfg.model.validate()
        return cfg


@dataclass(frozen=True)
class SearchRequest:
    """What ``clir search`` runs: one ``query`` (hits printed) or a ``queries`` set (to the run file ``out``)."""

    index: str
    query: str | None = None
    queries: str | None = None
    #: the TREC run file written (``--out``; ``--run`` is its earlier spelling)
    out: str | None = None
    #: hits per query (None: 10 for one query, 1000 for a query set)
    k: int | None = None
    query_lang: str | None = None
    query_field: str | None = None
    json: bool = False
    batch_size: int = 64
    tag: str = "clir"
    nprobe: int | None = None
    ef_search: int | None = None
    doc_score: str = "maxp"
    force: bool = False
    model: str | None = None
    #: encoder setting overrides (pooling, normalize, prefixes, routing ...)
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    device: str | None = None

    def __post_init__(self) -> None:
        if self.doc_score not in DOC_SCORES:
            raise ClirError(f"--doc-score {self.doc_score!r}: expected one of {', '.join(DOC_SCORES)}")


@dataclass(frozen=True)
class EvaluateRequest:
    """What ``clir evaluate`` asks of :func:`clir.metrics.evaluate`: a run file (an input here) and qrels."""

    run: str
    qrels: str
    #: ranx metric names (None: the default set)
    metrics: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ExperimentRequest:
    """What ``clir experiment`` runs: a grid config, its output folder, a row selection, or only the plan."""

    config: str
    out: str | None = None
    only: tuple[str, ...] | None = None
    dry_run: bool = False


__all__ = [
    "DOC_SCORES",
    "DevSettings",
    "EvaluateRequest",
    "ExperimentRequest",
    "IndexRequest",
    "LanguageAdapterRequest",
    "MlmHeadRequest",
    "PassageSpec",
    "RayRequest",
    "SearchRequest",
    "ServeRequest",
    "ServeSettings",
    "TrainRequest",
]
