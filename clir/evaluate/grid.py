"""The experiment grid behind ``clir eval``: collections x models x language-adapter routings.

:func:`plan_grid` resolves a config offline (nothing is loaded or downloaded) into rows, the indexes they need
and what would have to be downloaded or built; :func:`run_grid` then

1. stops before any work when an ir_datasets file is missing (one message listing them all);
2. builds missing models / language adapters with ``clir train`` / ``clir train-language-adapter``;
3. per model: loads the encoder once, builds each index once (collection x model x doc routing; an existing
   index is reused when its manifest's encoder fingerprint matches), searches every pending row and writes
   ``runs/<row>.trec`` plus a ``.done.json`` marker keyed by a hash of what produced the run;
4. BM25 rows through Pyserini, fusion rows with ranx;
5. scores every finished row with ranx, tests each against the baseline (t-test, Fisher) and the document
   adapter swap (``d-target`` vs ``d-source``), and writes metrics.json, report.md and plots.

Re-running with the same config skips rows whose marker matches; ``--only`` narrows what is computed, while
the report covers every row of the grid that has a finished run."""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from clir.config import EvalConfig, ModelConfig, ModelSpec, Routing, from_dict, load_yaml, to_dict
from clir.config.eval import CollectionSpec
from clir.errors import ClirError

log = logging.getLogger(__name__)

RUNS_DIR = "runs"
INDEXES_DIR = "indexes"
MODEL_FILE = "clir_model.yaml"  # clir.model.encoder.MODEL_FILE, without importing torch
RowKind = Literal["dense", "bm25", "fusion"]


# ---------------------------------------------------------------------- config
def load_eval_config(path: str | Path) -> EvalConfig:
    """Read and validate an experiment YAML (``${VAR}`` / ``${VAR:-default}`` expanded)."""
    data = load_yaml(path)
    return from_dict(EvalConfig, data)


