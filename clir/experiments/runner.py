"""Running a planned grid: builds what is missing, then per model loads the encoder once, builds or reuses
each index (collection x model x doc routing), searches every pending row and writes ``runs/<row>.trec``
with a ``.done.json`` marker keyed by a hash of what produced the run; BM25 rows through Pyserini. Scoring
and the report follow (:mod:`clir.experiments.scoring`, :mod:`clir.experiments.report`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clir.config import Routing, to_dict
from clir.errors import ClirError, ResumeRefused
from clir.experiments.build import run_builds
from clir.experiments.grid import GridCollection, GridModel, GridRow, IndexJob, Plan, config_hash
from clir.experiments.report import write_outputs
from clir.experiments.rowkinds import by_kind
from clir.experiments.scoring import GridResult, score_grid

if TYPE_CHECKING:
    from clir.model.protocol import Encoder

log = logging.getLogger(__name__)


def check_offline(plan: Plan) -> None:
    """One error naming every missing ir_datasets file, before any work starts."""
    from clir.data.irds import offline_message

    if plan.irds_missing:
        msgs = [offline_message(ds_id, missing) for ds_id, missing in plan.irds_missing.items()]
        raise ClirError("cannot run the grid offline:\n" + "\n".join(msgs))


def _lang_seed(seed: int, lang: str) -> int:
    return int(hashlib.sha256(f"{seed}:{lang}".encode()).hexdigest()[:8], 16)


def _prepare_languages(enc: Encoder, needed: set[str], seed: int) -> None:
    """Exactly the source adapter plus ``needed`` loaded: fresh (``new``) adapters get a seed of their own, so
    an index's recorded fingerprint is the same whatever ran before it."""
    import torch

    if not enc.routes_languages:
        return
    for lang in enc.loaded_languages():
        if lang not in needed:
            enc.unload_language_adapter(lang)
    for lang in sorted(needed - set(enc.loaded_languages())):
        with torch.random.fork_rng():
            torch.manual_seed(_lang_seed(seed, lang))
            enc.load_language_adapter(lang)


def _doc_adapters(enc: Encoder, coll: GridCollection, routing: Routing | None) -> set[str]:
    """The language adapters documents go through under ``routing``: the source one, and the routed adapter
    of each document language (the fallback rule for those without one); none without language adapters."""
    langs: list[str | None] = [None]
    if enc.routes_docs_by_lang(routing):
        langs = list(coll.doc_langs())
        if not langs:
            raise ClirError(
                f"{coll.name}: target routing needs the documents' language: set doc_lang, or lang_id"
            )
    return enc.doc_adapters(langs, routing)


def _ensure_index(plan: Plan, job: IndexJob, enc: Encoder) -> Path:
    from clir.index import IndexArgs, build_index
    from clir.index.recipe import IndexRecipe
    from clir.index.store import read_manifest

    coll = job.collection
    wanted = coll.recipe().with_encoder(enc.fingerprint(job.routing))
    if (job.path / "manifest.json").is_file():
        try:
            diff = wanted.diff(IndexRecipe.from_manifest(read_manifest(job.path)))
        except ClirError as e:
            diff = [str(e)]
        if not diff:
            log.info("reusing index %s", job.path)
            return job.path
        log.warning("rebuilding %s: built with other settings (%s)", job.path, ", ".join(diff))
    args = IndexArgs(
        collection=wanted.collection,
        model=job.model.source,
        out=str(job.path),
        doc_lang=wanted.doc_lang,
        factory=plan.config.factory,
        batch_size=plan.config.batch_size,
        overwrite=True,
        # a build this grid started and was killed in: continue from its checkpoints
        resume=job.path.with_name(job.path.name + ".partial").is_dir(),
        passages=coll.passage_spec(),
        lang_id=coll.spec.lang_id,
        routing=job.routing,
    )
    try:
        build_index(args, encoder=enc)
    except ResumeRefused as e:
        log.warning("%s; starting that index over", e)
        build_index(dataclasses.replace(args, resume=False), encoder=enc)
    return job.path


def _write_run(
    plan: Plan, row: GridRow, results: dict[str, list], seconds: float, extra: dict[str, Any]
) -> None:
    from clir.atomic import atomic_write_text
    from clir.index.store import now_iso
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


