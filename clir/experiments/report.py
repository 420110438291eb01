"""The grid's outputs: ``metrics.json`` (one row per collection x model x routing), ``report.md`` (tables per
collection with significance marks, the adapter-swap deltas, the command, config hash and versions) and
``plots/*.png``, with portable paths (no host folders: they are committed)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clir.experiments.grid import config_hash

if TYPE_CHECKING:
    from clir.experiments.grid import GridModel, Plan
    from clir.experiments.scoring import GridResult

log = logging.getLogger(__name__)

#: significance marks in report tables
MARKS = {"student": "†", "fisher": "‡", "two-level": "§", "seed-t": "¶"}
_METRIC_LABEL = re.compile(r"^([a-z_\-]+)(@\d+)?$")


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    from clir.index.store import library_versions

    out = library_versions()
    for pkg in ("ranx", "ir-datasets", "pyserini", "matplotlib"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _label(metric: str) -> str:
    m = _METRIC_LABEL.match(metric)
    if not m:
        return metric
    name = {"ndcg": "nDCG", "map": "MAP", "mrr": "MRR", "recall": "R", "precision": "P"}.get(
        m.group(1), m.group(1)
    )
    return name + (m.group(2) or "")


# ---------------------------------------------------------------------- adapters, in words
def _adapter_origin(src: str, plan: Plan, m: GridModel | None = None) -> str:
    if src == "new":
        return f"untrained (`new`, random init, seed {plan.fresh_seed(m)})"
    p = Path(src).expanduser()
    for sa in plan.adapters:
        a = sa.spec
        if Path(a.out).expanduser().resolve() == p.resolve():
            seed = f", seed {sa.seed}" if sa.seed is not None else ""
            return f"trained by `clir train-language-adapter` on {a.text} (`{a.out}`{seed})"
    if p.exists():
        return f"from folder `{src}`"
    return f"`{src}` (AdapterHub / Hugging Face hub)"


def describe_model(m: GridModel, plan: Plan) -> dict[str, Any]:
    """How the model's adapters were made, for the report (task adapter, language adapters)."""
    info: dict[str, Any] = {"name": m.name, "source": m.source, "mode": m.mode, "note": m.spec.note}
    if m.seed is not None:
        info.update(arm=m.arm, seed=m.seed, lang_seed=m.lang_seed)
    if m.build:
        info["built_by"] = "clir " + " ".join(m.build.command)
    if not m.strategy.has_adapters:
        info["task_adapter"] = None
        info["language_adapters"] = {}
        return info
    folder = m.folder
    trained = folder is not None and folder.is_dir() and any((folder / "adapters").glob("task*"))
    info["task_adapter"] = (
        "trained (from the model folder)"
        if trained
        else f"untrained (`new`, random init, seed {plan.fresh_seed(m)})"
    )
    langs: dict[str, str] = {}
    if m.routes_languages:
        adapters = dict((m.settings or {}).get("language_adapters") or {})
        if folder is not None and (folder / "adapters").is_dir():
            for d in sorted((folder / "adapters").glob("lang_*")):
                langs[d.name[len("lang_") :]] = "bundled with the model folder"
        for lang, src in sorted(adapters.items()):
            if lang not in langs:
                langs[lang] = _adapter_origin(str(src), plan, m)
    info["language_adapters"] = langs
    return info


# ---------------------------------------------------------------------- metrics.json
def metrics_document(result: GridResult) -> dict[str, Any]:
    from clir.index.store import now_iso

    plan = result.plan
    cfg = plan.config
    return {
        "name": cfg.name,
        "description": cfg.description,
        "config": plan.config_path,
        "config_hash": config_hash(cfg),
        "command": result.command,
        "created": now_iso(),
        "seconds": round(result.seconds, 1),
        "versions": versions(),
        "k": plan.k,
        "metrics": list(cfg.metrics),
        "primary_metric": cfg.primary,
        "baseline": plan.baseline,
        "significance": {
            "tests": list(cfg.significance.tests),
            "max_p": cfg.significance.max_p,
            "n_permutations": cfg.significance.n_permutations,
            "n_resamples": cfg.significance.n_resamples,
            "random_seed": cfg.significance.random_seed,
            "correction": cfg.significance.correction,
            "claim_test": cfg.significance.claim_test,
        },
        "index_root": str(plan.index_root),
        "models": [describe_model(m, plan) for m in plan.models],
        "rows": result.rows,
        "swaps": result.swaps,
        "controls": result.controls,
        "claims": result.claims,
        "analysis": result.analysis,
        "computed": result.computed,
        "reused": result.skipped,
        "missing": result.missing,
        "notes": result.notes,
    }


