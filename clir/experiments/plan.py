"""Planning an experiment, offline: :func:`plan_grid` resolves a config into rows, the indexes they need and
what would have to be downloaded or built; :func:`format_plan` is the ``--dry-run`` listing."""

from __future__ import annotations

import fnmatch
from pathlib import Path

from clir.config import ExperimentConfig, MlmHeadSpec, Routing
from clir.errors import ClirError
from clir.experiments.grid import INDEXES_DIR, Build, GridCollection, GridModel, GridRow, Plan
from clir.experiments.resolve import build_triples, grid_collection, grid_model
from clir.experiments.rowkinds import BM25, DENSE, FUSION, by_kind
from clir.experiments.seeds import SeededAdapter, expand_adapters, expand_models
from clir.model.modes import routes_languages


def _select(rows: list[GridRow], only: list[str] | None) -> list[GridRow]:
    if not only:
        return list(rows)
    chosen = []
    for r in rows:
        names = (r.id, f"{r.collection.name}/{r.arm_variant}")  # an arm's name selects each of its seeds
        if any(
            fnmatch.fnmatchcase(i, p) or fnmatch.fnmatchcase(i, p.rstrip("/") + "/*")
            for p in only
            for i in names
        ):
            chosen.append(r)
    if not chosen:
        sample = ", ".join(r.id for r in rows[:6])
        raise ClirError(f"--only {' '.join(only)} matches no row of the grid (rows look like: {sample}, ...)")
    ids = {r.id for r in chosen}
    for r in list(chosen):  # a fusion row needs its two inputs
        for dep in r.kind.needs(r, rows):
            if dep.id not in ids:
                chosen.append(dep)
                ids.add(dep.id)
    order = {r.id: i for i, r in enumerate(rows)}
    return sorted(chosen, key=lambda r: order[r.id])


def _adapter_builds(
    adapters: list[SeededAdapter], head: MlmHeadSpec | None
) -> tuple[dict[str, Path], list[tuple[str, Path, Build]], dict[str, list[tuple[str, Path, list[str]]]]]:
    """(language[@seed] -> the adapter folder the grid provides, the ``train-language-adapter`` builds still to
    run, ir_datasets files their texts lack)."""
    from clir.data.irds import missing_files
    from clir.data.resolve import irds_id

    built_adapters: dict[str, Path] = {}
    adapter_builds = []
    irds_missing_text: dict[str, list[tuple[str, Path, list[str]]]] = {}
    for sa in adapters:
        a = sa.spec
        outp = Path(a.out).expanduser().resolve()
        built_adapters[a.lang if sa.seed is None else f"{a.lang}@{sa.seed}"] = outp
        if not outp.is_dir():
            cmd = ["train-language-adapter", "--lang", a.lang, "--text", a.text, "--backbone", a.backbone]
            if a.max_steps:
                cmd += ["--max-steps", str(a.max_steps)]
            if head is not None and "--head" not in a.args:
                cmd += ["--head", str(Path(head.out).expanduser().resolve())]
            resume = ["--resume"] if not {"--resume", "--overwrite"} & set(a.args) else []
            adapter_builds.append((a.lang, outp, Build.parse([*cmd, "--out", str(outp), *resume, *a.args])))
            text_id = irds_id(a.text)
            if text_id is not None:
                missing = missing_files(text_id, ("docs",))
                if missing:
                    irds_missing_text[text_id] = missing
    return built_adapters, adapter_builds, irds_missing_text


def _head_build(cfg: ExperimentConfig, adapter_builds: list) -> tuple[Path, Build] | None:
    """The ``train-mlm-head`` build the adapter builds need first, if its folder is missing."""
    head = cfg.mlm_head
    if head is None:
        return None
    outp = Path(head.out).expanduser().resolve()
    if outp.is_dir() or not adapter_builds:
        return None
    cmd = ["train-mlm-head", "--backbone", head.backbone, "--out", str(outp)]
    for text in head.texts:
        cmd += ["--text", text]
    if head.max_steps:
        cmd += ["--max-steps", str(head.max_steps)]
    resume = ["--resume"] if not {"--resume", "--overwrite"} & set(head.args) else []
    return outp, Build.parse([*cmd, *resume, *head.args])


def _triples_missing(models: list[GridModel]) -> dict[str, list[tuple[str, Path, list[str]]]]:
    """ir_datasets files the training triples of the models still to build lack (``irds:`` triples only)."""
    from clir.data.irds import missing_files
    from clir.data.resolve import irds_id
    from clir.data.triples import IRDS_PARTS

    out: dict[str, list[tuple[str, Path, list[str]]]] = {}
    for m in models:
        ds_id = irds_id(build_triples(m.spec) or "") if m.build else None
        if ds_id is not None and ds_id not in out:
            missing = missing_files(ds_id, IRDS_PARTS)
            if missing:
                out[ds_id] = missing
    return out