def _save_vectors(plan: Plan, row: GridRow, qvecs, qs: list, searcher) -> None:
    """Keep a row's query and document vectors for the report's embedding analysis."""
    from clir.experiments.analysis import save_vectors

    try:
        docs = searcher.index.reconstruct_n(0, searcher.index.ntotal)
    except RuntimeError as e:  # an index type that cannot give its vectors back
        log.warning("%s: no vectors for the analysis (%s)", row.id, str(e).splitlines()[0])
        return
    coll = row.collection
    fixed = coll.doc_lang
    langs = {} if fixed else {d.doc_id: d.lang or "" for d in coll.collection().docs()}
    # passages of split documents carry ids DOCID#n (Pyserini's convention): the document's language
    doc_langs = [fixed or langs.get(d, langs.get(d.rsplit("#", 1)[0], "")) for d in searcher.docids]
    save_vectors(plan.vectors_path(row), qvecs, [q.query_id for q in qs], docs, searcher.docids, doc_langs)


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


def _run_model(plan: Plan, model: GridModel, rows: list[GridRow], queries: _QueryCache, bar) -> None:
    import torch

    from clir.model import load_encoder

    # fresh task/source adapters of an untrained model: the same every run (each training seed its own)
    torch.manual_seed(plan.fresh_seed(model))
    enc = load_encoder(model.source, dict(model.spec.overrides))
    if enc.config.adapter_mode != model.mode:
        raise ClirError(
            f"model {model.name}: expected adapter mode {model.mode}, the model is {enc.config.adapter_mode}"
        )
    qvecs: dict[tuple[str, str | None], Any] = {}
    for job in plan.index_jobs(rows):
        job_rows = [r for r in rows if r.collection is job.collection and r.doc_route == job.doc_route]
        _run_index_job(plan, enc, job, job_rows, queries.get(job.collection), qvecs, bar)
    for coll in _cka_due(plan, model, rows):
        _write_cka(plan, enc, model, coll)
    del enc


def _run_index_job(
    plan: Plan, enc: Encoder, job: IndexJob, rows: list[GridRow], qs: list, qvecs: dict, bar
) -> None:
    """Build (or reuse) one index, then search it for each of its rows (one per query routing)."""
    from clir.search import Searcher

    coll, seed = job.collection, plan.fresh_seed(job.model)
    # languages without an adapter take the fallback rule at build time (counted in the manifest)
    doc_needed = _doc_adapters(enc, coll, job.routing)
    _prepare_languages(enc, doc_needed, seed)
    t0 = time.perf_counter()
    index = _ensure_index(plan, job, enc)
    t_index = time.perf_counter() - t0
    # checks the encoder against the manifest once more; split documents rank by doc_score
    searcher = Searcher(index, encoder=enc, doc_score=coll.spec.doc_score)
    for row in rows:
        t = time.perf_counter()
        r = row.routing
        q_adapter = enc.language_adapter_for("query", coll.query_lang, r)
        if r is not None:
            _prepare_languages(enc, doc_needed | ({q_adapter} if q_adapter else set()), seed)
        # d-source and d-target rows share their query vectors: encode each query side once
        qkey = (coll.name, q_adapter)
        if qkey not in qvecs:
            qvecs[qkey] = searcher.encode([q.text for q in qs], query_lang=coll.query_lang, routing=r)
        scores, idx = searcher.search_vectors(qvecs[qkey], plan.k)
        results = {q.query_id: searcher.hits(scores[i], idx[i]) for i, q in enumerate(qs)}
        extra = {"index": str(index), "index_seconds": round(t_index, 2)}
        if plan.analyses(row):
            _save_vectors(plan, row, qvecs[qkey], qs, searcher)
        _write_run(plan, row, results, time.perf_counter() - t, extra)
        t_index = 0.0
        bar.update(1)
        bar.set_postfix_str(row.id)


