"""Offline resolution of a grid's specs: what each collection and model of an experiment config is (folder,
ir_datasets id, registered name, hub id), which languages and adapters its rows need, and what is missing
and would have to be downloaded or built. Loads no model and no documents."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from clir.config import ExperimentConfig, ModelConfig, ModelSpec, Routing, from_dict, load_yaml
from clir.config.experiment import CollectionSpec
from clir.config.model import DEFAULT_SOURCE_LANG
from clir.data.resolve import resolve_collection
from clir.errors import ClirError
from clir.experiments.grid import Build, GridCollection, GridModel
from clir.model.modes import adapter_mode
from clir.model.resolve import (
    hub_cached,
    local_path,
    looks_like_path,
    merge_settings,
    model_ready,
    resolve_model,
)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- planning (offline)
def grid_collection(spec: CollectionSpec, i: int) -> GridCollection:
    s = spec.source.strip()
    where = f"collections[{i}] ({s})"
    ref = resolve_collection(s, what=where)
    if ref.docs_file:
        raise ClirError(f"{where}: a collection must be a folder (docs.jsonl, queries.tsv, qrels.txt)")
    irds_id, source, default_name = ref.irds_id, ref.source, ref.default_name
    if irds_id is not None:
        from clir.data.irds import load_dataset

        ds = load_dataset(irds_id)  # unknown ids fail here, offline
        for part in ("docs", "queries", "qrels"):
            if not getattr(ds, f"has_{part}")():
                raise ClirError(f"{where}: ir_datasets {irds_id!r} has no {part}")
    name = spec.name or default_name
    doc_lang = spec.doc_lang
    query_field = spec.query_field
    if irds_id is not None:
        ds_lang = None
        try:
            ds_lang = ds.docs_lang()
        except Exception:  # language metadata is optional in ir_datasets
            pass
        doc_lang = doc_lang or ds_lang
        fields = [f for f in ds.queries_cls()._fields if f != "query_id"]
        if query_field is None:
            query_field = "title" if "title" in fields else None
        for f in (query_field or "").split("+"):
            if f and f not in fields:
                raise ClirError(f"{where}: queries have no field {f!r} (fields: {', '.join(fields)})")
    coll = GridCollection(
        spec=spec,
        name=name,
        source=source,
        irds_id=irds_id,
        doc_lang=doc_lang,
        query_field=query_field,
        query_lang=spec.query_lang,
    )
    _resolve_bm25_lang(coll, ds if irds_id is not None else None)
    return coll


def _resolve_bm25_lang(coll: GridCollection, ds: Any) -> None:
    """Which document-language query text BM25 can use, or why BM25 does not apply."""
    if coll.irds_id is not None:
        fields = [f for f in ds.queries_cls()._fields if f != "query_id"]
        wanted = [f"ht_{f}" for f in (coll.query_field or "title").split("+")]
        if all(f in fields for f in wanted):
            coll.bm25_lang = coll.spec.bm25_query_lang or coll.doc_lang
        else:
            coll.bm25_note = f"the topics have no human-translated {'+'.join(wanted)} field"
        return
    folder = resolve_collection(coll.source).path
    assert folder is not None
    langs = sorted(p.name.split(".")[1] for p in folder.glob("queries.*.tsv"))
    want = coll.spec.bm25_query_lang or coll.doc_lang
    if want and want in langs:
        coll.bm25_lang = want
    elif coll.spec.bm25_query_lang:
        raise ClirError(
            f"collection {coll.name}: bm25_query_lang {want!r} but {folder} has no queries.{want}.tsv"
        )
    elif len(langs) == 1 and not coll.doc_lang:
        coll.bm25_lang = langs[0]
    else:
        have = f" (has: {', '.join(f'queries.{x}.tsv' for x in langs)})" if langs else ""
        coll.bm25_note = f"no document-language queries (queries.{want or '<lang>'}.tsv){have}"


def _model_settings(spec: ModelSpec) -> tuple[str, Path | None, dict[str, Any] | None, list[str]]:
    """(load_encoder source, folder, known settings or None, downloads) of a model spec, offline."""
    s = spec.model.strip()
    what = f"models[{spec.name}]"
    p = Path(s).expanduser()
    downloads: list[str] = []
    if spec.build is not None and not (p.is_dir() and model_ready(p)):
        return str(p.resolve()), p.resolve(), _build_settings(spec), downloads
    if looks_like_path(s) and not p.exists():
        raise ClirError(
            f"{what}: folder {os.path.abspath(p)} does not exist (add `build:` to make it on demand)"
        )
    ref = resolve_model(s, what=what)
    if ref.names_folder:
        folder = ref.folder or Path(ref.backbone)
        return str(folder), folder, ref.settings, downloads
    if ref.missing:
        downloads.append(f"model {spec.name}: `clir models pull {s}` (registered model not on this machine)")
    elif not ref.hub_cached():
        downloads.append(f"model {spec.name}: Hugging Face hub {s} (not in the local cache)")
    return s, None, ref.settings, downloads


def _build_settings(spec: ModelSpec) -> dict[str, Any] | None:
    """The encoder settings a model built on demand will have, as far as its training config says."""
    assert spec.build is not None
    if not (spec.build.config and Path(spec.build.config).is_file()):
        return None
    try:
        train = load_yaml(spec.build.config)
    except ClirError as e:  # e.g. an unset ${VAR}: the training run itself will say so
        log.warning("models[%s]: cannot read %s for planning: %s", spec.name, spec.build.config, e)
        return None
    return dict(train["model"]) if isinstance(train.get("model"), dict) else None


def build_triples(spec: ModelSpec) -> str | None:
    """The training triples (``data.triples``) a model built on demand reads, as far as its config says."""
    if spec.build is None or not (spec.build.config and Path(spec.build.config).is_file()):
        return None
    try:
        train = load_yaml(spec.build.config)
    except ClirError:  # _build_settings has warned; the training run itself will say what is wrong
        return None
    data = train.get("data")
    triples = data.get("triples") if isinstance(data, dict) else None
    return str(triples) if triples else None


def _build_command(spec: ModelSpec, folder: Path) -> list[str]:
    b = spec.build
    assert b is not None
    cmd: list[str] = [b.verb]
    if b.config:
        cmd += ["--config", b.config]
    if b.max_steps:
        cmd += ["--max-steps", str(b.max_steps)]
    # an interrupted build left checkpoints in its folder: continue it (a fresh one simply starts)
    resume = ["--resume"] if "--resume" not in b.args and "--overwrite" not in b.args else []
    return [*cmd, "--out", str(folder), *resume, *b.args]


def _needed_languages(
    settings: dict[str, Any], routings: list[tuple[Routing, list[GridCollection]]]
) -> set[str]:
    """The languages whose adapters a madx model's routings use on their collections."""
    adapters = settings.get("language_adapters") or {}
    needed = {settings.get("source_lang", DEFAULT_SOURCE_LANG)}
    for r, collections in routings:
        if r.doc == "target":
            for c in collections:
                langs = set(c.doc_langs())
                # detected languages without an adapter take the fallback rule (the source adapter)
                langs -= {x for x in c.detected_langs if x not in adapters}
                needed.update(r.doc_map.get(x, x) for x in langs)
        if r.query == "target":
            needed.update(c.query_lang for c in collections)
    return needed