# ---------------------------------------------------------------------- report.md
def _cell(row: dict[str, Any], metric: str, max_p: float, tests: Sequence[str]) -> str:
    """The metric (mean ± sd over seeds for a row with several) and the marks of the significant tests."""
    v = f"{row['metrics'][metric]:.4f}"
    sd = (row.get("sd") or {}).get(metric)
    if sd is not None:
        v += f" ± {sd:.4f}"
    sig = row.get("significance") or {}
    marks = "".join(MARKS[t] for t in tests if sig.get(t, {}).get(metric, {}).get("significant"))
    return v + marks


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return lines


def render_report(result: GridResult, doc: dict[str, Any]) -> str:
    """report.md: how the grid was run, its models, the metric tables, the adapter swaps, the analysis,
    plots and notes."""
    from clir.experiments.analysis_report import analysis_lines
    from clir.experiments.report_design import claims_lines, controls_lines, seeds_lines

    out = _header_lines(result, doc) + _model_lines(result, doc) + seeds_lines(result) + _table_lines(result)
    out += _swap_lines(result) + [""] + controls_lines(result) + claims_lines(result)
    out += analysis_lines(result.analysis) + _tail_lines(result, doc)
    return "\n".join(out) + "\n"


def _marks(tests: Sequence[str]) -> str:
    from clir.experiments.significance import TEST_NAMES

    return ", ".join(f"{MARKS[t]} {TEST_NAMES[t]}" for t in tests)


def _header_lines(result: GridResult, doc: dict[str, Any]) -> list[str]:
    plan = result.plan
    cfg = plan.config
    sig = cfg.significance
    tests = list(sig.tests)
    out: list[str] = [f"# clir experiment: {cfg.name}", ""]
    if cfg.description:
        out += [cfg.description.strip(), ""]
    marks = _marks(tests)
    out += [
        f"- command: `{result.command}`" if result.command else "- command: (library call)",
        f"- config: `{plan.config_path}` (hash `{doc['config_hash']}`; resolved copy: `config.resolved.yaml`)",
        f"- created: {doc['created']}; wall time of this invocation: {result.seconds:.1f} s "
        f"({len(result.computed)} run(s) computed, {len(result.skipped)} reused from earlier invocations)",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in doc["versions"].items()),
        f"- indexes: `{plan.index_root}` (one per collection x model x document routing; reused when the "
        "manifest's encoder fingerprint matches)",
        f"- {plan.k} hits per query; metrics: {', '.join(_label(m) for m in cfg.metrics)} (ranx; queries a run "
        "misses score 0)",
        f"- significance against the baseline **{plan.baseline}**, per collection: {marks} (p < {sig.max_p} "
        f"after {_CORRECTION[sig.correction]})",
    ]
    if "two-level" in tests:
        out.append(
            f"- two-level bootstrap: {sig.n_resamples} resamples of seeds, then queries, seed {sig.random_seed}"
        )
    if "fisher" in tests:
        se = (sig.max_p * (1 - sig.max_p) / sig.n_permutations) ** 0.5
        out.append(
            f"- Fisher p-values come from {sig.n_permutations} random sign flips drawn with seed "
            f"{sig.random_seed} (reproducible; Monte Carlo error about ±{se:.3f} near p = {sig.max_p}: raise "
            "significance.n_permutations for finer p-values)"
        )
    if cfg.bm25.enabled:
        out.append(
            f"- bm25: Pyserini (Lucene, the documents' language analyzer), k1={cfg.bm25.k1}, b={cfg.bm25.b}, "
            "on document-language query text (HC4/NeuCLIR human translations, local queries.<lang>.tsv)"
        )
    if cfg.fusion.methods:
        fused = ", ".join(cfg.fusion.models) or "every model"
        names = {"rrf": f"RRF (k={cfg.fusion.rrf_k})", "combsum": "CombSUM of min-max normalised scores"}
        out.append(
            f"- fusion (ranx) of {fused} with BM25: " + "; ".join(names[m] for m in cfg.fusion.methods)
        )
    return out