def _cka_due(plan: Plan, model: GridModel, pending: list[GridRow]) -> list[GridCollection]:
    """Collections whose per-layer CKA of ``model`` is to be (re)computed: those with rows computed now, and
    those whose CKA file is missing (the rows may be done: an interrupted run, or CKA newly asked for)."""
    fresh = {r.collection.name for r in pending}
    colls = {r.collection.name: r.collection for r in plan.selected if r.model is model and plan.wants_cka(r)}
    return [c for n, c in colls.items() if n in fresh or not plan.cka_path(c, model).is_file()]


def _write_cka(plan: Plan, enc: Encoder, model: GridModel, coll: GridCollection) -> None:
    """Per-layer CKA of the model's document routings on a sample of the collection's documents."""
    import numpy as np

    from clir.atomic import atomic_write_text
    from clir.experiments.layers import layer_cka

    routings = [
        r.routing for r in plan.rows if r.model is model and r.collection is coll and r.routing is not None
    ]
    # the configured doc_lang wins over the records' own field, as when the index is built (Tatoeba's
    # records say "deu", an ISO 639-3 code no adapter is named by)
    docs = [(d.full_text(), coll.doc_lang or d.lang) for d in coll.collection().docs()]
    n = min(plan.config.analysis.cka_docs, len(docs))
    pick = sorted(np.random.default_rng(plan.config.seed).choice(len(docs), n, replace=False).tolist())
    seed = plan.fresh_seed(model)

    def prepare(r: Routing) -> None:
        _prepare_languages(enc, _doc_adapters(enc, coll, r), seed)

    t = time.perf_counter()
    out = layer_cka(enc, [docs[i] for i in pick], routings, prepare)
    out["seconds"] = round(time.perf_counter() - t, 1)
    atomic_write_text(plan.cka_path(coll, model), json.dumps(out, indent=2) + "\n")


def _run_bm25(plan: Plan, row: GridRow, queries: _QueryCache, bar) -> None:
    from clir.experiments.bm25 import bm25_search, build_bm25_index, index_matches
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


class _Runner:
    """How the row kinds run their rows here (:class:`clir.experiments.grid.RowRunner`)."""

    def __init__(self, plan: Plan, queries: _QueryCache, bar) -> None:
        self.plan, self.queries, self.bar = plan, queries, bar

    def run_model(self, model: GridModel, rows: list[GridRow]) -> None:
        if rows or _cka_due(self.plan, model, rows):
            _run_model(self.plan, model, rows, self.queries, self.bar)

    def run_bm25(self, row: GridRow) -> None:
        _run_bm25(self.plan, row, self.queries, self.bar)


def run_grid(plan: Plan, *, command: str = "") -> GridResult:
    """Compute every pending selected row, then score and test every finished row and write the outputs."""
    from clir.progress import progress

    t0 = time.perf_counter()
    check_offline(plan)
    pending_bm25 = [r for r in plan.selected if r.kind.needs_pyserini and not plan.is_done(r)]
    if pending_bm25 and plan.bm25_unavailable:
        raise ClirError(
            f"BM25 rows cannot run: {plan.bm25_unavailable}. Set bm25.enabled: false, or leave them out "
            "with --only"
        )
    run_builds(plan)
    plan.out.mkdir(parents=True, exist_ok=True)
    plan.runs_dir.mkdir(parents=True, exist_ok=True)
    _write_resolved_config(plan)

    pending = [r for r in plan.selected if r.kind.computed and not plan.is_done(r)]
    skipped = [r.id for r in plan.selected if r.kind.computed and r not in pending]
    if skipped:
        log.info("%d run(s) already finished with this config: skipped", len(skipped))
    queries = _QueryCache()
    bar = progress(total=len(pending), desc="experiment grid", unit="run")
    try:
        runner = _Runner(plan, queries, bar)
        for kind, rows in by_kind(pending).items():
            kind.run(plan, rows, runner)
    finally:
        bar.close()
    result = score_grid(plan, command=command, computed=[r.id for r in pending], skipped=skipped)
    result.seconds = time.perf_counter() - t0
    write_outputs(result)
    return result


def _write_resolved_config(plan: Plan) -> None:
    import yaml

    from clir.atomic import atomic_write_text
    from clir.portable import portable

    data = portable(to_dict(plan.config))
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    atomic_write_text(plan.out / "config.resolved.yaml", f"# config hash {config_hash(plan.config)}\n{text}")
