"""How a config with training seeds becomes a grid: each seeded model spec becomes one spec per seed
(``task@1``: its folder the ``{seed}`` path, or the shipped folder; its build gets ``--seed``), each seeded
language adapter one build per seed, and each madx seed gets the language adapters of the seed the pairing
rule gives it (:func:`clir.config.design.lang_seed_for`), for training (``--language-adapter``) and for
evaluation (``language_adapters``). Rows are then made per seed and aggregated per arm (mean +- sd)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from clir.config import AdapterBuildSpec, ExperimentConfig, ModelSpec
from clir.config.design import adapter_seeds, lang_seed_for, model_mode, model_seeds
from clir.config.model import DEFAULT_SOURCE_LANG
from clir.model.modes import routes_languages

#: between a model's name and its seed in row names: ``madx@1/q-source_d-target``
SEED_SEP = "@"


def seeded_name(arm: str, seed: int | None) -> str:
    return arm if seed is None else f"{arm}{SEED_SEP}{seed}"


def arm_of(name: str) -> str:
    """``madx@1/q-source_d-target`` -> ``madx/q-source_d-target``: the row of the arm, seeds pooled."""
    model, sep, rest = name.partition("/")
    return model.split(SEED_SEP, 1)[0] + sep + rest


@dataclass
class SeededAdapter:
    spec: AdapterBuildSpec
    seed: int | None


@dataclass
class SeededModel:
    spec: ModelSpec
    arm: str
    seed: int | None
    #: the language adapters' seed this (madx) seed is paired with
    lang_seed: int | None


def adapter_path(cfg: ExperimentConfig, a: AdapterBuildSpec, seed: int | None) -> str:
    sh = cfg.seeds.shipped
    if seed is None:
        return a.out
    if sh is not None and seed == sh.seed:
        return str(Path(sh.folder) / "lang" / a.lang)
    return a.out.replace("{seed}", str(seed))


def model_path(cfg: ExperimentConfig, m: ModelSpec, seed: int | None) -> str:
    sh = cfg.seeds.shipped
    if seed is None:
        return m.model
    path = m.model.replace("{seed}", str(seed))
    if sh is not None and seed == sh.seed and m.name in sh.models:
        return str(Path(sh.folder) / Path(path).name)
    return path


def expand_adapters(cfg: ExperimentConfig) -> list[SeededAdapter]:
    out = []
    for a in cfg.adapters:
        seeds = adapter_seeds(cfg, a)
        if not seeds:
            out.append(SeededAdapter(a, None))
        for seed in seeds:
            spec = dataclasses.replace(
                a, out=adapter_path(cfg, a, seed), args=[*a.args, "--seed", str(seed)], seeds=None
            )
            out.append(SeededAdapter(spec, seed))
    return out


def expand_models(cfg: ExperimentConfig) -> list[SeededModel]:
    """Every model spec of the grid, one per training seed (unseeded ones as they are)."""
    out = []
    for m in cfg.models:
        seeds = model_seeds(cfg, m)
        if not seeds:
            out.append(SeededModel(m, m.name, None, None))
            continue
        for i, seed in enumerate(seeds):
            out.append(_seeded_model(cfg, m, i, seed))
    return out


def _seeded_model(cfg: ExperimentConfig, m: ModelSpec, position: int, seed: int) -> SeededModel:
    overrides = dict(m.overrides)
    args = ["--seed", str(seed)]
    lang_seed = None
    if routes_languages(model_mode(m)):
        seeded = [a for a in cfg.adapters if adapter_seeds(cfg, a)]
        if cfg.seeds.language_adapters:
            lang_seed = lang_seed_for(position, cfg.seeds.language_adapters)
        langs = dict(overrides.get("language_adapters") or {})
        source = str(overrides.get("source_lang") or DEFAULT_SOURCE_LANG)
        for a in seeded:
            path = adapter_path(cfg, a, lang_seed_for(position, adapter_seeds(cfg, a)))
            langs[a.lang] = path
            if a.lang == source:  # the madx arm is trained on top of this one
                args += ["--language-adapter", f"{source}={path}"]
        if langs:
            overrides["language_adapters"] = langs
    build = m.build
    if build is not None:
        build = dataclasses.replace(build, args=[*build.args, *args])
    spec = dataclasses.replace(
        m,
        name=seeded_name(m.name, seed),
        model=model_path(cfg, m, seed),
        build=build,
        overrides=overrides,
        seeds=None,
    )
    return SeededModel(spec, m.name, seed, lang_seed)
