"""The row-kind protocol of an experiment grid (:mod:`clir.experiments.rowkinds`): dense, BM25 and fusion rows
each answer their plan (inputs, indexes, run keys), their run and their score, and no module of
``clir/experiments/`` dispatches on a kind's name."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from clir.testing import _LINES

EXPERIMENTS = Path(__file__).resolve().parents[1] / "clir" / "experiments"


# ---------------------------------------------------------------------- no dispatch on kind names
def _is_kind(node: ast.expr) -> bool:
    name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""
    return name == "kind" or name.endswith("_kind")


def _is_text(node: ast.expr) -> bool:
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return bool(node.elts) and all(_is_text(e) for e in node.elts)
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def kind_string_tests(source: str) -> list[int]:
    """Lines comparing a ``kind`` (a name or an attribute) with text: ``kind == "x"``, ``"x" != r.kind``,
    ``kind in ("x", "y")``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        for op, a, b in zip(node.ops, operands[:-1], operands[1:], strict=True):
            if isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) and (
                (_is_kind(a) and _is_text(b)) or (_is_text(a) and _is_kind(b))
            ):
                found.append(node.lineno)
    return found


def test_the_checker_sees_kind_string_tests():
    assert kind_string_tests('if row.kind == "dense":\n    pass\n') == [1]
    assert kind_string_tests('x = "bm25" != r.kind\n') == [1]
    assert kind_string_tests('ok = [r for r in rows if r.kind in ("dense", "bm25")]\n') == [1]
    assert kind_string_tests('if kind == "ip":\n    pass\n') == [1]
    assert kind_string_tests("if row.kind is DENSE or row.kind.computed:\n    pass\n") == []
    assert kind_string_tests('name = row.kind.name\nx = {"kind": row.kind.name}\n') == []


def test_no_module_of_the_experiments_dispatches_on_a_kind_name():
    found = [
        f"{p.name}:{line}"
        for p in sorted(EXPERIMENTS.glob("*.py"))
        for line in kind_string_tests(p.read_text(encoding="utf-8"))
    ]
    assert not found, "kind compared with text (ask the row's kind, clir.experiments.rowkinds): " + ", ".join(
        found
    )


# ---------------------------------------------------------------------- the protocol on a planned grid
def _collection(root: Path) -> Path:
    """German documents, English queries and their German translations (BM25's queries)."""
    root.mkdir(parents=True)
    docs = [{"doc_id": f"de-{i}", "text": t, "lang": "de"} for i, t in enumerate(_LINES["de"])]
    (root / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    n = len(docs)
    for name, lang in (("queries.tsv", "en"), ("queries.de.tsv", "de")):
        (root / name).write_text("".join(f"q{i}\t{_LINES[lang][i]}\n" for i in range(n)), encoding="utf-8")
    (root / "qrels.txt").write_text("".join(f"q{i} 0 de-{i} 1\n" for i in range(n)), encoding="utf-8")
    return root


@pytest.fixture
def planned(tiny_bert, tmp_path):
    """A grid of each kind of row, planned offline: (config, out folder, plan)."""
    from clir.experiments.grid import load_experiment_config
    from clir.experiments.plan import plan_grid

    coll = _collection(tmp_path / "de")
    path = tmp_path / "grid.yaml"
    path.write_text(
        f"""
name: kinds
collections: [{{source: {coll}, name: de, doc_lang: de}}]
models:
  - {{name: tiny, model: {tiny_bert}}}
  - name: madx
    model: {tiny_bert}
    overrides: {{adapter_mode: madx, language_adapters: {{en: new, de: new}}}}
routings: [{{query: source, doc: source}}, {{query: source, doc: target}}]
metrics: [mrr@100]
bm25: {{enabled: true}}
fusion: {{methods: [rrf]}}
""",
        encoding="utf-8",
    )
    cfg = load_experiment_config(path)
    out = tmp_path / "out"
    return cfg, out, plan_grid(cfg, config_path=str(path), out=out)


def test_each_row_answers_its_plan(planned):
    from clir.experiments.plan import plan_grid
    from clir.experiments.rowkinds import BM25, DENSE, FUSION, ROW_KINDS, by_kind

    cfg, out, plan = planned
    rows = {r.variant: r for r in plan.rows}
    assert list(rows) == [
        "tiny",
        "madx/q-source_d-source",
        "madx/q-source_d-target",
        "bm25",
        "tiny+bm25-rrf",
        "madx/q-source_d-source+bm25-rrf",
        "madx/q-source_d-target+bm25-rrf",
    ]
    assert [k.name for k in ROW_KINDS] == ["dense", "bm25", "fusion"]
    assert [len(v) for v in by_kind(plan.rows).values()] == [3, 1, 3]
    dense, bm25, fused = rows["madx/q-source_d-target"], rows["bm25"], rows["madx/q-source_d-target+bm25-rrf"]
    assert (dense.kind, bm25.kind, fused.kind) == (DENSE, BM25, FUSION)
    # inputs: a fusion row is made from its dense row and the collection's BM25 row, in that order
    assert fused.kind.needs(fused, plan.rows) == [dense, bm25]
    assert dense.kind.needs(dense, plan.rows) == [] and bm25.kind.needs(bm25, plan.rows) == []
    only = plan_grid(cfg, out=out, only=["de/madx/q-source_d-target+bm25-rrf"])
    assert [r.id for r in only.selected] == ["de/madx/q-source_d-target", "de/bm25", fused.id]
    # indexes: one per model and document routing; BM25 its Lucene index; fusion none
    assert [j.label for j in plan.index_jobs(plan.rows)] == [
        "de x tiny",
        "de x madx d-source",
        "de x madx d-target",
    ]
    assert bm25.kind.index_job(plan, bm25) is None and fused.kind.index_job(plan, fused) is None
    assert BM25.index_lines(plan, [bm25]) == [
        f"  {plan.bm25_index_path(bm25.collection)}  (de BM25, Lucene de analyzer)"
    ]
    # run keys: the kind's name is written into the key; a fusion row has no run of its own
    assert DENSE.key(plan, dense)["kind"] == "dense" and BM25.key(plan, bm25)["kind"] == "bm25"
    assert len({plan.row_key(r) for r in by_kind(plan.rows)[DENSE] + [bm25]}) == 4
    with pytest.raises(TypeError):
        plan.row_key(fused)
    assert (DENSE.computed, BM25.computed, FUSION.computed) == (True, True, False)
    assert [k.needs_pyserini for k in ROW_KINDS] == [False, True, False]
    assert plan.bm25_unavailable is None or BM25.needs_pyserini


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, list[str]]] = []

    def run_model(self, model, rows) -> None:
        self.calls.append(("model", model.name, [r.id for r in rows]))

    def run_bm25(self, row) -> None:
        self.calls.append(("bm25", row.id, []))