def _language_adapter_sources(
    spec: ModelSpec,
    settings: dict[str, Any],
    folder: Path | None,
    needed: set[str],
    built_adapters: dict[str, Path],
    downloads: list[str],
    notes: list[str],
) -> None:
    """Check where each needed language adapter comes from (the model folder, a local folder, one the grid
    builds, or the hub: a download), adding to ``downloads`` and ``notes``; a missing one is an error."""
    adapters = settings.get("language_adapters") or {}
    bundled = folder / "adapters" if folder is not None else None
    for lang in sorted(needed):
        if bundled is not None and (bundled / f"lang_{lang}").is_dir():
            continue
        src = adapters.get(lang)
        if src is None:
            if folder is not None and not model_ready(folder):
                notes.append(
                    f"language adapter {lang!r}: not in the training config; must come with the model"
                )
                continue
            raise ClirError(
                f"models[{spec.name}]: routing needs a language adapter for {lang!r}, but language_adapters "
                f"has none (has: {', '.join(sorted(adapters)) or 'none'}); add it under overrides.language_adapters"
            )
        src = str(src)
        sp = Path(src).expanduser()
        if src == "new" or sp.exists():
            continue
        if str(sp.resolve()) in {str(x) for x in built_adapters.values()}:
            continue
        if looks_like_path(src):
            raise ClirError(f"models[{spec.name}]: language adapter {lang!r}: folder {src} not found")
        downloads.append(
            f"model {spec.name}: language adapter {lang} from {src} (AdapterHub / Hugging Face hub)"
        )


