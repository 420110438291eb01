"""The experiment grid of ``clir experiment`` (alias ``clir eval``): collections x models x language-adapter routings, metrics,
significance, the BM25 baseline and fusion rows."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from clir.config.design import ClaimSpec, ControlSpec, SeedsConfig, validate_design
from clir.config.model import Routing
from clir.errors import ClirError

DEFAULT_METRICS = ["ndcg@10", "ndcg@20", "map", "mrr@100", "recall@100", "recall@1000"]

# ranx metric names (an optional @k cutoff follows)
_RANX_METRICS = {
    "hits",
    "hit_rate",
    "precision",
    "recall",
    "f1",
    "r-precision",
    "mrr",
    "map",
    "dcg",
    "dcg_burges",
    "ndcg",
    "ndcg_burges",
    "bpref",
}
_METRIC = re.compile(r"([a-z_\-]+)(?:@([0-9]+))?")
#: the deepest cutoff a metric may name (ranx computes in int64; no run is deeper than this)
MAX_CUTOFF = 1 << 31
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-+]*$")

QueryField = Literal["title", "description", "title+description", "text"]
#: per-query tests (student, fisher: on the seed-averaged scores of a row with several seeds), the two-level
#: bootstrap over seeds and queries, and the t-test over seed means
StatTest = Literal["student", "fisher", "two-level", "seed-t"]
FusionMethod = Literal["rrf", "combsum"]


def check_metric(metric: str) -> None:
    """A ranx metric: a name with an optional ``@k`` cutoff, k in 1..MAX_CUTOFF (``ndcg@0`` scores nothing,
    ranx says 1.0; a 20-digit k overflows its int64), or rank-biased precision ``rbp.P``."""
    if re.fullmatch(r"rbp\.[0-9]+", metric):
        return
    m = _METRIC.fullmatch(metric)
    if not m or m.group(1) not in _RANX_METRICS:
        raise ClirError(f"unknown metric {metric!r:.60} (ranx names: {', '.join(sorted(_RANX_METRICS))})")
    k = m.group(2)
    if k is not None and not (len(k) <= 10 and 1 <= int(k) <= MAX_CUTOFF):
        raise ClirError(f"metric {metric!r:.60}: the cutoff after @ must be an integer in 1..{MAX_CUTOFF}")


def metric_cutoff(metric: str) -> int | None:
    m = _METRIC.fullmatch(metric)
    return int(m.group(2)) if m and m.group(2) else None


@dataclass
class CollectionSpec:
    """One query set + documents + qrels.

    ``source``: a local collection folder (relative paths resolve against the current directory),
    ``sample`` (the bundled collection), ``irds:<id>`` or a bare ir_datasets id (``hc4/fa/test``)."""

    source: str
    #: label in tables, file names and ``--only`` patterns (default: derived from the source)
    name: str | None = None
    #: the documents' language: picks the target language adapter and the BM25 analyzer
    #: (default: each document's ``lang`` field, or the dataset's language)
    doc_lang: str | None = None
    #: TREC-style topics: which field(s) make the query text (local collections use queries.tsv)
    query_field: QueryField | None = None
    #: the language of the (dense) query text; ``target`` query routing loads its adapter
    query_lang: str = "en"
    #: language of document-language query text for BM25 (HC4/NeuCLIR ``ht_*`` fields, local
    #: ``queries.<lang>.tsv``); default: the document language when the source has such queries
    bm25_query_lang: str | None = None
    #: long documents: ``passages`` splits those longer than the encoder's window (clir.index.passages),
    #: ``none`` truncates them
    split: Literal["passages", "none"] = "passages"
    #: encoder tokens per passage (default: 256, or the encoder's max_passage_length if smaller) and stride
    #: (default: half)
    passage_length: int | None = None
    stride: int | None = None
    #: how split documents rank: by their best passage (maxp) or their first (firstp)
    doc_score: Literal["maxp", "firstp"] = "maxp"
    #: language identification for documents without ``lang`` (``all``: ignore the labels; ``off``)
    lang_id: Literal["missing", "all", "off"] = "missing"
    #: collections with the same question set ask the same questions (XQuAD-R's 1,190 in every language):
    #: claim-level tests average their per-question scores and count them once (default: the collection's own)
    question_set: str | None = None

    def validate(self) -> None:
        if not self.source.strip():
            raise ClirError("collections[].source: empty")
        for key in ("passage_length", "stride"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise ClirError(f"collections[].{key} must be >= 1")
        if self.split == "none" and (self.passage_length or self.stride):
            raise ClirError("collections[].passage_length/stride need split: passages")
        if self.name is not None and not _NAME.match(self.name):
            raise ClirError(f"collections[].name {self.name!r}: use letters, digits, '-', '_', '.', '+'")


@dataclass
class BuildSpec:
    """How to make a model folder that is missing: ``clir <verb> --config CONFIG --max-steps N --out DIR``."""

    config: str | None = None
    verb: Literal["train", "train-language-adapter"] = "train"
    max_steps: int | None = None
    #: extra command-line arguments, appended as given
    args: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if self.verb == "train" and not self.config:
            raise ClirError("build.config: `clir train` needs a training config")
        if self.max_steps is not None and self.max_steps < 1:
            raise ClirError("build.max_steps must be >= 1")


@dataclass
class ModelSpec:
    """A model of the grid: a model folder, a registered name or a hub id, plus encoder overrides."""

    name: str
    #: a clir model folder, an HF backbone folder, a registered name (``multilingual-e5-small``) or a hub id
    model: str
    #: encoder setting overrides (pooling, prefixes, adapter_mode, language_adapters, precision, ...)
    overrides: dict[str, Any] = field(default_factory=dict)
    #: when ``model`` is a folder that does not exist yet: how to build it
    build: BuildSpec | None = None
    #: the expected adapter mode, for planning before the model exists (checked once it is loaded)
    mode: Literal["full", "task", "madx"] | None = None
    #: routings for this model (default: the grid's); only madx models have more than one row
    routings: list[Routing] | None = None
    #: say how the language adapters were made (shown in the report), e.g. "untrained (new)"
    note: str = ""
    #: training seeds (default: ``seeds.arms`` for a model with a ``build``): one model per seed, its folder
    #: the ``model`` path with ``{seed}`` filled in; report cells are mean +- sd over them
    seeds: list[int] | None = None

    def validate(self) -> None:
        if not _NAME.match(self.name):
            raise ClirError(f"models[].name {self.name!r}: use letters, digits, '-', '_', '.', '+'")
        if "routing" in self.overrides:
            raise ClirError(
                f"models[{self.name}].overrides.routing: give routings in `routings`, not overrides"
            )


@dataclass
class AdapterBuildSpec:
    """A language adapter made on demand: ``clir train-language-adapter --lang L --text T --backbone B --out O``
    runs when ``out`` is missing; map it in a model's ``overrides.language_adapters``."""

    lang: str
    out: str
    text: str
    backbone: str
    max_steps: int | None = None
    args: list[str] = field(default_factory=list)
    #: training seeds (default: ``seeds.language_adapters``): one adapter per seed, in ``out`` with ``{seed}``
    #: filled in, trained with ``--seed SEED``
    seeds: list[int] | None = None


