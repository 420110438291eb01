"""The experimental design of an experiment grid beyond its rows: training seeds (how a row with several seeds
is expanded and which language-adapter seed a madx seed uses), controls (extra rows that tell mechanisms
apart) and claims (the headline comparisons, each one Holm family)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from clir.config.model import Routing
from clir.errors import ClirError

# the checks across the config take an ExperimentConfig and its specs (typed Any: clir.config.experiment imports this)
ExperimentConfig: TypeAlias = Any
ModelSpec: TypeAlias = Any
AdapterBuildSpec: TypeAlias = Any

#: what the lead may conclude about a claim (the report renders it; nothing computes it)
Verdict = Literal["supported", "not supported", "not testable with this backbone"]
#: the direction a claim expects of ``treatment - control``
Expect = Literal["lower", "higher", "differs"]

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
#: a row of the grid as claims and controls name it: MODEL or MODEL/q-ROUTE_d-ROUTE[.xx-as-yy]
_VARIANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-+]*(?:/q-[a-z]+_d-[a-z]+(?:\.[a-z0-9_]+-as-[a-z0-9_]+)*)?$")


def _seed_list(seeds: list[int], where: str) -> None:
    if any(s < 0 for s in seeds):
        raise ClirError(f"{where}: seeds must be >= 0, got {seeds}")
    if len(set(seeds)) != len(seeds):
        raise ClirError(f"{where}: duplicate seed(s) in {seeds}")


@dataclass
class ShippedSpec:
    """One seed's models and language adapters, committed in a folder the grid reuses instead of its own
    paths: ``FOLDER/<last part of the model's path>`` for each model in ``models`` and ``FOLDER/lang/<lang>``
    for each language adapter of ``adapters``. Missing ones are built there."""

    folder: str
    seed: int = 0
    #: models whose ``seed`` folder is shipped (names of ``models``)
    models: list[str] = field(default_factory=lambda: ["madx"])


@dataclass
class SeedsConfig:
    """Training seeds. Each model with a ``build`` is trained once per seed of ``arms`` (a model's own
    ``seeds`` overrides), each language adapter of ``adapters`` once per seed of ``language_adapters``; the
    ``{seed}`` in their paths names the seed's folder. Pairing rule: the i-th seed of a madx model is trained
    on, and evaluated with, the language adapters' seed ``language_adapters[i mod len(language_adapters)]``."""

    arms: list[int] = field(default_factory=list)
    language_adapters: list[int] = field(default_factory=list)
    shipped: ShippedSpec | None = None

    def validate(self) -> None:
        _seed_list(self.arms, "seeds.arms")
        _seed_list(self.language_adapters, "seeds.language_adapters")
        sh = self.shipped
        if sh is None:
            return
        if self.arms and sh.seed not in self.arms:
            raise ClirError(f"seeds.shipped.seed {sh.seed} is not one of seeds.arms {self.arms}")
        if self.language_adapters and self.arms and sh.seed in self.arms:
            paired = lang_seed_for(self.arms.index(sh.seed), self.language_adapters)
            if paired != sh.seed:
                raise ClirError(
                    f"seeds.shipped.seed {sh.seed}: the pairing rule gives its madx model language-adapter seed "
                    f"{paired}, but the shipped folder holds seed {sh.seed}'s adapters; order seeds.arms or "
                    "seeds.language_adapters so that they pair"
                )

    @property
    def enabled(self) -> bool:
        return bool(self.arms or self.language_adapters)


def lang_seed_for(position: int, lang_seeds: list[int]) -> int:
    """The pairing rule: the madx seed at ``position`` of its seed list uses this language-adapter seed."""
    return lang_seeds[position % len(lang_seeds)]


