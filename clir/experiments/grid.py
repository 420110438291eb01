"""What an experiment grid is made of: its collections, models, rows (collection x model x routing, BM25,
fusion), the indexes they need, and the :class:`Plan` that knows where each run and marker lives and whether
a row's run is still current. Nothing here loads a model or a collection's documents."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from clir.config import ExperimentConfig, ModelSpec, Routing, from_dict, load_yaml, to_dict
from clir.config.build_flags import Request as BuildRequest
from clir.config.build_flags import request_from_flags
from clir.config.experiment import CollectionSpec
from clir.config.index import PassageSpec
from clir.config.requests import TrainRequest
from clir.errors import ClirError
from clir.experiments.fusion import RunDict
from clir.index.recipe import IndexRecipe
from clir.model.modes import FullMode, adapter_mode, routes_languages
from clir.model.resolve import model_ready
from clir.safe_load import read_json

RUNS_DIR = "runs"
INDEXES_DIR = "indexes"


# ---------------------------------------------------------------------- config
def load_experiment_config(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment YAML (``${VAR}`` / ``${VAR:-default}`` expanded)."""
    data = load_yaml(path)
    return from_dict(ExperimentConfig, data)


def config_hash(cfg: ExperimentConfig) -> str:
    blob = json.dumps(to_dict(cfg), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _hash(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]


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
    #: languages only language identification found: those without an adapter take the fallback rule
    detected_langs: set[str] = field(default_factory=set)

    def collection(self):
        from clir.data import load_collection

        return load_collection(self.source)

    def doc_langs(self) -> list[str]:
        """Languages of the documents (for target routing): doc_lang, the dataset's, the docs' ``lang``, or
        what language identification finds for documents without one (``detected_langs``)."""
        if self._doc_langs is None:
            if self.doc_lang:
                self._doc_langs = [self.doc_lang]
            else:
                coll = self.collection()
                lang = coll.lang if self.spec.lang_id != "all" else None
                if lang:
                    self._doc_langs = [lang]
                elif self.irds_id and not self._scannable(coll):
                    self._doc_langs = []
                else:
                    self._doc_langs = self._scan_langs(coll)
        return list(self._doc_langs)

    def _scannable(self, coll) -> bool:
        """An ir_datasets collection is scanned for its languages when each document names its own and the
        documents are on this machine (a dry run plans offline; a run checks the files before any work)."""
        from clir.data.irds import missing_files

        assert self.irds_id is not None
        return bool(coll.docs_labelled()) and not missing_files(self.irds_id, ("docs",))

    def _scan_langs(self, coll) -> list[str]:
        lid = None
        if self.spec.lang_id != "off":
            from clir.data.langid import LanguageIdentifier

            lid = LanguageIdentifier()
        labelled, detected = set(), set()
        for d in coll.docs():
            if d.lang and self.spec.lang_id != "all":
                labelled.add(d.lang)
            elif lid is not None and (lang := lid.detect(d.full_text())):
                detected.add(lang)
        self.detected_langs = detected - labelled
        return sorted(labelled | detected)

    def passage_spec(self) -> PassageSpec:
        return PassageSpec(self.spec.split, self.spec.passage_length, self.spec.stride)

    def recipe(self) -> IndexRecipe:
        """The recipe of this collection's indexes, short of the encoder (a job adds it)."""
        return IndexRecipe(self.source, self.doc_lang, self.passage_spec(), self.spec.lang_id)

    def key(self) -> dict[str, Any]:
        out = {
            "source": self.source,
            "doc_lang": self.doc_lang,
            "query_field": self.query_field,
            "query_lang": self.query_lang,
            **self.recipe().key(),
        }
        if self.spec.doc_score != "maxp":
            out["doc_score"] = self.spec.doc_score
        return out


@dataclass(frozen=True)
class Build:
    """Something a grid builds before its runs: the request the library is called with, and the command a
    user would type for the same (what the dry run prints, and metrics.json's ``built_by``)."""

    command: tuple[str, ...]
    request: BuildRequest

    @classmethod
    def parse(cls, command: list[str]) -> Build:
        """Read a build command with its verb's own flag table (:func:`clir.config.request_from_flags`): a bad
        flag in a config's ``args`` fails here, when the grid is planned, before any work."""
        req = request_from_flags(command[0], command[1:])
        if isinstance(req, TrainRequest) and req.dry_run:
            raise ClirError(f"`clir {shlex.join(command)}`: a build cannot be a --dry-run")
        return cls(tuple(command), req)


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
    #: how the model folder is made when it is missing (None: it is not built by the grid)
    build: Build | None = None
    downloads: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: the model spec's name (``name`` is ``ARM@SEED`` for one seed of a seeded model)
    arm: str = ""
    seed: int | None = None
    #: the language adapters' seed a madx seed is paired with
    lang_seed: int | None = None

    def __post_init__(self) -> None:
        self.arm = self.arm or self.name

    @property
    def strategy(self) -> FullMode:
        """The adapter mode's strategy (:mod:`clir.model.modes`)."""
        return adapter_mode(self.mode)

    @property
    def routes_languages(self) -> bool:
        return routes_languages(self.mode)

    def exists(self) -> bool:
        return self.folder is None or model_ready(self.folder)

    def stamp(self) -> Any:
        """What identifies the model's weights and settings without loading it (for run markers)."""
        parts: dict[str, Any] = {"source": self.source, "overrides": self.spec.overrides}
        if self.folder is not None and self.folder.exists():
            parts["files"] = _hash(_tree_stamp(self.folder))
        else:
            from clir.model.resolve import resolve_model

            ref = resolve_model(self.source)
            if ref.pulled_folder is not None:
                parts["files"] = _hash(_tree_stamp(ref.pulled_folder))
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
        return self.kind.variant(self)

    @property
    def id(self) -> str:
        return f"{self.collection.name}/{self.variant}"

    @property
    def stem(self) -> str:
        return self.id.replace("/", "__")

    @property
    def arm_variant(self) -> str:
        """The variant with the seed left out: the row of the arm that the seeds' rows are pooled into."""
        from clir.experiments.seeds import arm_of

        return arm_of(self.variant)

    @property
    def doc_route(self) -> str | None:
        """The document side of the routing (what the row's index depends on): ``source``, ``target``,
        ``target.de-as-ru``, ``random``, ``none``."""
        return self.routing.doc_label() if self.routing is not None else None


def routing_key(r: Routing | None) -> dict[str, Any] | None:
    """A routing as run markers record it (a ``doc_map`` only when set: older markers stay valid)."""
    if r is None:
        return None
    out: dict[str, Any] = {"query": r.query, "doc": r.doc}
    if r.doc_map:
        out["doc_map"] = dict(sorted(r.doc_map.items()))
    return out


@dataclass
class IndexJob:
    collection: GridCollection
    model: GridModel
    doc_route: str | None
    path: Path
    #: a routing of the job's rows: its document side is the one the index is built under
    routing: Routing | None = None

    @property
    def label(self) -> str:
        r = f" d-{self.doc_route}" if self.doc_route else ""
        return f"{self.collection.name} x {self.model.name}{r}"


@dataclass
class Plan:
    config: ExperimentConfig
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
    adapter_builds: list[tuple[str, Path, Build]]
    #: (folder, command) of the shared MLM head the adapter builds train against, when it must be built
    head_build: tuple[Path, Build] | None = None
    bm25_unavailable: str | None = None
    #: the language adapters of ``adapters``, one per seed, with where each lives
    adapters: list[Any] = field(default_factory=list)
    #: control rows' arm variants -> their ControlSpec
    controls: dict[str, Any] = field(default_factory=dict)

    @property
    def runs_dir(self) -> Path:
        return self.out / RUNS_DIR

    def run_path(self, row: GridRow) -> Path:
        return self.runs_dir / f"{row.stem}.trec"

    def marker_path(self, row: GridRow) -> Path:
        return self.runs_dir / f"{row.stem}.done.json"

    def vectors_path(self, row: GridRow) -> Path:
        return self.runs_dir / f"{row.stem}.vectors.npz"

    def cka_path(self, coll: GridCollection, model: GridModel) -> Path:
        """Per-layer CKA of a madx model's document routings on one collection (the analysis)."""
        return self.runs_dir / f"{coll.name}__{model.name}.cka.json"

    def fresh_seed(self, model: GridModel | None) -> int:
        """What seeds fresh (``new``, ``random``) adapters: the grid's seed, and a training seed's own."""
        seed = self.config.seed
        return seed if model is None or model.seed is None else seed + 7919 * (model.seed + 1)

    def analyses(self, row: GridRow) -> bool:
        """Whether the row keeps its vectors for the embedding analysis."""
        a = self.config.analysis
        return a.enabled and row.kind.encodes and (not a.collections or row.collection.name in a.collections)

    def index_path(self, coll: GridCollection, model: GridModel, doc_route: str | None) -> Path:
        suffix = f"__d-{doc_route}" if doc_route else ""
        return self.index_root / f"{coll.name}__{model.name}{suffix}"

    def bm25_index_path(self, coll: GridCollection) -> Path:
        return self.index_root / f"{coll.name}__bm25-{coll.bm25_lang}"

    def row_key(self, row: GridRow) -> str:
        """Hash of what produces a row's run; a marker with another key means the run is stale."""
        return _hash(row.kind.key(self, row))

    def is_done(self, row: GridRow) -> bool:
        if not row.kind.computed:
            return False
        if row.model is not None and not row.model.exists():
            return False
        marker, run = self.marker_path(row), self.run_path(row)
        if not (marker.is_file() and run.is_file()):
            return False
        if self.analyses(row) and not self.vectors_path(row).is_file():
            return False
        try:
            info = read_json(marker)
        except (OSError, ClirError):
            return False
        return isinstance(info, dict) and info.get("key") == self.row_key(row)

    def wants_cka(self, row: GridRow) -> bool:
        """Whether the row's model and collection get the per-layer CKA of the analysis."""
        return bool(
            self.config.analysis.cka_docs
            and self.analyses(row)
            and row.model is not None
            and row.model.routes_languages
        )

    def index_jobs(self, rows: list[GridRow]) -> list[IndexJob]:
        seen: dict[Path, IndexJob] = {}
        for r in rows:
            job = r.kind.index_job(self, r)
            if job is not None:
                seen.setdefault(job.path, job)
        return list(seen.values())


# ---------------------------------------------------------------------- row kinds
class RowRunner(Protocol):
    """What running a grid's rows takes from the runner (:mod:`clir.experiments.runner`)."""

    def run_model(self, model: GridModel, rows: list[GridRow]) -> None:
        """The model's encoder loaded once, ``rows`` (pending, possibly none) run through its index jobs."""

    def run_bm25(self, row: GridRow) -> None:
        """One BM25 row through Pyserini."""


class RowKind(ABC):
    """One kind of grid row (dense, BM25, fusion): its plan, how it runs and how it scores. The grid asks a
    row's kind (:mod:`clir.experiments.rowkinds` holds the three) and never tests the kind's name."""

    #: the kind as written out: metrics.json's ``kind``, the ``kind`` of a run marker's key
    name: str
    #: whether the grid runs the row itself (a run file and a marker); fusion rows are made at scoring
    computed: bool = True
    #: whether the row's run comes from a grid model's encoder (an index, routings, vectors to analyse)
    encodes: bool = False
    #: whether running the row needs Pyserini and Java
    needs_pyserini: bool = False

    def __repr__(self) -> str:
        return f"<{self.name} rows>"

    # plan
    @abstractmethod
    def variant(self, row: GridRow) -> str:
        """The row's name within its collection (``madx/q-source_d-target``, ``bm25``, ``e5+bm25-rrf``)."""

    def needs(self, row: GridRow, rows: list[GridRow]) -> list[GridRow]:
        """The rows of ``rows`` whose runs this row is made from (selected and built with it)."""
        return []

    @abstractmethod
    def key(self, plan: Plan, row: GridRow) -> dict[str, Any]:
        """What produces the row's run: its hash keys the run's marker (a marker with another is stale)."""

    def index_job(self, plan: Plan, row: GridRow) -> IndexJob | None:
        """The dense index the row searches, if any."""
        return None

    def index_lines(self, plan: Plan, rows: list[GridRow]) -> list[str]:
        """The dry run's lines for the indexes these pending rows (all of this kind) need."""
        return []

    # run
    @abstractmethod
    def run(self, plan: Plan, rows: list[GridRow], runner: RowRunner) -> None:
        """Compute the pending ``rows`` (all of this kind, maybe none) and write their runs and markers."""

    # score
    @abstractmethod
    def scored_run(self, plan: Plan, row: GridRow, runs: dict[str, RunDict]) -> RunDict | None:
        """The row's run to score (``runs``: those of the collection's rows before it, by variant), or None
        when it has none yet."""

    @abstractmethod
    def record(self, row: GridRow) -> dict[str, Any]:
        """The row's own fields of its metrics.json record: ``model``, ``arm`` and ``fusion``."""