def config_hash(cfg: EvalConfig) -> str:
    blob = json.dumps(to_dict(cfg), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _hash(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]


def _looks_like_path(s: str) -> bool:
    return s.startswith((".", "/", "~")) or s.count("/") > 1


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _tree_stamp(path: Path) -> list[tuple[str, int, int]]:
    """(file, size, mtime) of every file under ``path``: cheap identity of a model or adapter folder."""
    if path.is_file():
        st = path.stat()
        return [(path.name, st.st_size, st.st_mtime_ns)]
    out = []
    for root, _dirs, files in os.walk(path):
        for f in files:
            p = Path(root) / f
            st = p.stat()
            out.append((str(p.relative_to(path)), st.st_size, st.st_mtime_ns))
    return sorted(out)


# ---------------------------------------------------------------------- grid parts
@dataclass
class GridCollection:
    spec: CollectionSpec
    name: str
    #: what load_collection takes: an absolute folder, ``sample`` or ``irds:<id>``
    source: str
    irds_id: str | None
    doc_lang: str | None
    query_field: str | None
    query_lang: str
    #: the language of document-language queries for BM25 (None: BM25 does not apply)
    bm25_lang: str | None = None
    bm25_note: str = ""
    _doc_langs: list[str] | None = None

    def collection(self):
        from clir.data import load_collection

        return load_collection(self.source)

    def doc_langs(self) -> list[str]:
        """Languages of the documents (for target routing): doc_lang, the dataset's, or the docs' ``lang``."""
        if self._doc_langs is None:
            if self.doc_lang:
                self._doc_langs = [self.doc_lang]
            else:
                coll = self.collection()
                lang = coll.lang
                if lang:
                    self._doc_langs = [lang]
                elif self.irds_id:
                    self._doc_langs = []
                else:
                    self._doc_langs = sorted({d.lang for d in coll.docs() if d.lang})
        return list(self._doc_langs)

    def key(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "doc_lang": self.doc_lang,
            "query_field": self.query_field,
            "query_lang": self.query_lang,
        }


@dataclass
class GridModel:
    spec: ModelSpec
    name: str
    #: what load_encoder takes (absolute folder, registered name or hub id)
    source: str
    folder: Path | None
    mode: str
    routings: list[Routing | None]
    #: the merged encoder settings when known offline (model folder / training config + overrides)
    settings: dict[str, Any] | None
    build_cmd: list[str] | None = None
    downloads: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def madx(self) -> bool:
        return self.mode == "madx"

    def exists(self) -> bool:
        return self.folder is None or self.folder.is_dir()

    def stamp(self) -> Any:
        """What identifies the model's weights and settings without loading it (for run markers)."""
        parts: dict[str, Any] = {"source": self.source, "overrides": self.spec.overrides}
        if self.folder is not None and self.folder.exists():
            parts["files"] = _hash(_tree_stamp(self.folder))
        else:
            from clir.model.registry import lookup

            reg = lookup(self.source)
            if reg is not None and reg.path.is_dir():
                parts["files"] = _hash(_tree_stamp(reg.path))
        for lang, src in sorted(((self.settings or {}).get("language_adapters") or {}).items()):
            p = Path(str(src)).expanduser()
            if p.exists():
                parts[f"lang_{lang}"] = _hash(_tree_stamp(p))
        return parts


@dataclass
class GridRow:
    collection: GridCollection
    kind: RowKind
    model: GridModel | None = None
    routing: Routing | None = None
    #: fusion rows: the method and the dense row fused with BM25
    method: str | None = None
    dense: GridRow | None = None

    @property
    def variant(self) -> str:
        if self.kind == "bm25":
            return "bm25"
        if self.kind == "fusion":
            assert self.dense is not None
            return f"{self.dense.variant}+bm25-{self.method}"
        assert self.model is not None
        return self.model.name if self.routing is None else f"{self.model.name}/{self.routing.label()}"

    @property
    def id(self) -> str:
        return f"{self.collection.name}/{self.variant}"

    @property
    def stem(self) -> str:
        return self.id.replace("/", "__")

    @property
    def doc_route(self) -> str | None:
        return self.routing.doc if self.routing is not None else None


@dataclass
class IndexJob:
    collection: GridCollection
    model: GridModel
    doc_route: str | None
    path: Path

    @property
    def label(self) -> str:
        r = f" d-{self.doc_route}" if self.doc_route else ""
        return f"{self.collection.name} x {self.model.name}{r}"


@dataclass
class Plan:
    config: EvalConfig
    config_path: str
    out: Path
    index_root: Path
    k: int
    collections: list[GridCollection]
    models: list[GridModel]
    rows: list[GridRow]
    selected: list[GridRow]
    baseline: str
    irds_missing: dict[str, list[tuple[str, Path, list[str]]]]
    adapter_builds: list[tuple[str, Path, list[str]]]
    bm25_unavailable: str | None = None

    @property
    def runs_dir(self) -> Path:
        return self.out / RUNS_DIR

    def run_path(self, row: GridRow) -> Path:
        return self.runs_dir / f"{row.stem}.trec"

    def marker_path(self, row: GridRow) -> Path:
        return self.runs_dir / f"{row.stem}.done.json"

    def index_path(self, coll: GridCollection, model: GridModel, doc_route: str | None) -> Path:
        suffix = f"__d-{doc_route}" if doc_route else ""
        return self.index_root / f"{coll.name}__{model.name}{suffix}"

    def bm25_index_path(self, coll: GridCollection) -> Path:
        return self.index_root / f"{coll.name}__bm25-{coll.bm25_lang}"

    def row_key(self, row: GridRow) -> str:
        """Hash of what produces a row's run; a marker with another key means the run is stale."""
        cfg = self.config
        if row.kind == "bm25":
            return _hash(
                {
                    "kind": "bm25",
                    "collection": row.collection.key(),
                    "bm25_lang": row.collection.bm25_lang,
                    "k1": cfg.bm25.k1,
                    "b": cfg.bm25.b,
                    "k": self.k,
                }
            )
        assert row.model is not None
        return _hash(
            {
                "kind": "dense",
                "collection": row.collection.key(),
                "model": row.model.stamp(),
                "routing": to_dict(row.routing) if row.routing else None,
                "k": self.k,
                "factory": cfg.factory,
                "seed": cfg.seed,
            }
        )

    def is_done(self, row: GridRow) -> bool:
        if row.kind == "fusion":
            return False
        if row.model is not None and not row.model.exists():
            return False
        marker, run = self.marker_path(row), self.run_path(row)
        if not (marker.is_file() and run.is_file()):
            return False
        try:
            info = json.loads(marker.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return False
        return info.get("key") == self.row_key(row)

    def index_jobs(self, rows: list[GridRow]) -> list[IndexJob]:
        seen: dict[Path, IndexJob] = {}
        for r in rows:
            if r.kind == "dense" and r.model is not None:
                p = self.index_path(r.collection, r.model, r.doc_route)
                seen.setdefault(p, IndexJob(r.collection, r.model, r.doc_route, p))
        return list(seen.values())


# ---------------------------------------------------------------------- planning (offline)
def _resolve_collection(spec: CollectionSpec, i: int) -> GridCollection:
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
        if folder.is_dir():
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
    return [*cmd, "--out", str(folder), *b.args]


def _verb_available(verb: str) -> bool:
    return importlib.util.find_spec(f"clir.cli.{verb.replace('-', '_')}") is not None


def _resolve_model(
    spec: ModelSpec, cfg: EvalConfig, collections: list[GridCollection], built_adapters: dict[str, Path]
) -> GridModel:
    source, folder, settings, downloads = _model_settings(spec)
    if settings is not None and spec.overrides:
        settings = _merge(settings, spec.overrides)
    elif spec.overrides:
        settings = None if folder is not None and not folder.is_dir() else dict(spec.overrides)
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
    if settings is not None and (folder is None or folder.is_dir()):
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
    if folder is not None and not folder.is_dir():
        build_cmd = _build_command(spec, folder)
        if not _verb_available(spec.build.verb):  # type: ignore[union-attr]
            notes.append(f"`clir {spec.build.verb}` is not available in this installation yet")  # type: ignore[union-attr]
    if mode == "madx" and settings is not None:
        adapters = settings.get("language_adapters") or {}
        src_lang = settings.get("source_lang", "en")
        needed = {src_lang}
        for r in routings:
            assert r is not None
            if r.doc == "target":
                for c in collections:
                    needed.update(c.doc_langs())
            if r.query == "target":
                needed.update(c.query_lang for c in collections)
        bundled = folder / "adapters" if folder is not None else None
        for lang in sorted(needed):
            if bundled is not None and (bundled / f"lang_{lang}").is_dir():
                continue
            src = adapters.get(lang)
            if src is None:
                if folder is not None and not folder.is_dir():
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
    if settings is not None and not (folder is not None and folder.is_dir() and mode == "full"):
        bb = settings.get("backbone")  # adapter modes load the backbone by name, and training needs it
        if isinstance(bb, str) and not _looks_like_path(bb) and bb != source and not _hub_cached(bb):
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


def _select(rows: list[GridRow], only: list[str] | None) -> list[GridRow]:
    if not only:
        return list(rows)
    chosen = []
    for r in rows:
        if any(fnmatch.fnmatchcase(r.id, p) or fnmatch.fnmatchcase(r.id, p.rstrip("/") + "/*") for p in only):
            chosen.append(r)
    if not chosen:
        sample = ", ".join(r.id for r in rows[:6])
        raise ClirError(f"--only {' '.join(only)} matches no row of the grid (rows look like: {sample}, ...)")
    ids = {r.id for r in chosen}
    for r in list(chosen):  # a fusion row needs its two inputs
        if r.kind == "fusion":
            assert r.dense is not None
            for dep in (r.dense, next(x for x in rows if x.kind == "bm25" and x.collection is r.collection)):
                if dep.id not in ids:
                    chosen.append(dep)
                    ids.add(dep.id)
    order = {r.id: i for i, r in enumerate(rows)}
    return sorted(chosen, key=lambda r: order[r.id])


def plan_grid(
    cfg: EvalConfig,
    *,
    config_path: str | Path = "",
    out: str | Path | None = None,
    only: list[str] | None = None,
) -> Plan:
    """Resolve ``cfg`` into a plan, offline: validates every collection and model, loads nothing heavy."""
    from clir.data.irds import missing_files

    out_dir = Path(out or cfg.output or f"eval/results/{cfg.name}")
    index_root = Path(cfg.index_root) if cfg.index_root else out_dir / INDEXES_DIR
    collections = [_resolve_collection(c, i) for i, c in enumerate(cfg.collections)]
    names = [c.name for c in collections]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ClirError(f"collections: duplicate name(s) {', '.join(dup)}: give each a distinct `name`")
    built_adapters: dict[str, Path] = {}
    adapter_builds = []
    irds_missing_text: dict[str, list[tuple[str, Path, list[str]]]] = {}
    for a in cfg.adapters:
        outp = Path(a.out).expanduser().resolve()
        built_adapters[a.lang] = outp
        if not outp.is_dir():
            cmd = ["train-language-adapter", "--lang", a.lang, "--text", a.text, "--backbone", a.backbone]
            if a.max_steps:
                cmd += ["--max-steps", str(a.max_steps)]
            adapter_builds.append((a.lang, outp, [*cmd, "--out", str(outp), *a.args]))
            if a.text.startswith("irds:"):
                missing = missing_files(a.text[len("irds:") :], ("docs",))
                if missing:
                    irds_missing_text[a.text[len("irds:") :]] = missing
    models = [_resolve_model(m, cfg, collections, built_adapters) for m in cfg.models]

    rows: list[GridRow] = []
    for c in collections:
        dense = [GridRow(c, "dense", model=m, routing=r) for m in models for r in m.routings]
        rows += dense
        if cfg.bm25.enabled and c.bm25_lang:
            rows.append(GridRow(c, "bm25"))
            fused = [d for d in dense if not cfg.fusion.models or d.model.name in cfg.fusion.models]  # type: ignore[union-attr]
            for method in cfg.fusion.methods:
                rows += [GridRow(c, "fusion", method=method, dense=d) for d in fused]
    variants = {r.variant for r in rows}
    if cfg.significance.baseline:
        baseline = cfg.significance.baseline.replace(":", "/")
        if baseline not in variants:
            raise ClirError(
                f"significance.baseline {cfg.significance.baseline!r} is not a row of the grid "
                f"(rows: {', '.join(sorted(variants))})"
            )
    else:
        baseline = next(r.variant for r in rows if r.kind == "dense")
    selected = _select(rows, only)

    irds_missing: dict[str, list[tuple[str, Path, list[str]]]] = dict(irds_missing_text)
    for c in {r.collection.name: r.collection for r in selected}.values():
        if c.irds_id and c.irds_id not in irds_missing:
            missing = missing_files(c.irds_id)
            if missing:
                irds_missing[c.irds_id] = missing
    bm25_reason = None
    if any(r.kind == "bm25" for r in selected):
        from clir.evaluate.bm25 import unavailable_reason

        bm25_reason = unavailable_reason()
    return Plan(
        config=cfg,
        config_path=str(config_path),
        out=out_dir,
        index_root=index_root,
        k=cfg.hits_k(),
        collections=collections,
        models=models,
        rows=rows,
        selected=selected,
        baseline=baseline,
        irds_missing=irds_missing,
        adapter_builds=adapter_builds,
        bm25_unavailable=bm25_reason,
    )


def format_plan(plan: Plan) -> str:
    """The ``--dry-run`` listing: collections, models, builds, indexes, runs, metrics and downloads."""
    cfg = plan.config
    lines = [f"eval grid {cfg.name!r} ({plan.config_path}) -> {plan.out}", ""]
    lines.append(f"collections ({len(plan.collections)}):")
    for c in plan.collections:
        q = f"queries: {c.query_field or 'queries.tsv'} ({c.query_lang})"
        bm = (
            f"bm25 queries: {c.bm25_lang}"
            if c.bm25_lang
            else f"bm25: n/a ({c.bm25_note})"
            if cfg.bm25.enabled
            else ""
        )
        lines.append(
            f"  {c.name:<24} {c.source}  doc_lang={c.doc_lang or 'per document'}  {q}  {bm}".rstrip()
        )
    lines += ["", f"models ({len(plan.models)}):"]
    for m in plan.models:
        routes = ", ".join(r.label() for r in m.routings if r) or "one row (no language adapter to route)"
        state = "on disk" if m.exists() else "MISSING: built on demand"
        lines.append(f"  {m.name:<24} {m.source}  mode={m.mode}  [{state}]  routings: {routes}")
        for n in m.notes:
            lines.append(f"      note: {n}")
    builds = [(f"language adapter {lang}", cmd) for lang, _o, cmd in plan.adapter_builds]
    builds += [(f"model {m.name}", m.build_cmd) for m in plan.models if m.build_cmd]
    lines += ["", f"builds ({len(builds)}):"]
    for what, cmd in builds:
        avail = "" if _verb_available(cmd[0]) else "   [verb not available yet]"
        lines.append(f"  {what}: clir {' '.join(cmd)}{avail}")
    pending = [r for r in plan.selected if not plan.is_done(r)]
    jobs = plan.index_jobs([r for r in pending if r.kind == "dense"])
    lines += ["", f"indexes ({len(jobs)} needed, under {plan.index_root}):"]
    for j in jobs:
        state = "exists: reused if its manifest matches" if (j.path / "manifest.json").is_file() else "build"
        lines.append(f"  {j.path}  ({j.label}; {state})")
    for c in {r.collection.name: r.collection for r in pending if r.kind == "bm25"}.values():
        lines.append(f"  {plan.bm25_index_path(c)}  ({c.name} BM25, Lucene {c.bm25_lang} analyzer)")
    done = [r for r in plan.selected if plan.is_done(r)]
    lines += [
        "",
        f"runs ({len(plan.selected)} rows: {len(pending)} to compute, {len(done)} finished; k={plan.k}):",
    ]
    for r in plan.selected:
        state = "done" if r in done else "todo"
        lines.append(f"  [{state}] {r.id}")
    skipped = [c for c in plan.collections if cfg.bm25.enabled and not c.bm25_lang]
    for c in skipped:
        lines.append(f"  (no BM25 row for {c.name}: {c.bm25_note})")
    if plan.bm25_unavailable:
        lines.append(f"  BM25 rows cannot run here: {plan.bm25_unavailable}")
    sig = cfg.significance
    lines += [
        "",
        f"metrics: {', '.join(cfg.metrics)} (primary: {cfg.primary})",
        f"significance: {', '.join(sig.tests)} vs baseline {plan.baseline}, p < {sig.max_p}; "
        "adapter swap: d-target vs d-source",
        "",
    ]
    downloads = []
    for ds_id, missing in plan.irds_missing.items():
        for part, path, urls in missing:
            downloads.append(f"ir_datasets {ds_id} {part}: {path}" + (f" (from {urls[0]})" if urls else ""))
    for m in plan.models:
        downloads += m.downloads
    lines.append(f"downloads needed ({len(downloads)}):" if downloads else "downloads needed: none")
    lines += [f"  {d}" for d in downloads]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- running
@dataclass
class GridResult:
    plan: Plan
    rows: list[dict[str, Any]]
    swaps: list[dict[str, Any]]
    computed: list[str]
    skipped: list[str]
    missing: list[str]
    seconds: float
    command: str
    notes: list[str] = field(default_factory=list)


def check_offline(plan: Plan) -> None:
    """One error naming every missing ir_datasets file, before any work starts."""
    from clir.data.irds import offline_message

    if plan.irds_missing:
        msgs = [offline_message(ds_id, missing) for ds_id, missing in plan.irds_missing.items()]
        raise ClirError("cannot run the grid offline:\n" + "\n".join(msgs))


def _run_clir(cmd: list[str], what: str) -> None:
    if not _verb_available(cmd[0]):
        raise ClirError(
            f"{what} must be built with `clir {' '.join(cmd)}`, but this installation has no `clir {cmd[0]}` yet; "
            "build it another way (or point the config at an existing folder)"
        )
    log.info("building %s: clir %s", what, " ".join(cmd))
    if "--out" in cmd:  # the output's parent folder may not exist yet
        Path(cmd[cmd.index("--out") + 1]).parent.mkdir(parents=True, exist_ok=True)
    # the child's stdout goes to our stderr: stdout is for what `clir eval` prints
    res = subprocess.run([sys.executable, "-m", "clir", *cmd], stdout=2, check=False)
    if res.returncode != 0:
        raise ClirError(f"building {what} failed (exit {res.returncode}): clir {' '.join(cmd)}")


def _run_builds(plan: Plan) -> None:
    needed = {r.model.name for r in plan.selected if r.model is not None and not plan.is_done(r)}
    for r in plan.selected:
        if r.kind == "fusion" and r.dense is not None and r.dense.model is not None:
            if not plan.is_done(r.dense):
                needed.add(r.dense.model.name)
    for lang, outp, cmd in plan.adapter_builds:
        if not outp.is_dir():
            _run_clir(cmd, f"language adapter {lang} ({outp})")
    for m in plan.models:
        if m.name in needed and m.build_cmd and not m.exists():
            _run_clir(m.build_cmd, f"model {m.name} ({m.folder})")
            if not m.exists():
                raise ClirError(f"`clir {' '.join(m.build_cmd)}` finished but {m.folder} does not exist")


def _lang_seed(seed: int, lang: str) -> int:
    return int(hashlib.sha256(f"{seed}:{lang}".encode()).hexdigest()[:8], 16)


def _prepare_languages(enc, needed: set[str], seed: int) -> None:
    """Exactly the source adapter plus ``needed`` loaded: fresh (``new``) adapters get a seed of their own, so
    an index's recorded fingerprint is the same whatever ran before it."""
    import torch

    if enc.config.adapter_mode != "madx":
        return
    for lang in enc.loaded_languages():
        if lang not in needed:
            enc.unload_language_adapter(lang)
    for lang in sorted(needed - set(enc.loaded_languages())):
        with torch.random.fork_rng():
            torch.manual_seed(_lang_seed(seed, lang))
            enc.load_language_adapter(lang)


def _ensure_index(plan: Plan, job: IndexJob, enc) -> Path:
    from clir.index import IndexArgs, build_index
    from clir.index.store import read_manifest
    from clir.search.searcher import fingerprint_diff

    coll = job.collection
    if (job.path / "manifest.json").is_file():
        try:
            manifest = read_manifest(job.path)
        except ClirError as e:
            manifest = None
            log.warning("rebuilding %s: %s", job.path, e)
        if manifest is not None:
            if manifest.get("collection") != coll.source or manifest.get("doc_lang") != coll.doc_lang:
                log.warning(
                    "rebuilding %s: it indexes %s, not %s", job.path, manifest.get("collection"), coll.source
                )
            else:
                diff = fingerprint_diff(manifest["encoder"], enc.fingerprint())
                if not diff:
                    log.info("reusing index %s", job.path)
                    return job.path
                log.warning(
                    "rebuilding %s: built with another encoder (differs in %s)", job.path, ", ".join(diff)
                )
    args = IndexArgs(
        collection=coll.source,
        model=job.model.source,
        out=str(job.path),
        doc_lang=coll.doc_lang,
        factory=plan.config.factory,
        batch_size=plan.config.batch_size,
        overwrite=True,
        # a build this grid started and was killed in: continue from its checkpoints
        resume=job.path.with_name(job.path.name + ".partial").is_dir(),
    )
    try:
        build_index(args, encoder=enc)
    except ClirError as e:
        if "cannot resume" not in str(e):
            raise
        log.warning("%s; starting that index over", e)
        args.resume = False
        build_index(args, encoder=enc)
    return job.path


def _write_run(
    plan: Plan, row: GridRow, results: dict[str, list], seconds: float, extra: dict[str, Any]
) -> None:
    from clir.index.store import atomic_write_text, now_iso
    from clir.search import write_trec_run

    write_trec_run(plan.run_path(row), results, tag=row.variant.replace(" ", "_"))
    marker = {
        "key": plan.row_key(row),
        "row": row.id,
        "created": now_iso(),
        "seconds": round(seconds, 2),
        "queries": len(results),
        **extra,
    }
    atomic_write_text(plan.marker_path(row), json.dumps(marker, indent=2) + "\n")


class _QueryCache:
    def __init__(self) -> None:
        self._q: dict[tuple[str, str | None], list] = {}

    def get(self, coll: GridCollection, lang: str | None = None) -> list:
        key = (coll.name, lang)
        if key not in self._q:
            field_ = coll.query_field
            qs = coll.collection().queries(field=field_, lang=lang)
            qs = [q for q in qs if q.text.strip()]
            if not qs:
                raise ClirError(f"collection {coll.name}: no queries" + (f" in {lang}" if lang else ""))
            self._q[key] = qs
        return self._q[key]


def _query_adapter(enc, routing: Routing | None, query_lang: str) -> str:
    """The language adapter under the task adapter on the query side (what the query vectors depend on)."""
    if routing is None or enc.config.adapter_mode != "madx":
        return "-"
    if routing.query == "none":
        return "none"
    return enc.config.source_lang if routing.query == "source" else query_lang


def _hits(docids: list[str], scores, rows) -> list:
    from clir.search import Hit

    out = []
    for s, r in zip(scores, rows, strict=True):
        if r >= 0:  # -1: fewer than k results
            out.append(Hit(len(out) + 1, docids[r], float(s)))
    return out


def _run_model(plan: Plan, model: GridModel, rows: list[GridRow], queries: _QueryCache, bar) -> None:
    import torch

    from clir.model import load_encoder
    from clir.search import Searcher

    cfg = plan.config
    overrides = dict(model.spec.overrides)
    torch.manual_seed(cfg.seed)  # fresh task/source adapters of an untrained model: same weights every run
    enc = load_encoder(model.source, overrides)
    if enc.config.adapter_mode != model.mode:
        raise ClirError(
            f"model {model.name}: expected adapter mode {model.mode}, the model is {enc.config.adapter_mode}"
        )
    src = enc.config.source_lang
    qvecs: dict[tuple[str, str], Any] = {}
    for job in plan.index_jobs(rows):
        coll = job.collection
        job_rows = [r for r in rows if r.collection is coll and r.doc_route == job.doc_route]
        doc_needed = {src}
        if job.doc_route == "target":
            langs = coll.doc_langs()
            if not langs:
                raise ClirError(f"{coll.name}: target routing needs the documents' language: set doc_lang")
            doc_needed.update(langs)
        if model.madx:
            first = job_rows[0].routing
            assert first is not None
            enc.set_routing(first.query, job.doc_route or "source")
        _prepare_languages(enc, doc_needed, cfg.seed)
        t0 = time.perf_counter()
        index = _ensure_index(plan, job, enc)
        t_index = time.perf_counter() - t0
        searcher = Searcher(index, encoder=enc)  # checks the encoder against the manifest once more
        qs = queries.get(coll)
        for row in job_rows:
            t = time.perf_counter()
            if row.routing is not None:
                enc.set_routing(row.routing.query, row.routing.doc)
                needed = set(doc_needed)
                if row.routing.query == "target":
                    needed.add(coll.query_lang)
                _prepare_languages(enc, needed, cfg.seed)
            # d-source and d-target rows share their query vectors: encode each query side once
            qkey = (coll.name, _query_adapter(enc, row.routing, coll.query_lang))
            if qkey not in qvecs:
                qvecs[qkey] = enc.encode_queries([q.text for q in qs], lang=coll.query_lang, batch_size=64)
            scores, idx = searcher.search_vectors(qvecs[qkey], plan.k)
            results = {q.query_id: _hits(searcher.docids, scores[i], idx[i]) for i, q in enumerate(qs)}
            extra = {"index": str(index), "index_seconds": round(t_index, 2)}
            _write_run(plan, row, results, time.perf_counter() - t, extra)
            t_index = 0.0
            bar.update(1)
            bar.set_postfix_str(row.id)
    del enc


def _run_bm25(plan: Plan, row: GridRow, queries: _QueryCache, bar) -> None:
    from clir.evaluate.bm25 import bm25_search, build_bm25_index, index_matches
    from clir.search import Hit

    coll = row.collection
    cfg = plan.config
    lang = coll.bm25_lang
    assert lang is not None
    analyzer_lang = coll.doc_lang or lang
    t = time.perf_counter()
    path = plan.bm25_index_path(coll)
    if not index_matches(path, coll.source, analyzer_lang):
        build_bm25_index(
            coll.collection().docs(),
            path,
            lang=analyzer_lang,
            collection=coll.source,
            threads=cfg.bm25.threads,
        )
    qs = queries.get(coll, lang)
    run = bm25_search(
        path, qs, lang=analyzer_lang, k=plan.k, k1=cfg.bm25.k1, b=cfg.bm25.b, threads=cfg.bm25.threads
    )
    results = {
        qid: [Hit(i + 1, d, s) for i, (d, s) in enumerate(sorted(hits.items(), key=lambda x: (-x[1], x[0])))]
        for qid, hits in run.items()
        if hits
    }
    _write_run(plan, row, results, time.perf_counter() - t, {"index": str(path), "query_lang": lang})
    bar.update(1)
    bar.set_postfix_str(row.id)


def run_grid(plan: Plan, *, command: str = "") -> GridResult:
    """Compute every pending selected row, then score and test every finished row and write the outputs."""
    from clir.evaluate.report import write_outputs
    from clir.progress import progress

    t0 = time.perf_counter()
    check_offline(plan)
    pending_bm25 = [r for r in plan.selected if r.kind == "bm25" and not plan.is_done(r)]
    if pending_bm25 and plan.bm25_unavailable:
        raise ClirError(
            f"BM25 rows cannot run: {plan.bm25_unavailable}. Set bm25.enabled: false, or leave them out "
            "with --only"
        )
    _run_builds(plan)
    plan.out.mkdir(parents=True, exist_ok=True)
    plan.runs_dir.mkdir(parents=True, exist_ok=True)
    _write_resolved_config(plan)

    pending = [r for r in plan.selected if r.kind in ("dense", "bm25") and not plan.is_done(r)]
    skipped = [r.id for r in plan.selected if r.kind in ("dense", "bm25") and r not in pending]
    if skipped:
        log.info("%d run(s) already finished with this config: skipped", len(skipped))
    queries = _QueryCache()
    bar = progress(total=len(pending), desc="eval grid", unit="run")
    try:
        for model in plan.models:
            rows = [r for r in pending if r.kind == "dense" and r.model is model]
            if rows:
                _run_model(plan, model, rows, queries, bar)
        for row in pending:
            if row.kind == "bm25":
                _run_bm25(plan, row, queries, bar)
    finally:
        bar.close()
    result = score_grid(plan, command=command, computed=[r.id for r in pending], skipped=skipped)
    result.seconds = time.perf_counter() - t0
    write_outputs(result)
    return result


def _write_resolved_config(plan: Plan) -> None:
    import yaml

    from clir.index.store import atomic_write_text

    data = to_dict(plan.config)
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    atomic_write_text(plan.out / "config.resolved.yaml", f"# config hash {config_hash(plan.config)}\n{text}")


# ---------------------------------------------------------------------- scoring
def _run_seconds(plan: Plan, row: GridRow) -> float | None:
    """Seconds the row's run took when it was computed (its index build included), from its marker."""
    if row.kind == "fusion":
        return None
    try:
        info = json.loads(plan.marker_path(row).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return round(float(info.get("seconds", 0)) + float(info.get("index_seconds", 0)), 1)


def score_grid(
    plan: Plan, *, command: str = "", computed: list[str] = (), skipped: list[str] = ()
) -> GridResult:  # type: ignore[assignment]
    """Metrics, significance and swap deltas of every grid row that has a finished run."""
    from clir.evaluate.fusion import fuse_runs
    from clir.evaluate.metrics import evaluate
    from clir.evaluate.significance import compare_runs
    from clir.search import Hit, read_trec_run, write_trec_run

    cfg = plan.config
    sig = cfg.significance
    rows_out: list[dict[str, Any]] = []
    swaps: list[dict[str, Any]] = []
    missing: list[str] = []
    notes: list[str] = []
    for coll in plan.collections:
        coll_rows = [r for r in plan.rows if r.collection is coll]
        runs: dict[str, dict[str, dict[str, float]]] = {}
        present: list[GridRow] = []
        for r in coll_rows:
            if r.kind == "fusion":
                assert r.dense is not None
                bm = next(x for x in coll_rows if x.kind == "bm25")
                if r.dense.variant in runs and bm.variant in runs:
                    fused = fuse_runs(
                        [runs[r.dense.variant], runs[bm.variant]],
                        r.method or "rrf",
                        rrf_k=cfg.fusion.rrf_k,
                        k=plan.k,
                    )
                    results = {
                        q: [Hit(i + 1, d, s) for i, (d, s) in enumerate(h.items())] for q, h in fused.items()
                    }
                    write_trec_run(plan.run_path(r), results, tag=r.variant)
                    runs[r.variant] = read_trec_run(plan.run_path(r))
                    present.append(r)
                else:
                    missing.append(r.id)
                continue
            if plan.is_done(r):
                runs[r.variant] = read_trec_run(plan.run_path(r))
                present.append(r)
            else:
                missing.append(r.id)
        if not present:
            continue
        qrels = coll.collection().qrels()
        scores = {r.variant: evaluate(runs[r.variant], qrels, cfg.metrics) for r in present}
        variants = [r.variant for r in present]
        base = plan.baseline if plan.baseline in runs else None
        if base is None:
            notes.append(
                f"{coll.name}: the baseline {plan.baseline} has no finished run: no significance tests"
            )
        pairs = [(base, v) for v in variants if base and v != base]
        swap_pairs = []
        for r in present:
            if r.kind == "dense" and r.routing is not None and r.routing.doc == "source":
                for doc in ("target", "none"):  # the swap, and dropping the language adapter
                    other = f"{r.model.name}/{Routing(r.routing.query, doc).label()}"  # type: ignore[union-attr]
                    if other in runs:
                        swap_pairs.append((r.variant, other))
        all_pairs = list(dict.fromkeys(pairs + swap_pairs))
        tests = (
            compare_runs(
                qrels,
                runs,
                cfg.metrics,
                pairs=all_pairs,
                tests=list(sig.tests),
                max_p=sig.max_p,
                n_permutations=sig.n_permutations,
                random_seed=sig.random_seed,
                correction=sig.correction,
            )
            if all_pairs
            else {}
        )
        for r in present:
            v = r.variant
            row = {
                "collection": coll.name,
                "source": coll.source,
                "lang": coll.doc_lang,
                "variant": v,
                "kind": r.kind,
                "model": r.model.name if r.model else ("bm25" if r.kind == "bm25" else None),
                "mode": r.model.mode if r.model else None,
                "routing": to_dict(r.routing) if r.routing else None,
                "fusion": {"method": r.method, "dense": r.dense.variant}
                if r.kind == "fusion" and r.dense
                else None,
                "run": str(plan.run_path(r).relative_to(plan.out)),
                "queries": len(runs[v]),
                "seconds": _run_seconds(plan, r),
                "metrics": scores[v],
                "baseline": v == base,
                "significance": tests.get((base, v)) if base and v != base else None,
            }
            rows_out.append(row)
        for a, b in swap_pairs:
            ra = next(r for r in present if r.variant == a)
            swaps.append(
                {
                    "collection": coll.name,
                    "lang": coll.doc_lang,
                    "model": ra.model.name,  # type: ignore[union-attr]
                    "query_routing": ra.routing.query,  # type: ignore[union-attr]
                    "doc_routing": b.rsplit("d-", 1)[-1],
                    "source": a,
                    "target": b,
                    "delta": {m: scores[b][m] - scores[a][m] for m in cfg.metrics},
                    "significance": tests.get((a, b)),
                }
            )
    return GridResult(
        plan=plan,
        rows=rows_out,
        swaps=swaps,
        computed=list(computed),
        skipped=list(skipped),
        missing=missing,
        seconds=0.0,
        command=command,
        notes=notes,
    )