def _rows(cfg: ExperimentConfig, collections: list[GridCollection], models: list[GridModel]) -> list[GridRow]:
    """Per collection: every model (seed) x routing, the controls' rows, then BM25 and the fusions of BM25
    with each dense row."""
    rows: list[GridRow] = []
    for c in collections:
        dense = [GridRow(c, DENSE, model=m, routing=r) for m in models for r in m.routings]
        for ctl in cfg.controls:
            if not ctl.collections or c.name in ctl.collections:
                dense += [
                    GridRow(c, DENSE, model=m, routing=ctl.routing) for m in models if m.arm == ctl.model
                ]
        rows += dense
        if cfg.bm25.enabled and c.bm25_lang:
            rows.append(GridRow(c, BM25))
            fused = [d for d in dense if not cfg.fusion.models or d.model.name in cfg.fusion.models]  # type: ignore[union-attr]
            for method in cfg.fusion.methods:
                rows += [GridRow(c, FUSION, method=method, dense=d) for d in fused]
    return rows


def _baseline(cfg: ExperimentConfig, rows: list[GridRow]) -> str:
    """The row (of an arm: seeds pooled) significance tests compare against: the configured one, else the
    first row of a grid model."""
    variants = {r.arm_variant for r in rows}
    if not cfg.significance.baseline:
        return next(r.arm_variant for r in rows if r.kind.encodes)
    baseline = cfg.significance.baseline.replace(":", "/")
    if baseline not in variants:
        raise ClirError(
            f"significance.baseline {cfg.significance.baseline!r} is not a row of the grid "
            f"(rows: {', '.join(sorted(variants))})"
        )
    return baseline


def plan_grid(
    cfg: ExperimentConfig,
    *,
    config_path: str | Path = "",
    out: str | Path | None = None,
    only: list[str] | None = None,
) -> Plan:
    """Resolve ``cfg`` into a plan, offline: validates every collection and model, loads nothing heavy."""
    from clir.data.irds import missing_files

    out_dir = Path(out or cfg.output or f"eval/results/{cfg.name}")
    index_root = Path(cfg.index_root) if cfg.index_root else out_dir / INDEXES_DIR
    collections = [grid_collection(c, i) for i, c in enumerate(cfg.collections)]
    names = [c.name for c in collections]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ClirError(f"collections: duplicate name(s) {', '.join(dup)}: give each a distinct `name`")
    adapters = expand_adapters(cfg)
    built_adapters, adapter_builds, irds_missing_text = _adapter_builds(adapters, cfg.mlm_head)
    models = []
    for sm in expand_models(cfg):
        gm = grid_model(sm.spec, cfg, collections, built_adapters, _control_routings(cfg, sm.arm))
        gm.arm, gm.seed, gm.lang_seed = sm.arm, sm.seed, sm.lang_seed
        models.append(gm)
    head_build = _head_build(cfg, adapter_builds)  # each build's flags were read (Build.parse) as it was made

    rows = _rows(cfg, collections, models)
    _check_design(cfg, collections, models, rows)
    baseline = _baseline(cfg, rows)
    selected = _select(rows, only)

    irds_missing: dict[str, list[tuple[str, Path, list[str]]]] = dict(irds_missing_text)
    irds_missing.update(_triples_missing(models))
    for c in {r.collection.name: r.collection for r in selected}.values():
        if c.irds_id and c.irds_id not in irds_missing:
            missing = missing_files(c.irds_id)
            if missing:
                irds_missing[c.irds_id] = missing
    bm25_reason = None
    if any(r.kind.needs_pyserini for r in selected):
        from clir.experiments.bm25 import unavailable_reason

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
        head_build=head_build,
        bm25_unavailable=bm25_reason,
        adapters=adapters,
        controls={c.variant: c for c in cfg.controls},
    )