@dataclass
class ControlSpec:
    """Control rows: ``model`` (a madx model of the grid, every seed of it) under ``routing`` on
    ``collections`` (default: every collection), read against the row ``against`` (tested against it on
    each collection, like a swap).

    Examples: an untrained adapter on the documents (``routing: {query: source, doc: random}``); German
    documents through the Russian adapter (``{query: source, doc: target, doc_map: {de: ru}}``); English
    documents through the German adapter (``doc_map: {en: de}`` on an English collection); no language
    adapter on either side (``{query: none, doc: none}``)."""

    name: str
    model: str
    routing: Routing
    collections: list[str] = field(default_factory=list)
    against: str | None = None
    note: str = ""

    def validate(self) -> None:
        if not _ID.match(self.name):
            raise ClirError(f"controls[].name {self.name!r}: use letters, digits, '-', '_', '.'")
        if self.against is not None and not _VARIANT.match(self.against):
            raise ClirError(
                f"controls[{self.name}].against {self.against!r}: name a row as MODEL or MODEL/q-X_d-Y"
            )

    @property
    def variant(self) -> str:
        return f"{self.model}/{self.routing.label()}"


@dataclass
class ClaimSpec:
    """A headline claim: the comparisons behind it (``pairs`` of rows, control first), tested on the primary
    metric per question set (collections sharing one are averaged per question first) and Holm-corrected
    together, one family per claim. ``verdict`` is the lead's reading of the numbers (the report shows it
    beside the evidence; left empty, the report says it is pending)."""

    id: str
    text: str
    pairs: list[list[str]]
    expect: Expect = "differs"
    #: collections whose question sets the claim is tested on (default: every collection with both rows)
    collections: list[str] = field(default_factory=list)
    verdict: Verdict | None = None
    note: str = ""

    def validate(self) -> None:
        if not _ID.match(self.id):
            raise ClirError(f"claims[].id {self.id!r}: use letters, digits, '-', '_', '.'")
        if not self.text.strip():
            raise ClirError(f"claims[{self.id}].text: empty")
        if not self.pairs:
            raise ClirError(f"claims[{self.id}].pairs: give at least one [control, treatment] pair")
        for pair in self.pairs:
            if len(pair) != 2 or pair[0] == pair[1]:
                raise ClirError(f"claims[{self.id}].pairs: {pair!r} is not a pair of two different rows")
            for v in pair:
                if not _VARIANT.match(v):
                    raise ClirError(
                        f"claims[{self.id}].pairs: {v!r} is not a row name (MODEL or MODEL/q-X_d-Y)"
                    )


# ---------------------------------------------------------------------- checks across the config
def model_seeds(cfg: ExperimentConfig, m: ModelSpec) -> list[int]:
    """The training seeds of a model: its own, else the grid's arm seeds when it is built, else none."""
    if m.seeds is not None:
        return list(m.seeds)
    return list(cfg.seeds.arms) if m.build is not None else []


def adapter_seeds(cfg: ExperimentConfig, a: AdapterBuildSpec) -> list[int]:
    return list(a.seeds) if a.seeds is not None else list(cfg.seeds.language_adapters)


def model_mode(m: ModelSpec) -> str | None:
    """The adapter mode a model spec declares (``mode`` or ``overrides.adapter_mode``), if any."""
    return m.mode or m.overrides.get("adapter_mode")