def test_each_kind_runs_its_rows(planned):
    from clir.experiments.rowkinds import by_kind

    _cfg, _out, plan = planned
    runner = _Recorder()
    for kind, rows in by_kind(plan.rows).items():
        kind.run(plan, rows, runner)
    # dense rows model by model (each encoder loaded once), then BM25 row by row; fusion runs nothing
    assert runner.calls == [
        ("model", "tiny", ["de/tiny"]),
        ("model", "madx", ["de/madx/q-source_d-source", "de/madx/q-source_d-target"]),
        ("bm25", "de/bm25", []),
    ]


def _finish(plan, row, ranking: list[str]) -> None:
    """A finished run of ``row``: every query ranks ``ranking``, with a marker of the row's current key."""
    from clir.search import Hit, write_trec_run

    hits = [Hit(i + 1, d, 1.0 / (i + 1)) for i, d in enumerate(ranking)]
    write_trec_run(plan.run_path(row), {"q0": hits, "q1": hits}, tag="t")
    plan.marker_path(row).write_text(json.dumps({"key": plan.row_key(row)}), encoding="utf-8")


def test_each_kind_scores_its_rows(planned):
    from clir.experiments.fusion import fuse_runs
    from clir.experiments.scoring import _collect_runs, _row_record

    _cfg, _out, plan = planned
    rows = {r.variant: r for r in plan.rows}
    dense, bm25, fused = rows["tiny"], rows["bm25"], rows["tiny+bm25-rrf"]
    assert fused.kind.scored_run(plan, fused, {}) is None
    assert dense.kind.scored_run(plan, dense, {}) is None  # no run yet
    _finish(plan, dense, ["de-0", "de-1", "de-2"])
    _finish(plan, bm25, ["de-2", "de-1"])
    missing: list[str] = []
    runs, present = _collect_runs(plan, plan.rows, missing)
    assert [r.variant for r in present] == ["tiny", "bm25", "tiny+bm25-rrf"]
    assert runs["tiny"]["q0"] == pytest.approx({"de-0": 1.0, "de-1": 0.5, "de-2": 1 / 3}, abs=1e-4)
    want = fuse_runs([runs["tiny"], runs["bm25"]], "rrf", rrf_k=plan.config.fusion.rrf_k, k=plan.k)
    assert list(runs["tiny+bm25-rrf"]["q0"]) == list(want["q0"])  # fused dense-then-BM25 and written out
    assert plan.run_path(fused).is_file() and not plan.is_done(fused)
    assert missing == [f"de/{v}" for v in ("madx/q-source_d-source", "madx/q-source_d-target")] + [
        f"de/{v}" for v in ("madx/q-source_d-source+bm25-rrf", "madx/q-source_d-target+bm25-rrf")
    ]
    # metrics.json: the kind's name, its model and arm ("bm25" for BM25), a fusion row's inputs
    records = {v: _row_record(plan, rows[v], runs, {v: {}}) for v in runs}
    assert [(r["kind"], r["model"], r["arm"], r["fusion"]) for r in records.values()] == [
        ("dense", "tiny", "tiny", None),
        ("bm25", "bm25", "bm25", None),
        ("fusion", None, None, {"method": "rrf", "dense": "tiny"}),
    ]
    assert list(records["bm25"]) == list(records["tiny"])  # one field order for every kind
    assert records["tiny"]["seconds"] == 0.0 and records["tiny+bm25-rrf"]["seconds"] is None  # from markers


# ---------------------------------------------------------------------- the references the grid resolves
def test_model_and_collection_references_say_what_the_grid_asks(tiny_bert, tmp_path, monkeypatch):
    from clir.data.resolve import resolve_collection
    from clir.model.registry import models_home
    from clir.model.resolve import resolve_model

    folder = resolve_model(str(tiny_bert))
    assert folder.names_folder and folder.pulled_folder is None
    hub = resolve_model("some-org/some-model")
    assert not hub.names_folder and hub.pulled_folder is None
    monkeypatch.setenv("CLIR_HOME", str(tmp_path / "home"))
    assert resolve_model("multilingual-e5-small").pulled_folder is None  # registered, not pulled yet
    pulled = models_home() / "multilingual-e5-small"
    pulled.mkdir(parents=True)
    ref = resolve_model("multilingual-e5-small")
    assert not ref.names_folder and ref.pulled_folder == pulled  # its files stamp the grid's run markers

    coll = _collection(tmp_path / "coll")
    assert not resolve_collection(str(coll)).docs_file
    assert resolve_collection(str(coll / "docs.jsonl")).docs_file
