"""`clir experiment` (alias `clir eval`): the experiment grid on a tiny model and tiny collections (routings, metrics, significance,
report, plots, skipping finished runs, offline messages, the paper config's plan, BM25 and fusion)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clir.testing import _LINES

ROOT = Path(__file__).resolve().parents[1]
LANGS = ["en", "de", "ru", "zh", "fa", "fr"]


def _write_config(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _grid_yaml(model: Path, collection: Path, extra: str = "") -> str:
    adapters = ", ".join(f"{lang}: new" for lang in LANGS)
    return f"""
name: tiny-grid
collections:
  - {{source: {collection}, name: tiny}}
models:
  - name: plain
    model: {model}
  - name: madx
    model: {model}
    overrides:
      adapter_mode: madx
      language_adapters: {{{adapters}}}
routings:
  - {{query: source, doc: source}}
  - {{query: source, doc: target}}
metrics: [ndcg@10, map, mrr@100, recall@100]
significance: {{baseline: plain, tests: [student, fisher], max_p: 0.05, n_permutations: 200}}
{extra}
"""


def _clir(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "clir", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "CLIR_PROGRESS": "0", **(env or {})},
        timeout=600,
    )


@pytest.fixture(scope="module")
def grid(tiny_bert, tiny_collection, tmp_path_factory):
    """The tiny grid, run once through the CLI entry point: (config, out folder, metrics.json)."""
    from clir.cli.main import main

    tmp = tmp_path_factory.mktemp("grid")
    cfg = _write_config(
        tmp / "grid.yaml", _grid_yaml(tiny_bert, tiny_collection, "analysis: {enabled: true}")
    )
    out = tmp / "out"
    assert main(["experiment", "--config", str(cfg), "--out", str(out)]) == 0
    return cfg, out, json.loads((out / "metrics.json").read_text())


def test_two_routings_give_two_distinct_runs(grid):
    from clir.search import read_trec_run

    _cfg, out, doc = grid
    madx = {r["variant"]: r for r in doc["rows"] if r["model"] == "madx"}
    assert set(madx) == {"madx/q-source_d-source", "madx/q-source_d-target"}
    runs = [read_trec_run(out / r["run"]) for r in madx.values()]
    assert runs[0].keys() == runs[1].keys()
    assert runs[0] != runs[1]  # the document-side adapter swap changes the document vectors
    # a full-mode model has no adapter to route: one row, not one per routing
    assert [r["variant"] for r in doc["rows"] if r["model"] == "plain"] == ["plain"]
    # each index once: one for plain, one per document routing of madx, keyed as documented
    names = sorted(p.name for p in (out / "indexes").iterdir())
    assert names == ["tiny__madx__d-source", "tiny__madx__d-target", "tiny__plain"]
    src = json.loads((out / "indexes" / "tiny__madx__d-source" / "manifest.json").read_text())
    tgt = json.loads((out / "indexes" / "tiny__madx__d-target" / "manifest.json").read_text())
    assert set(src["encoder"]["adapters"]) == {"task", "en"}  # only the adapters its documents went through
    assert set(tgt["encoder"]["adapters"]) == {"task", "en", "de", "ru", "zh", "fa", "fr"}


def test_metrics_match_ranx_on_the_run_files(grid, tiny_collection):
    import ranx

    from clir.data import load_qrels
    from clir.search import read_trec_run

    _cfg, out, doc = grid
    qrels = ranx.Qrels(load_qrels(tiny_collection))
    assert len(doc["rows"]) == 3
    for row in doc["rows"]:
        run = ranx.Run(read_trec_run(out / row["run"]))
        direct = ranx.evaluate(qrels, run, doc["metrics"], make_comparable=True)
        assert row["metrics"] == pytest.approx(direct, abs=1e-9)
        assert 0.0 < row["metrics"]["recall@100"] <= 1.0


def test_significance_against_the_baseline_and_for_the_swap(grid):
    _cfg, out, doc = grid
    base = [r for r in doc["rows"] if r["baseline"]]
    assert [r["variant"] for r in base] == ["plain"] and base[0]["significance"] is None
    for row in doc["rows"]:
        if row["baseline"]:
            continue
        for test in ("student", "fisher"):
            for m in doc["metrics"]:
                p = row["significance"][test][m]["p_value"]
                adjusted = row["significance"][test][m]["p_adjusted"]
                assert 0.0 <= p <= adjusted <= 1.0  # Holm-Bonferroni never lowers a p-value
                assert row["significance"][test][m]["significant"] == (adjusted < 0.05)
    (swap,) = doc["swaps"]
    assert (swap["source"], swap["target"]) == ("madx/q-source_d-source", "madx/q-source_d-target")
    by = {r["variant"]: r["metrics"] for r in doc["rows"]}
    for m in doc["metrics"]:
        assert swap["delta"][m] == pytest.approx(by[swap["target"]][m] - by[swap["source"]][m])
    assert set(swap["significance"]) == {"student", "fisher"}


def test_the_tiny_model_is_the_same_in_every_process(tmp_path):
    """The grid's p-values and marks depend on the tiny model: it must not change from one test session to
    the next (its WordPiece vocabulary once did: the tokenizers trainer broke ties in a per-process hash
    order, so every session tested another model and this file's outcomes were drawn anew each time)."""
    code = (
        "import hashlib, sys; from pathlib import Path; from clir.testing import build_tiny_bert; "
        "d = build_tiny_bert(Path(sys.argv[1])); "
        "print(*(hashlib.sha256((d / f).read_bytes()).hexdigest() for f in ('tokenizer.json', 'model.safetensors')))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    digests = {
        subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / str(i))],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        ).stdout
        for i in range(2)
    }
    assert len(digests) == 1