@dataclass
class MlmHeadSpec:
    """The shared MLM head made on demand (``clir train-mlm-head --text L=T ... --backbone B --out O``) when
    ``out`` is missing; every adapter build of the grid then trains against it (``--head O``)."""

    out: str
    backbone: str
    #: ``lang=source`` per language, as ``clir train-mlm-head --text`` takes them
    texts: list[str]
    max_steps: int | None = None
    args: list[str] = field(default_factory=list)


@dataclass
class SignificanceConfig:
    #: the row every other row is tested against: ``MODEL`` or ``MODEL/q-ROUTE_d-ROUTE`` (madx rows),
    #: or ``bm25``; default: the first model's first row
    baseline: str | None = None
    tests: list[StatTest] = field(default_factory=lambda: ["student", "fisher"])
    #: p-value threshold
    max_p: float = 0.05
    n_permutations: int = 1000
    #: resamples of the two-level bootstrap (seeds, then queries)
    n_resamples: int = 10000
    random_seed: int = 42
    #: adjustment for testing several pairs on one collection (one family per test and metric):
    #: holm (Holm-Bonferroni), bonferroni or none
    correction: Literal["holm", "bonferroni", "none"] = "holm"
    #: the test behind each claim (``claims``), Holm-corrected over the claim's comparisons
    claim_test: Literal["two-level", "seed-t"] = "two-level"

    def validate(self) -> None:
        if not 0 < self.max_p < 1:
            raise ClirError(f"significance.max_p must be in (0, 1), got {self.max_p}")
        if self.n_permutations < 10:
            raise ClirError("significance.n_permutations must be >= 10")
        if self.n_resamples < 100:
            raise ClirError("significance.n_resamples must be >= 100")


@dataclass
class Bm25Config:
    """BM25 through Pyserini (Lucene, the document language's analyzer) on document-language queries."""

    enabled: bool = False
    k1: float = 0.9
    b: float = 0.4
    threads: int = 2


@dataclass
class FusionConfig:
    """Dense + BM25 fusion rows with ranx (``rrf``; ``combsum`` = min-max normalised CombSUM)."""

    methods: list[FusionMethod] = field(default_factory=list)
    #: dense models to fuse (default: every model)
    models: list[str] = field(default_factory=list)
    rrf_k: int = 60