def _model_lines(result: GridResult, doc: dict[str, Any]) -> list[str]:
    plan = result.plan
    out: list[str] = []
    out += [
        "",
        "## Models",
        "",
    ]
    body = []
    for m in doc["models"]:
        routes = ", ".join(
            r.label() for r in next(x for x in plan.models if x.name == m["name"]).routings if r
        )
        langs = "; ".join(f"{k}: {v}" for k, v in m["language_adapters"].items()) or "-"
        body.append(
            [
                f"**{m['name']}**",
                f"`{m['source']}`",
                m["mode"],
                m["task_adapter"] or "-",
                langs,
                routes or "one row (no language adapter to route)",
            ]
        )
    out += _table(["model", "source", "mode", "task adapter", "language adapters", "routings"], body)
    notes = [f"- {m['name']}: {m['note']}" for m in doc["models"] if m.get("note")]
    if notes:
        out += ["", *notes]
    out += [
        "",
        "Routing `q-X_d-Y`: language adapter under the task adapter for queries (X) and documents (Y): `source` "
        "keeps the training language's adapter, `target` swaps in the text's own language's, `none` drops it.",
        "",
    ]

    return out


def _table_lines(result: GridResult) -> list[str]:
    """The overview table of the primary metric and one table of every metric per collection."""
    plan = result.plan
    cfg = plan.config
    sig = cfg.significance
    tests = list(sig.tests)
    primary = cfg.primary
    rows = result.rows
    out: list[str] = []
    collections = list(dict.fromkeys(r["collection"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    by = {(r["collection"], r["variant"]): r for r in rows}
    if rows:
        out += [f"## Overview: {_label(primary)}", ""]
        body = []
        for v in variants:
            cells = [f"**{v}**" if v == plan.baseline else v]
            vals = []
            for c in collections:
                r = by.get((c, v))
                cells.append(_cell(r, primary, sig.max_p, tests) if r else "-")
                if r:
                    vals.append(r["metrics"][primary])
            cells.append(f"{sum(vals) / len(vals):.4f}" if len(vals) == len(collections) else "-")
            body.append(cells)
        out += _table(["variant", *collections, "mean"], body)
        out += [
            "",
            "## Per collection",
            "",
            "time (s): what computing the row took when it ran (its index build, when it built one, plus "
            "query encoding and search); reused rows keep the time of the invocation that computed them.",
            "",
        ]
    for c in collections:
        crow = [r for r in rows if r["collection"] == c]
        lang = crow[0].get("lang")
        out += [
            f"### {c}" + (f" ({lang})" if lang else ""),
            "",
            f"`{crow[0]['source']}`, {crow[0]['queries']} queries run",
            "",
        ]
        body = []
        for r in crow:
            name = f"**{r['variant']}** (baseline)" if r["baseline"] else r["variant"]
            secs = f"{r['seconds']:.0f}" if r.get("seconds") is not None else "-"
            body.append([name, *(_cell(r, m, sig.max_p, tests) for m in cfg.metrics), secs])
        out += _table(["variant", *(_label(m) for m in cfg.metrics), "time (s)"], body)
        out.append("")

    return out


def _swap_lines(result: GridResult) -> list[str]:
    plan = result.plan
    cfg = plan.config
    sig = cfg.significance
    tests = list(sig.tests)
    primary = cfg.primary
    marks = _marks(tests)
    out: list[str] = []
    out += ["## Language-adapter swap: d-target minus d-source (and d-none minus d-source)", ""]
    if result.swaps:
        header = ["model", "routing", "collection", "lang", *(f"Δ {_label(m)}" for m in cfg.metrics)]
        header += [f"adj. p {_label(primary)} ({t})" for t in tests]
        body = []
        for s in result.swaps:
            route = f"q-{s['query_routing']} d-source → d-{s.get('doc_routing', 'target')}"
            cells = [s["model"], route, s["collection"], s.get("lang") or "-"]
            if s.get("seeds", 1) > 1:
                cells[0] += f" ({s['seeds']} seeds)"
            for m in cfg.metrics:
                d = s["delta"][m]
                sigm = "".join(
                    MARKS[t]
                    for t in tests
                    if (s.get("significance") or {}).get(t, {}).get(m, {}).get("significant")
                )
                cells.append(f"{d:+.4f}{sigm}")
            for t in tests:
                p = (s.get("significance") or {}).get(t, {}).get(primary, {}).get("p_adjusted")
                cells.append(("<0.001" if p < 0.001 else f"{p:.3f}") if p is not None else "-")
            body.append(cells)
        out += _table(header, body)
        out += [
            "",
            f"Marks: the swap's own paired test ({marks}, adjusted p < {sig.max_p}; {_CORRECTION[sig.correction]}).",
        ]
    else:
        out.append("No swap pair in this grid (it needs a madx model with both d-source and d-target rows).")
    return out


def _tail_lines(result: GridResult, doc: dict[str, Any]) -> list[str]:
    plan = result.plan
    cfg = plan.config
    out: list[str] = []
    out += ["## Plots", ""]
    for p in doc.get("plots", []):
        out.append(f"![{p}]({p})")
    extra = list(result.notes)
    for c in plan.collections:
        if cfg.bm25.enabled and not c.bm25_lang:
            extra.append(f"no BM25 row for {c.name}: {c.bm25_note}")
    if not cfg.bm25.enabled:
        extra.append("BM25 baseline and fusion rows: not enabled in this config")
    if result.missing:
        extra.append(
            f"{len(result.missing)} row(s) of the grid have no finished run yet: " + ", ".join(result.missing)
        )
    if extra:
        out += ["", "## Notes", ""] + [f"- {n}" for n in extra]
    return out


_CORRECTION = {
    "holm": "Holm-Bonferroni correction over the pairs tested on each collection (one family per test and "
    "metric: every row against the baseline plus each swap pair and each control against its reference row)",
    "bonferroni": "Bonferroni correction over the pairs tested on each collection (per test and metric)",
    "none": "no correction for multiple comparisons",
}


def _projection_plots(result: GridResult, folder: Path) -> list[str]:
    """A 2-D projection per row, coloured by document language: for each analysed collection with several
    languages, else for the first analysed collection."""
    from clir.experiments.plots import plot_projections

    plan = result.plan
    rows = [r for r in plan.rows if plan.analyses(r) and plan.vectors_path(r).is_file()]
    by_coll: dict[str, dict[str, str]] = {}
    multi: list[str] = []
    for r in rows:
        by_coll.setdefault(r.collection.name, {})[r.variant] = str(plan.vectors_path(r))
        if r.collection.doc_lang is None and r.collection.name not in multi:
            multi.append(r.collection.name)
    chosen = multi or list(by_coll)[:1]
    written = []
    for name in chosen:
        p = plot_projections(
            by_coll[name], folder / f"projection_{name}.png", title=f"{name}: first two principal components"
        )
        if p:
            written.append(f"plots/{p.name}")
    return written


def write_outputs(result: GridResult) -> dict[str, Path]:
    """Write metrics.json, plots/*.png and report.md into the grid's output folder. Paths in them are portable
    (:mod:`clir.portable`: relative to the repository, ``../shared/...``, ids as given), as they get committed."""
    from clir.atomic import atomic_write_text
    from clir.experiments import plots
    from clir.portable import portable, portable_text

    plan = result.plan
    cfg = plan.config
    out = plan.out
    out.mkdir(parents=True, exist_ok=True)
    doc = portable(metrics_document(result))
    written: list[str] = []
    dense_like = result.rows
    for m in cfg.metrics:
        p = plots.metric_bars(
            dense_like, m, out / "plots" / f"{_safe(m)}.png", title=f"{_label(m)} per collection ({cfg.name})"
        )
        if p:
            written.append(str(p.relative_to(out)))
    p = plots.swap_delta(
        result.swaps, cfg.primary, out / "plots" / "swap_delta.png", max_p=cfg.significance.max_p
    )
    if p:
        written.append(str(p.relative_to(out)))
    written += _projection_plots(result, out / "plots")
    doc["plots"] = written
    atomic_write_text(out / "metrics.json", json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out / "report.md", portable_text(render_report(result, doc)))
    return {"metrics": out / "metrics.json", "report": out / "report.md"}


def _safe(metric: str) -> str:
    return metric.replace("@", "_at_")


def overview_text(result: GridResult) -> str:
    """The primary-metric table (collections x variants) that ``clir experiment`` prints on stdout."""
    cfg = result.plan.config
    rows = result.rows
    if not rows:
        return "no finished runs\n"
    collections = list(dict.fromkeys(r["collection"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    by = {(r["collection"], r["variant"]): r for r in rows}
    tests = list(cfg.significance.tests)
    body = []
    for v in variants:
        body.append(
            [
                v,
                *(
                    _cell(by[(c, v)], cfg.primary, cfg.significance.max_p, tests) if (c, v) in by else "-"
                    for c in collections
                ),
            ]
        )
    return "\n".join(_table([_label(cfg.primary), *collections], body)) + "\n"
