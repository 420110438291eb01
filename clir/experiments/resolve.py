"""Offline resolution of a grid's specs: what each collection and model of an experiment config is (folder,
ir_datasets id, registered name, hub id), which languages and adapters its rows need, and what is missing
and would have to be downloaded or built. Loads no model and no documents."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from clir.config import EvalConfig, ModelConfig, ModelSpec, Routing, from_dict, load_yaml
from clir.config.eval import CollectionSpec
from clir.errors import ClirError
from clir.experiments.grid import MODEL_FILE, GridCollection, GridModel, model_ready
from clir.model.registry import local_path

log = logging.getLogger(__name__)


def _looks_like_path(s: str) -> bool:
    return s.startswith((".", "/", "~")) or s.count("/") > 1


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ---------------------------------------------------------------------- planning (offline)
def resolve_collection(spec: CollectionSpec, i: int) -> GridCollection:
    from clir.data.sample import SAMPLE_NAME

    s = spec.source.strip()
    where = f"collections[{i}] ({s})"
    irds_id: str | None = None
    if s.startswith("irds:"):
        irds_id = s[len("irds:") :]
    elif s == SAMPLE_NAME:
        source, default_name = SAMPLE_NAME, SAMPLE_NAME
    else:
        p = Path(s).expanduser()
        if p.is_dir():
            source = str(p.resolve())
            default_name = "-".join(p.resolve().parts[-2:])
        elif p.exists():
            raise ClirError(f"{where}: a collection must be a folder (docs.jsonl, queries.tsv, qrels.txt)")
        elif s.startswith((".", "/", "~")):
            raise ClirError(f"{where}: folder not found (resolved against {Path.cwd()}: {p.resolve()})")
        else:
            from clir.data.irds import load_dataset

            try:
                load_dataset(s)
            except ClirError:
                raise ClirError(
                    f"{where}: neither a folder (resolved against {Path.cwd()}: {p.resolve()}) nor an "
                    "ir_datasets id (see https://ir-datasets.com)"
                ) from None
            irds_id = s
    if irds_id is not None:
        from clir.data.irds import load_dataset

        ds = load_dataset(irds_id)  # unknown ids fail here, offline
        for part in ("docs", "queries", "qrels"):
            if not getattr(ds, f"has_{part}")():
                raise ClirError(f"{where}: ir_datasets {irds_id!r} has no {part}")
        source, default_name = f"irds:{irds_id}", irds_id.replace("/", "-")
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
    folder = Path(coll.source) if coll.source != "sample" else None
    if folder is None:
        from clir.data.sample import sample_path

        folder = sample_path()
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
    from clir.model.registry import lookup

    s = spec.model.strip()
    p = Path(s).expanduser()
    downloads: list[str] = []
    if spec.build is not None or p.exists() or _looks_like_path(s):
        folder = p.resolve()
        if folder.is_dir() and (model_ready(folder) or spec.build is None):
            if (folder / MODEL_FILE).is_file():
                data = load_yaml(folder / MODEL_FILE)
                for lang, src in list((data.get("language_adapters") or {}).items()):
                    if isinstance(src, str) and not Path(src).is_absolute() and (folder / src).exists():
                        data["language_adapters"][lang] = str(folder / src)
                return str(folder), folder, data, downloads
            if (folder / "config.json").is_file():
                return str(folder), folder, {"backbone": str(folder)}, downloads
            raise ClirError(
                f"models[{spec.name}]: {folder} has neither {MODEL_FILE} (a clir model) nor config.json"
            )
        if spec.build is None:
            raise ClirError(
                f"models[{spec.name}]: folder {folder} does not exist (add `build:` to make it on demand)"
            )
        data = None
        if spec.build.config and Path(spec.build.config).is_file():
            try:
                train = load_yaml(spec.build.config)
            except ClirError as e:  # e.g. an unset ${VAR}: the training run itself will say so
                log.warning("models[%s]: cannot read %s for planning: %s", spec.name, spec.build.config, e)
                train = {}
            if isinstance(train.get("model"), dict):
                data = dict(train["model"])
        return str(folder), folder, data, downloads
    reg = lookup(s)
    if reg is not None:
        if not reg.path.is_dir():
            downloads.append(
                f"model {spec.name}: `clir models pull {s}` (registered model not on this machine)"
            )
        return s, None, {"backbone": str(reg.path), **reg.settings}, downloads
    if not _hub_cached(s):
        downloads.append(f"model {spec.name}: Hugging Face hub {s} (not in the local cache)")
    return s, None, {"backbone": s}, downloads


def _hub_cached(repo: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo, "config.json"), str)
    except Exception:  # malformed ids and cache errors both mean "not cached"
        return False


def _build_command(spec: ModelSpec, folder: Path) -> list[str]:
    b = spec.build
    assert b is not None
    cmd = [b.verb]
    if b.config:
        cmd += ["--config", b.config]
    if b.max_steps:
        cmd += ["--max-steps", str(b.max_steps)]
    # an interrupted build left checkpoints in its folder: continue it (a fresh one simply starts)
    resume = ["--resume"] if "--resume" not in b.args and "--overwrite" not in b.args else []
    return [*cmd, "--out", str(folder), *resume, *b.args]


def resolve_model(
    spec: ModelSpec, cfg: EvalConfig, collections: list[GridCollection], built_adapters: dict[str, Path]
) -> GridModel:
    source, folder, settings, downloads = _model_settings(spec)
    if settings is not None and spec.overrides:
        settings = _merge(settings, spec.overrides)
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
    routings: list[Routing | None]
    if mode == "madx":
        routings = list(spec.routings or cfg.routings)
    else:
        bad = [r.label() for r in (spec.routings or []) if "target" in (r.query, r.doc)]
        if bad:
            raise ClirError(f"models[{spec.name}]: routing {bad[0]} needs a madx model (mode is {mode})")
        routings = [None]  # no language adapter to route: one row
    build_cmd = None
    if folder is not None and not model_ready(folder):
        build_cmd = _build_command(spec, folder)
    if mode == "madx" and settings is not None:
        adapters = settings.get("language_adapters") or {}
        src_lang = settings.get("source_lang", "en")
        needed = {src_lang}
        for r in routings:
            assert r is not None
            if r.doc == "target":
                for c in collections:
                    langs = set(c.doc_langs())
                    # detected languages without an adapter take the fallback rule (the source adapter)
                    needed.update(langs - {x for x in c.detected_langs if x not in adapters})
            if r.query == "target":
                needed.update(c.query_lang for c in collections)
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
            if _looks_like_path(src):
                raise ClirError(f"models[{spec.name}]: language adapter {lang!r}: folder {src} not found")
            downloads.append(
                f"model {spec.name}: language adapter {lang} from {src} (AdapterHub / Hugging Face hub)"
            )
    if settings is not None and not (folder is not None and model_ready(folder) and mode == "full"):
        bb = settings.get("backbone")  # adapter modes load the backbone by name, and training needs it
        if (
            isinstance(bb, str)
            and not _looks_like_path(bb)
            and bb != source
            and local_path(bb) == bb
            and not _hub_cached(bb)
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
        build_cmd=build_cmd,
        downloads=downloads,
        notes=notes,
    )