@dataclass
class AnalysisConfig:
    """The embedding analysis of the report (why a routing helps or hurts): each dense row keeps its query and
    document vectors (``runs/*.vectors.npz``) and the report measures them."""

    enabled: bool = False
    #: collections to analyse (names; default: every collection)
    collections: list[str] = field(default_factory=list)
    #: XQuAD-R's upstream files (a folder of ``<lang>.json``, e.g. ../shared/data/raw/lareqa/xquad-r): which
    #: sentences translate each other (same paragraph, same number of sentences, same position)
    xquad_parallel: str | None = None
    #: the English XQuAD-R collection (name): its documents are the English side of the translation pairs
    #: of the other XQuAD-R collections' rows
    xquad_anchor: str | None = None
    #: documents whose neighbourhoods are compared between routings (rank correlation)
    neighbour_docs: int = 200
    #: documents whose per-layer hidden states are compared (linear CKA) between the source adapter and each
    #: other document routing of a madx model; 0: off
    cka_docs: int = 0

    def validate(self) -> None:
        if self.neighbour_docs < 10 or self.cka_docs < 0:
            raise ClirError("analysis.neighbour_docs must be >= 10 and analysis.cka_docs >= 0")
        if self.cka_docs and self.cka_docs < 10:
            raise ClirError("analysis.cka_docs: CKA needs at least 10 documents (or 0: off)")


@dataclass
class ExperimentConfig:
    name: str
    collections: list[CollectionSpec]
    models: list[ModelSpec]
    description: str = ""
    #: language-adapter routings (madx models; full/task models collapse to one row)
    routings: list[Routing] = field(
        default_factory=lambda: [Routing("source", "source"), Routing("source", "target")]
    )
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))
    #: metric of the overview table, the swap deltas and the plots' titles (default: the first metric)
    primary_metric: str | None = None
    #: hits retrieved per query (default: the largest metric cutoff, 1000 for metrics without one)
    k: int | None = None
    significance: SignificanceConfig = field(default_factory=SignificanceConfig)
    bm25: Bm25Config = field(default_factory=Bm25Config)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    #: language adapters built on demand (``clir train-language-adapter``)
    adapters: list[AdapterBuildSpec] = field(default_factory=list)
    #: the MLM head the adapters share, built on demand (``clir train-mlm-head``); None: the backbone's own
    mlm_head: MlmHeadSpec | None = None
    #: where grid indexes live (default: OUT/indexes); one folder per collection x model x doc routing
    index_root: str | None = None
    #: output folder when --out is not given (default: eval/results/NAME)
    output: str | None = None
    factory: str = "Flat"
    batch_size: int = 32
    #: builds (language adapters, models) run at once, each in its own process; >1 pays off when each build
    #: pins fewer threads than the machine has cores (CPU training with optim.threads / --threads)
    build_workers: int = 1
    #: seeds fresh (``new``) adapters, so reruns and reused indexes agree
    seed: int = 0
    #: training seeds of the arms and language adapters (mean +- sd cells, seed-level tests)
    seeds: SeedsConfig = field(default_factory=SeedsConfig)
    #: control rows (random / wrong-language adapters, English documents, no adapter on either side)
    controls: list[ControlSpec] = field(default_factory=list)
    #: the headline claims: their comparisons, tested and Holm-corrected per claim
    claims: list[ClaimSpec] = field(default_factory=list)

    def validate(self) -> None:
        if not _NAME.match(self.name):
            raise ClirError(f"name {self.name!r}: use letters, digits, '-', '_', '.', '+'")
        if not self.collections:
            raise ClirError("collections: the grid needs at least one collection")
        if not self.models:
            raise ClirError("models: the grid needs at least one model")
        if not self.metrics:
            raise ClirError("metrics: empty")
        for m in self.metrics:
            try:
                check_metric(m)
            except ClirError as e:
                raise ClirError(f"metrics: {e}") from None
        if self.primary_metric is not None and self.primary_metric not in self.metrics:
            raise ClirError(f"primary_metric {self.primary_metric!r} is not in metrics")
        if self.build_workers < 1:
            raise ClirError("build_workers must be >= 1")
        if self.k is not None and self.k < 1:
            raise ClirError("k must be >= 1")
        if not self.routings:
            raise ClirError("routings: empty (give at least one, e.g. {query: source, doc: source})")
        names = [m.name for m in self.models]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ClirError(f"models: duplicate name(s) {', '.join(dup)}")
        if "bm25" in names:
            raise ClirError("models: 'bm25' is reserved for the BM25 baseline row")
        for m in self.fusion.models:
            if m not in names:
                raise ClirError(f"fusion.models: unknown model {m!r} (models: {', '.join(names)})")
        if self.fusion.methods and not self.bm25.enabled:
            raise ClirError("fusion needs the BM25 baseline: set bm25.enabled: true")
        validate_design(self)

    @property
    def primary(self) -> str:
        return self.primary_metric or self.metrics[0]

    def hits_k(self) -> int:
        if self.k is not None:
            return self.k
        cutoffs = [metric_cutoff(m) for m in self.metrics]
        return max([c for c in cutoffs if c] + ([1000] if None in cutoffs else []))