def test_fisher_randomisation_test_is_seeded_and_exact():
    import itertools

    import numpy as np

    from clir.experiments.significance import compare_runs, fisher_randomization_test

    rng = np.random.default_rng(1)
    a = rng.random(8)
    b = a + np.array([0.3, 0.1, -0.05, 0.2, 0.25, -0.1, 0.15, 0.05])
    ps = {fisher_randomization_test(a, b, n_permutations=2000, random_seed=7) for _ in range(5)}
    assert len(ps) == 1  # the same draw every time
    # the exact p-value over all 2^8 sign flips, which the Monte Carlo one estimates
    d = b - a
    flips = np.array(list(itertools.product([-1, 1], repeat=8)))
    exact = float(np.mean(np.abs(flips @ d) >= abs(d.sum()) - 1e-12))
    assert ps.pop() == pytest.approx(exact, abs=0.02)
    assert fisher_randomization_test(a, a, n_permutations=100) == 1.0  # identical systems
    assert fisher_randomization_test(np.zeros(30), np.ones(30), n_permutations=99) == 0.01  # (0 + 1) / 100

    qrels = {f"q{i}": {"d1": 1} for i in range(6)}
    good = {q: {"d1": 2.0, "d2": 1.0} for q in qrels}
    bad = {q: {"d2": 2.0, "d1": 1.0} for q in qrels}
    res = compare_runs(qrels, {"a": bad, "b": good}, ["mrr"], pairs=[("a", "b")], tests=["fisher", "student"])
    fisher = res[("a", "b")]["fisher"]["mrr"]
    assert fisher["p_value"] == pytest.approx(2 / 64, abs=0.02) and fisher["significant"]
    assert res[("a", "b")]["student"]["mrr"]["significant"]
    same = compare_runs(qrels, {"a": bad, "b": bad}, ["mrr"], pairs=[("a", "b")], tests=["student"])
    assert same[("a", "b")]["student"]["mrr"] == {"p_value": 1.0, "p_adjusted": 1.0, "significant": False}