def _design_lines(plan: Plan) -> list[str]:
    """Seeds and their pairing, controls, claims and their Holm families, for the dry run."""
    from clir.experiments.claims import question_sets

    cfg = plan.config
    out: list[str] = []
    seeded = [m for m in plan.models if m.seed is not None]
    if seeded:
        out += [
            "",
            "seeds (rows of one arm pooled: mean +- sd; madx seed i uses language-adapter seed "
            "seeds.language_adapters[i mod n]):",
        ]
        for arm in dict.fromkeys(m.arm for m in seeded):
            ms = [m for m in seeded if m.arm == arm]
            pairs = ", ".join(
                f"{m.name}" + (f" <- lang seed {m.lang_seed}" if m.lang_seed is not None else "") for m in ms
            )
            out.append(f"  {arm:<24} {pairs}")
        lang = sorted({a.seed for a in plan.adapters if a.seed is not None})
        if lang:
            out.append(f"  {'language adapters':<24} seeds {', '.join(map(str, lang))}")
        if cfg.seeds.shipped is not None:
            sh = cfg.seeds.shipped
            state = "present" if Path(sh.folder).is_dir() else "missing: built there"
            out.append(
                f"  shipped seed {sh.seed}: {sh.folder} ({', '.join(sh.models)} + language adapters; {state})"
            )
    if cfg.controls:
        out += ["", f"controls ({len(cfg.controls)}):"]
        for c in cfg.controls:
            on = ", ".join(c.collections) or "every collection"
            vs = f" against {c.against}" if c.against else ""
            out.append(f"  {c.name:<24} {c.variant} on {on}{vs}")
    if cfg.claims:
        out += [
            "",
            f"claims ({len(cfg.claims)}; {cfg.significance.claim_test} test, Holm within each claim):",
        ]
        for claim in cfg.claims:
            names = claim.collections or [c.name for c in plan.collections]
            sets = question_sets(plan.collections, names)
            n = len(claim.pairs) * len(sets)
            groups = "; ".join(k + (f" = {'+'.join(v)}" if len(v) > 1 else "") for k, v in sets.items())
            pairs = ", ".join(f"{a} vs {b}" for a, b in claim.pairs)
            out.append(f"  {claim.id:<24} {pairs} ({claim.expect}); question sets: {groups}; {n} comparisons")
    return out


def _control_routings(cfg: ExperimentConfig, arm: str) -> list[tuple[Routing, list[str]]]:
    return [(c.routing, c.collections) for c in cfg.controls if c.model == arm]


def _check_design(
    cfg: ExperimentConfig, collections: list[GridCollection], models: list[GridModel], rows: list[GridRow]
) -> None:
    """What the config alone could not check: control and claim collections, control models' modes, and
    the rows that controls and claims name."""
    names = {c.name for c in collections}
    arms = {r.arm_variant for r in rows}
    for ctl in cfg.controls:
        bad = [c for c in ctl.collections if c not in names]
        if bad:
            raise ClirError(
                f"controls[{ctl.name}].collections: unknown {', '.join(bad)} (has: {', '.join(names)})"
            )
        mode = next(m.mode for m in models if m.arm == ctl.model)
        if not routes_languages(mode):
            raise ClirError(f"controls[{ctl.name}]: model {ctl.model} is {mode}; routing controls need madx")
        if ctl.against and ctl.against.replace(":", "/") not in arms:
            raise ClirError(f"controls[{ctl.name}].against {ctl.against!r} is not a row of the grid")
    for claim in cfg.claims:
        bad = [c for c in claim.collections if c not in names]
        if bad:
            raise ClirError(f"claims[{claim.id}].collections: unknown {', '.join(bad)}")
        for pair in claim.pairs:
            for v in pair:
                if v not in arms:
                    raise ClirError(
                        f"claims[{claim.id}].pairs: {v!r} is not a row of the grid (rows: {', '.join(sorted(arms))})"
                    )
    if cfg.analysis.xquad_anchor and cfg.analysis.xquad_anchor not in names:
        raise ClirError(
            f"analysis.xquad_anchor {cfg.analysis.xquad_anchor!r} is not a collection of the grid"
        )


def format_plan(plan: Plan) -> str:
    """The ``--dry-run`` listing: collections, models, builds, indexes, runs, metrics and downloads."""
    from clir.data.irds import by_file

    cfg = plan.config
    lines = [f"experiment grid {cfg.name!r} ({plan.config_path}) -> {plan.out}", ""]
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
    lines += _design_lines(plan)
    builds = [("shared MLM head", plan.head_build[1])] if plan.head_build else []
    builds += [(f"language adapter {lang}", b) for lang, _o, b in plan.adapter_builds]
    builds += [(f"model {m.name}", m.build) for m in plan.models if m.build]
    lines += ["", f"builds ({len(builds)}):"]
    for what, b in builds:
        lines.append(f"  {what}: clir {' '.join(b.command)}")
    pending = [r for r in plan.selected if not plan.is_done(r)]
    jobs = plan.index_jobs(pending)
    lines += ["", f"indexes ({len(jobs)} needed, under {plan.index_root}):"]
    for kind, rows in by_kind(pending).items():
        lines += kind.index_lines(plan, rows)
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
        "adapter swap: d-target vs d-source" + ("; controls vs their reference rows" if cfg.controls else ""),
        "",
    ]
    downloads = []
    for ds_id, missing in plan.irds_missing.items():
        for parts, path, urls in by_file(missing):  # one line per file, whichever parts read it
            downloads.append(f"ir_datasets {ds_id} {parts}: {path}" + (f" (from {urls[0]})" if urls else ""))
    for m in plan.models:
        downloads += m.downloads
    lines.append(f"downloads needed ({len(downloads)}):" if downloads else "downloads needed: none")
    lines += [f"  {d}" for d in downloads]
    return "\n".join(lines) + "\n"