def grid_model(
    spec: ModelSpec,
    cfg: ExperimentConfig,
    collections: list[GridCollection],
    built_adapters: dict[str, Path],
    controls: list[tuple[Routing, list[str]]] = (),  # type: ignore[assignment]
) -> GridModel:
    """What a model spec is, offline; ``controls``: the control rows' routings (and collections, empty: all)
    the model also runs under, for the language adapters they need."""
    source, folder, settings, downloads = _model_settings(spec)
    if settings is not None and spec.overrides:
        settings = merge_settings(settings, spec.overrides)
    elif spec.overrides:
        settings = None if folder is not None and not model_ready(folder) else dict(spec.overrides)
    known_mode = (settings or {}).get("adapter_mode") or spec.overrides.get("adapter_mode")
    if settings is not None and "adapter_mode" not in settings and not known_mode:
        known_mode = "full"
    if known_mode and spec.mode and known_mode != spec.mode:
        raise ClirError(f"models[{spec.name}]: mode {spec.mode} in the config, but the model is {known_mode}")
    mode = known_mode or spec.mode
    if mode is None:
        raise ClirError(
            f"models[{spec.name}]: cannot tell its adapter mode before it is built; add `mode: full|task|madx`"
        )
    notes: list[str] = []
    if settings is not None and (folder is None or model_ready(folder)):
        from_dict(ModelConfig, {k: v for k, v in settings.items()}, prefix=f"models[{spec.name}]")
    strategy = adapter_mode(mode)
    routings: list[Routing | None]
    if strategy.routes_languages:
        routings = list(spec.routings or cfg.routings)
    else:
        bad = [r.label() for r in (spec.routings or []) if "target" in (r.query, r.doc)]
        if bad:
            raise ClirError(f"models[{spec.name}]: routing {bad[0]} needs a madx model (mode is {mode})")
        routings = [None]  # no language adapter to route: one row
    build = None
    if folder is not None and not model_ready(folder):
        build = Build.parse(_build_command(spec, folder))
    if strategy.routes_languages and settings is not None:
        on = [(r, collections) for r in routings if r is not None]
        on += [(r, [c for c in collections if not names or c.name in names]) for r, names in controls]
        needed = _needed_languages(settings, on)
        _language_adapter_sources(spec, settings, folder, needed, built_adapters, downloads, notes)
    if settings is not None and not (
        folder is not None and model_ready(folder) and not strategy.has_adapters
    ):
        bb = settings.get("backbone")  # adapter modes load the backbone by name, and training needs it
        if (
            isinstance(bb, str)
            and not looks_like_path(bb)
            and bb != source
            and local_path(bb) == bb
            and not hub_cached(bb)
        ):
            downloads.append(f"model {spec.name}: Hugging Face hub {bb} (backbone, not in the local cache)")
    return GridModel(
        spec=spec,
        name=spec.name,
        source=source,
        folder=folder,
        mode=mode,
        routings=routings,
        settings=settings,
        build=build,
        downloads=downloads,
        notes=notes,
    )