def test_report_and_plots_written(grid):
    cfg, out, doc = grid
    from clir.portable import host_paths, portable_path

    report = (out / "report.md").read_text()
    # no host folders in what gets committed: the config is named as a report may show it
    assert f"clir experiment --config {portable_path(cfg)}" in report
    assert host_paths(report) == [] and host_paths((out / "metrics.json").read_text()) == []
    assert doc["config_hash"] in report
    assert "ranx" in report and "torch" in report  # library versions
    assert "### tiny" in report
    for variant in ("plain", "madx/q-source_d-source", "madx/q-source_d-target"):
        assert f"| {variant}" in report or f"| **{variant}**" in report
    assert "† paired t-test" in report and "‡ Fisher" in report
    assert "d-target minus d-source" in report
    assert "untrained (`new`" in report  # the report says how the adapters were made
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert "swap_delta.png" in pngs and "ndcg_at_10.png" in pngs
    assert (out / "plots" / "ndcg_at_10.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Holm-Bonferroni" in report


def test_embedding_analysis_of_every_dense_row(grid, tiny_collection):
    from clir.data import load_collection
    from clir.experiments.analysis import load_vectors, measure_row

    _cfg, out, doc = grid
    rows = {r["variant"]: r["measures"] for r in doc["analysis"]["rows"]}
    assert set(rows) == {"plain", "madx/q-source_d-source", "madx/q-source_d-target"}
    coll = load_collection(str(tiny_collection))
    langs = {d.doc_id: d.lang for d in coll.docs()}
    qrels = coll.qrels()
    for variant, measures in rows.items():
        path = out / "runs" / f"tiny__{variant.replace('/', '__')}.vectors.npz"
        v = load_vectors(path)
        assert [langs[d] for d in v["doc_ids"]] == v["doc_langs"].tolist()  # each document's own language
        assert len(v["query_ids"]) == len(v["Q"]) and len(v["doc_ids"]) == len(v["D"])
        geometry = measure_row(path, qrels)
        assert {k: measures[k] for k in geometry} == geometry  # the report's numbers are the vectors' numbers
        assert 0.0 <= measures["pair_auc"] <= 1.0  # query -> relevant document among the row's documents
        assert 0.0 <= measures["lang_accuracy"] <= 1.0
    pairs = {(p["a"], p["b"]) for p in doc["analysis"]["pairs"]}
    assert ("madx/q-source_d-source", "madx/q-source_d-target") in pairs
    report = (out / "report.md").read_text()
    assert "## Why routing matters: the embeddings" in report
    assert (out / "plots" / "projection_tiny.png").is_file()


def test_rerun_skips_finished_runs(grid, capsys, caplog):
    from clir.cli.main import main

    cfg, out, doc = grid
    assert len(doc["computed"]) == 3
    runs = sorted((out / "runs").glob("*.trec"))
    before = {p: p.stat().st_mtime_ns for p in runs}
    assert main(["eval", "--config", str(cfg), "--out", str(out)]) == 0  # the verb's old name, an alias
    assert "clir eval is deprecated: use clir experiment" in caplog.text
    again = json.loads((out / "metrics.json").read_text())
    assert again["computed"] == [] and len(again["reused"]) == 3
    assert again["command"].startswith("clir eval --config")
    assert {p: p.stat().st_mtime_ns for p in runs} == before
    assert [r["metrics"] for r in again["rows"]] == [r["metrics"] for r in doc["rows"]]
    printed = capsys.readouterr().out
    assert "| plain |" in printed and "report:" in printed
    # the dry run of the same config now lists every row as done and no index to build
    assert main(["experiment", "--config", str(cfg), "--out", str(out), "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "3 rows: 0 to compute, 3 finished" in plan and "indexes (0 needed" in plan


def test_only_and_changed_settings_recompute(tiny_bert, tiny_collection, tmp_path):
    from clir.cli.main import main

    cfg = _write_config(tmp_path / "g.yaml", _grid_yaml(tiny_bert, tiny_collection))
    out = tmp_path / "out"
    assert main(["experiment", "--config", str(cfg), "--out", str(out), "--only", "tiny/plain"]) == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["computed"] == ["tiny/plain"] and [r["variant"] for r in doc["rows"]] == ["plain"]
    assert len(doc["missing"]) == 2
    # another k changes what produces the run: the marker no longer matches and the row is recomputed
    cfg2 = _write_config(tmp_path / "g2.yaml", _grid_yaml(tiny_bert, tiny_collection, "k: 20"))
    assert main(["experiment", "--config", str(cfg2), "--out", str(out), "--only", "tiny/plain"]) == 0
    doc2 = json.loads((out / "metrics.json").read_text())
    assert doc2["computed"] == ["tiny/plain"]
    assert main(["experiment", "--config", str(cfg2), "--out", str(out), "--only", "nothing-like-this"]) == 1


def test_config_errors_name_the_problem(tiny_bert, tiny_collection, tmp_path):
    from clir.config import ModelSpec
    from clir.errors import ClirError
    from clir.experiments import load_experiment_config, plan_grid

    bad_metric = _write_config(
        tmp_path / "m.yaml", _grid_yaml(tiny_bert, tiny_collection).replace("ndcg@10", "ndgc@10")
    )
    with pytest.raises(ClirError, match="unknown metric 'ndgc@10'"):
        load_experiment_config(bad_metric)
    bad_base = _write_config(
        tmp_path / "b.yaml",
        _grid_yaml(tiny_bert, tiny_collection).replace("baseline: plain", "baseline: nope"),
    )
    with pytest.raises(ClirError, match="baseline 'nope' is not a row"):
        plan_grid(load_experiment_config(bad_base))
    missing = _write_config(tmp_path / "c.yaml", _grid_yaml(tiny_bert, tmp_path / "no-such-collection"))
    with pytest.raises(ClirError, match="folder not found"):
        plan_grid(load_experiment_config(missing))
    cfg = load_experiment_config(_write_config(tmp_path / "ok.yaml", _grid_yaml(tiny_bert, tiny_collection)))
    cfg.models[1].overrides["language_adapters"] = {"en": "new"}  # no adapter for the documents' languages
    with pytest.raises(ClirError, match="needs a language adapter for 'de'"):
        plan_grid(cfg)
    cfg.models = [ModelSpec(name="m", model=str(tmp_path / "not-built"))]
    with pytest.raises(ClirError, match="does not exist .*build"):
        plan_grid(cfg)


def test_a_bad_build_flag_fails_at_plan_time(tiny_bert, tiny_collection, tmp_path):
    from clir.errors import ClirError
    from clir.experiments import load_experiment_config, plan_grid

    la = tmp_path / "adapters" / "de"
    cfg = _write_config(
        tmp_path / "bad.yaml",
        f"""
name: bad
collections: [{{source: {tiny_collection}, name: tiny}}]
adapters:
  - {{lang: de, out: {la}, text: {tiny_collection}, backbone: {tiny_bert}, args: [--no-such-flag]}}
models: [{{name: plain, model: {tiny_bert}}}]
""",
    )
    with pytest.raises(ClirError, match="train-language-adapter.*unrecognized arguments: --no-such-flag"):
        plan_grid(load_experiment_config(cfg))
    assert not la.exists()


def test_missing_ir_datasets_files_stop_before_any_work(tiny_bert, tmp_path):
    home = tmp_path / "irds-home"
    home.mkdir()
    cfg = _write_config(
        tmp_path / "hc4.yaml",
        f"""
name: offline
collections: [{{source: hc4/fa/test, query_field: title}}]
models: [{{name: tiny, model: {tiny_bert}}}]
""",
    )
    out = tmp_path / "out"
    res = _clir("eval", "--config", str(cfg), "--out", str(out), env={"IR_DATASETS_HOME": str(home)})
    assert res.returncode == 1, res.stderr
    assert "clir eval: error:" in res.stderr and "Traceback" not in res.stderr
    assert f"IR_DATASETS_HOME={home}" in res.stderr
    assert str(home / "hc4" / "fas" / "hc4_docs.jsonl") in res.stderr
    assert "test.qrels.v1-0.txt" in res.stderr and "place them at those paths" in res.stderr
    assert not (out / "runs").exists() and not (out / "indexes").exists()


def test_dry_run_of_the_paper_config_lists_the_plan(tmp_path):
    home = tmp_path / "irds-home"
    home.mkdir()
    res = _clir(
        "experiment",
        "--config",
        "configs/eval/paper-hc4.yaml",
        "--dry-run",
        env={"IR_DATASETS_HOME": str(home), "CLIR_MODELS": str(tmp_path / "models")},
    )
    assert res.returncode == 0, res.stderr
    plan = res.stdout
    for lang in ("fa", "ru", "zh"):
        assert f"irds:hc4/{lang}/test" in plan and f"irds:neuclir/1/{lang}/trec-2022" in plan
        assert f"hc4-{lang}-test__mbert-madx__d-target" in plan
        assert f"[todo] neuclir-1-{lang}-trec-2022/mbert-madx/q-source_d-source" in plan
    for mode in ("full", "task", "madx"):
        assert f"clir train --config configs/train/mbert-{mode}-msmarco.yaml" in plan
        assert f"mbert-{mode}" in plan and f"mode={mode}" in plan
    # 6 collections x (full + task + madx source/target) dense indexes
    assert "indexes (24 needed" in plan
    assert "[todo] hc4-fa-test/mbert-full\n" in plan and "hc4-fa-test/mbert-full/" not in plan
    assert "metrics: ndcg@10, ndcg@20, map, mrr@100, recall@100, recall@1000" in plan
    assert "student, fisher vs baseline mbert-full" in plan
    assert str(home / "hc4" / "fas" / "hc4_docs.jsonl") in plan
    assert "neuclir/trec-2022/qrels" in plan
    assert "bert-base-multilingual-cased" in plan and "language adapter ru" in plan
    assert not Path(tmp_path / "models").exists()  # nothing was built or downloaded


def _german_collection(root: Path) -> Path:
    """German documents with German translations of the English queries (queries.de.tsv)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "docs.jsonl", "w", encoding="utf-8") as f:
        for i, text in enumerate(_LINES["de"]):
            f.write(json.dumps({"doc_id": f"de-{i}", "text": text, "lang": "de"}, ensure_ascii=False) + "\n")
    n = len(_LINES["de"])
    (root / "queries.tsv").write_text(
        "".join(f"q{i}\t{_LINES['en'][i]}\n" for i in range(n)), encoding="utf-8"
    )
    (root / "queries.de.tsv").write_text(
        "".join(f"q{i}\t{_LINES['de'][i]}\n" for i in range(n)), encoding="utf-8"
    )
    (root / "qrels.txt").write_text("".join(f"q{i} 0 de-{i} 1\n" for i in range(n)), encoding="utf-8")
    return root


def test_bm25_and_fusion_rows(tiny_bert, tmp_path):
    from clir.experiments.bm25 import unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(f"BM25 needs Pyserini and Java: {reason}")
    from clir.cli.main import main

    coll = _german_collection(tmp_path / "de")
    cfg = _write_config(
        tmp_path / "bm25.yaml",
        f"""
name: bm25
collections: [{{source: {coll}, name: de, doc_lang: de}}]
models: [{{name: tiny, model: {tiny_bert}}}]
metrics: [mrr@100, recall@100]
significance: {{baseline: bm25, tests: [student], n_permutations: 100}}
bm25: {{enabled: true}}
fusion: {{methods: [rrf, combsum]}}
""",
    )
    out = tmp_path / "out"
    assert main(["experiment", "--config", str(cfg), "--out", str(out)]) == 0
    doc = json.loads((out / "metrics.json").read_text())
    rows = {r["variant"]: r for r in doc["rows"]}
    assert set(rows) == {"tiny", "bm25", "tiny+bm25-rrf", "tiny+bm25-combsum"}
    # the queries are the documents' own text: German BM25 finds each one first
    assert rows["bm25"]["metrics"]["mrr@100"] == pytest.approx(1.0)
    assert (out / "indexes" / "de__bm25-de" / "clir_bm25.json").is_file()
    for v in ("tiny+bm25-rrf", "tiny+bm25-combsum"):
        assert rows[v]["kind"] == "fusion" and rows[v]["significance"]["student"]["mrr@100"]["p_value"] <= 1
        assert rows[v]["metrics"]["mrr@100"] > rows["tiny"]["metrics"]["mrr@100"]


def test_xquad_r_config_plans_its_grid(e5_small, raw_irds_home, monkeypatch, capsys):
    from clir.cli.main import main

    monkeypatch.setenv("CLIR_E5_SMALL", str(e5_small))
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("IR_DATASETS_HOME", str(raw_irds_home.parent / "empty-home"))
    assert main(["experiment", "--config", "configs/eval/xquad-r-e5.yaml", "--dry-run"]) == 0
    plan = capsys.readouterr().out  # offline, nothing placed: the plan names each upstream file
    lareqa = "https://raw.githubusercontent.com/google-research-datasets/lareqa/9bc8c7fb6dd8d01d72a05a93c2cb96882b0d299c"
    assert f"{lareqa}/xquad-r/en.json" in plan  # pinned to the commit whose files the checksums are of
    assert "/data/tatoeba/v1/tatoeba.pes-eng.pes" in plan and "downloads needed: none" not in plan
    monkeypatch.setenv("IR_DATASETS_HOME", str(raw_irds_home))
    assert main(["experiment", "--config", "configs/eval/xquad-r-e5.yaml", "--dry-run"]) == 0
    plan = capsys.readouterr().out
    for name in ("xquad-r-de", "xquad-r-ru", "xquad-r-zh", "tatoeba-deu", "tatoeba-pes"):
        assert f"{name}/e5\n" in plan
        for doc in ("source", "target"):
            assert f"{name}/e5-madx/q-source_d-{doc}" in plan
    assert "15 rows" in plan and "downloads needed: none" in plan


@pytest.mark.slow
def test_e5_row_of_the_xquad_r_config_reproduces_the_reference(
    e5_small, raw_irds_home, tmp_path, monkeypatch
):
    from clir.cli.main import main

    monkeypatch.setenv("CLIR_E5_SMALL", str(e5_small))
    monkeypatch.chdir(ROOT)
    out = tmp_path / "xq"
    args = [
        "experiment",
        "--config",
        "configs/eval/xquad-r-e5.yaml",
        "--out",
        str(out),
        "--only",
        "xquad-r-de/e5",
    ]
    assert main(args) == 0
    (row,) = json.loads((out / "metrics.json").read_text())["rows"]
    assert row["variant"] == "e5" and row["queries"] == 1190
    assert row["metrics"]["mrr@100"] >= 0.762  # reference: 0.767 with plain transformers + exact search


def test_language_adapter_built_on_demand(tiny_bert, tiny_collection, tmp_path, capsys):
    from clir.cli.main import main
    from clir.portable import portable_path

    la = tmp_path / "adapters" / "tiny-de"
    adapters = ", ".join(f"{lang}: new" for lang in LANGS if lang != "de")
    cfg = _write_config(
        tmp_path / "la.yaml",
        f"""
name: la
collections: [{{source: {tiny_collection}, name: tiny}}]
mlm_head: {{out: {tmp_path / "head"}, backbone: {tiny_bert}, texts: [de={tiny_collection}], max_steps: 2}}
adapters:
  - {{lang: de, out: {la}, text: {tiny_collection}, backbone: {tiny_bert}, max_steps: 2, args: [--batch-size, "4"]}}
models:
  - name: madx
    model: {tiny_bert}
    overrides:
      adapter_mode: madx
      language_adapters: {{de: {la}, {adapters}}}
routings: [{{query: source, doc: target}}]
metrics: [mrr@100]
""",
    )
    out = tmp_path / "out"
    assert main(["experiment", "--config", str(cfg), "--out", str(out), "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert f"shared MLM head: clir train-mlm-head --backbone {tiny_bert}" in plan
    assert f"clir train-language-adapter --lang de --text {tiny_collection}" in plan
    assert f"--head {(tmp_path / 'head').resolve()}" in plan
    code = main(["experiment", "--config", str(cfg), "--out", str(out)])
    assert code == 0
    assert (la / "adapter_config.json").is_file()
    assert "adapter-transformers" in (la / "README.md").read_text()  # a built adapter has its model card
    report = (out / "report.md").read_text()
    assert f"de: trained by `clir train-language-adapter` on {portable_path(tiny_collection)}" in report
    manifest = json.loads((out / "indexes" / "tiny__madx__d-target" / "manifest.json").read_text())
    assert "de" in manifest["encoder"]["adapters"]


def test_mixed_language_unlabelled_and_long_document_collections(tiny_bert, tiny_collection, tmp_path):
    """`target` routing over a mixed-language collection, labelled or labelled by language id, and a
    collection of long documents ranked by their best passage, through the standard collection spec."""
    from clir.cli.main import main
    from clir.search import read_trec_run

    docs = [json.loads(x) for x in (tiny_collection / "docs.jsonl").read_text().splitlines()]
    unl = tmp_path / "unl"
    unl.mkdir()
    (unl / "docs.jsonl").write_text(
        "".join(json.dumps({k: d[k] for k in ("doc_id", "text")}) + "\n" for d in docs)
    )
    for name in ("queries.tsv", "qrels.txt"):
        (unl / name).write_text((tiny_collection / name).read_text())
    long = tmp_path / "long"
    long.mkdir()
    texts = {"long-de": " ".join(_LINES["de"] * 3), "long-ru": " ".join(_LINES["ru"] * 3)}
    (long / "docs.jsonl").write_text(
        "".join(json.dumps({"doc_id": k, "text": v}) + "\n" for k, v in texts.items())
    )
    (long / "queries.tsv").write_text("q0\tthe cat sits on the mat\n")
    (long / "qrels.txt").write_text("q0 0 long-de 1\n")
    adapters = ", ".join(f"{lang}: new" for lang in LANGS)
    cfg = _write_config(
        tmp_path / "g.yaml",
        f"""
name: mixed
collections:
  - {{source: {tiny_collection}, name: lab}}
  - {{source: {unl}, name: unl}}
  - {{source: {long}, name: long, passage_length: 24}}
models:
  - name: madx
    model: {tiny_bert}
    overrides: {{adapter_mode: madx, max_passage_length: 32, language_adapters: {{{adapters}}}}}
routings:
  - {{query: source, doc: target}}
metrics: [mrr@100]

""",
    )
    out = tmp_path / "out"
    assert main(["experiment", "--config", str(cfg), "--out", str(out)]) == 0
    lab = json.loads((out / "indexes/lab__madx__d-target/manifest.json").read_text())
    got = json.loads((out / "indexes/unl__madx__d-target/manifest.json").read_text())
    assert (
        lab["lang_id"]["detected"] == 0 and got["lang_id"]["detected"] + got["lang_id"]["undetermined"] == 28
    )
    assert lab["routing_fallback"] == {}
    # detected languages without an adapter take the documented rule (the source adapter), counted
    stray = {k: v for k, v in got["doc_langs"].items() if k not in LANGS}
    assert got["routing_fallback"] == stray
    stored = [
        json.loads(x) for x in (out / "indexes/unl__madx__d-target/docs.jsonl").read_text().splitlines()
    ]
    same = [i for i, d in enumerate(stored) if d["lang"] == docs[i]["lang"]]
    assert len(same) >= 0.8 * len(docs) and all(stored[i]["lang_detected"] for i in same)
    import faiss

    def vecs(name):
        index = faiss.read_index(str(out / "indexes" / name / "index"))
        return index.reconstruct_n(0, index.ntotal)

    # documents detected as labelled went through the same adapter: the same vectors
    np_lab, np_unl = vecs("lab__madx__d-target"), vecs("unl__madx__d-target")
    assert abs(np_lab[same] - np_unl[same]).max() < 1e-5
    run = read_trec_run(next((out / "runs").glob("long*.trec")))
    assert set(run["q0"]) == {"long-de", "long-ru"}  # documents (MaxP), not passages
    assert (out / "indexes/long__madx__d-target/passages.npy").is_file()