def validate_design(cfg: ExperimentConfig) -> None:
    """Seeds, controls and claims checked against the rest of the config, with errors that name the key."""
    models = {m.name: m for m in cfg.models}
    _check_seeds(cfg)
    names = [c.name for c in cfg.collections]
    known_colls = {n for n in names if n} if all(names) else None  # unnamed ones: checked when planned

    def check_collections(where: str, wanted: list[str]) -> None:
        if known_colls is not None:
            bad = [c for c in wanted if c not in known_colls]
            if bad:
                raise ClirError(f"{where}: unknown collection(s) {', '.join(bad)} (has: {', '.join(names)})")

    def check_row(where: str, variant: str) -> None:
        model = variant.split("/", 1)[0]
        if model not in models and model != "bm25":
            raise ClirError(f"{where}: {variant!r} names no model of the grid (models: {', '.join(models)})")

    seen: set[str] = set()
    for c in cfg.controls:
        where = f"controls[{c.name}]"
        if c.name in seen:
            raise ClirError(f"controls: duplicate name {c.name!r}")
        seen.add(c.name)
        m = models.get(c.model)
        if m is None:
            raise ClirError(
                f"{where}.model {c.model!r} is not a model of the grid (models: {', '.join(models)})"
            )
        if model_mode(m) not in (None, "madx"):
            raise ClirError(
                f"{where}: model {c.model} is {model_mode(m)}; routing controls need a madx model"
            )
        if any(r.label() == c.routing.label() for r in (m.routings or cfg.routings)):
            raise ClirError(f"{where}: {c.variant} is already a row of the grid (the model's routings)")
        have = set(m.overrides.get("language_adapters") or {}) | {a.lang for a in cfg.adapters}
        missing = sorted(set(c.routing.doc_map.values()) - have)
        if missing and have:
            raise ClirError(
                f"{where}.routing.doc_map: no language adapter for {', '.join(missing)} "
                f"(the grid has: {', '.join(sorted(have))})"
            )
        check_collections(f"{where}.collections", c.collections)
        if c.against is not None:
            check_row(f"{where}.against", c.against)
    ids = [c.id for c in cfg.claims]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ClirError(f"claims: duplicate id(s) {', '.join(dup)}")
    for claim in cfg.claims:
        for pair in claim.pairs:
            for v in pair:
                check_row(f"claims[{claim.id}].pairs", v)
        check_collections(f"claims[{claim.id}].collections", claim.collections)
    sig = cfg.significance
    if cfg.claims and min(sig.n_permutations, sig.n_resamples) < 10000:
        raise ClirError(
            "claims are tested with at least 10,000 resamples: set significance.n_permutations and "
            f"significance.n_resamples to 10000 or more (have {sig.n_permutations}, {sig.n_resamples})"
        )
    if cfg.analysis.xquad_anchor:
        check_collections("analysis.xquad_anchor", [cfg.analysis.xquad_anchor])


def _check_seeds(cfg: ExperimentConfig) -> None:
    seeded_langs: set[str] = set()
    langs = [a.lang for a in cfg.adapters]
    dup = sorted({x for x in langs if langs.count(x) > 1})
    if dup:
        raise ClirError(f"adapters: more than one entry for {', '.join(dup)} (give seeds instead)")
    for a in cfg.adapters:
        seeds = adapter_seeds(cfg, a)
        where = f"adapters[{a.lang}]"
        _seed_list(seeds, f"{where}.seeds")
        _check_templated(where, a.out, "out", seeds, a.args)
        if seeds:
            seeded_langs.add(a.lang)
    shipped = cfg.seeds.shipped
    for m in cfg.models:
        seeds = model_seeds(cfg, m)
        where = f"models[{m.name}]"
        _seed_list(seeds, f"{where}.seeds")
        _check_templated(where, m.model, "model", seeds, m.build.args if m.build else [])
        given = set(m.overrides.get("language_adapters") or {}) & seeded_langs
        if seeds and model_mode(m) == "madx" and given:
            raise ClirError(
                f"{where}.overrides.language_adapters: {', '.join(sorted(given))} come from `adapters` at the "
                "seed each madx seed pairs with (seeds.language_adapters); remove them here"
            )
        if seeds and model_mode(m) == "madx" and seeded_langs and not cfg.seeds.language_adapters:
            raise ClirError(f"{where}: a seeded madx model needs seeds.language_adapters (the pairing rule)")
    if shipped is not None:
        seeded = {m.name for m in cfg.models if model_seeds(cfg, m)}
        bad = [n for n in shipped.models if n not in seeded]
        if bad:
            raise ClirError(f"seeds.shipped.models: {', '.join(bad)} is not a model with seeds")


def _check_templated(where: str, path: str, key: str, seeds: list[int], args: list[str]) -> None:
    if seeds and "{seed}" not in path:
        raise ClirError(f"{where}.{key} {path!r}: with seeds it must hold {{seed}} (one folder per seed)")
    if not seeds and "{seed}" in path:
        raise ClirError(f"{where}.{key} {path!r} holds {{seed}} but no seeds are given (seeds / seeds.arms)")
    if seeds and "--seed" in args:
        raise ClirError(f"{where}: --seed in args; with seeds each build gets --seed SEED itself")
