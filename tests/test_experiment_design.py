"""An experiment grid with training seeds, controls and claims on the tiny model: how seeded rows are expanded,
run and pooled, the controls' rows, the claim table, and the config checks that catch bad values when it loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

LANGS = ["en", "de", "ru", "zh", "fa", "fr"]


def _config(root: Path, model_tmpl: str, coll: Path, coll2: Path, extra: str = "") -> str:
    adapters = ", ".join(f"{lang}: new" for lang in LANGS)
    return f"""
name: design
collections:
  - {{source: {coll}, name: tiny, question_set: tinyq}}
  - {{source: {coll2}, name: tiny-again, question_set: tinyq}}
models:
  - name: plain
    model: {root / "seed-0"}
  - name: madx
    model: {model_tmpl}
    seeds: [0, 1, 2]
    overrides: {{adapter_mode: madx, language_adapters: {{{adapters}}}}}
routings:
  - {{query: source, doc: source}}
  - {{query: source, doc: target}}
controls:
  - {{name: random-adapter, model: madx, routing: {{query: source, doc: random}}, against: "madx/q-source_d-target"}}
  - name: wrong-language
    model: madx
    routing: {{query: source, doc: target, doc_map: {{de: ru, ru: de, zh: ru, fa: ru, fr: ru}}}}
    collections: [tiny]
    against: madx/q-source_d-target
  - {{name: no-adapter, model: madx, routing: {{query: none, doc: none}}, collections: [tiny]}}
claims:
  - id: swap
    text: swapping the document adapter hurts
    pairs: [[madx/q-source_d-source, madx/q-source_d-target]]
    expect: lower
  - id: adapters-vs-plain
    text: the madx arm differs from the plain encoder
    pairs: [[plain, madx/q-source_d-source], [plain, madx/q-source_d-target]]
    verdict: not testable with this backbone
metrics: [mrr@100, ndcg@10]
significance: {{baseline: plain, tests: [fisher, two-level, seed-t], n_permutations: 10000, n_resamples: 10000}}
analysis: {{enabled: true, cka_docs: 12, neighbour_docs: 10}}
{extra}
"""


@pytest.fixture(scope="module")
def design(tiny_bert, tiny_collection, tmp_path_factory):
    """Three 'training seeds' of a madx model (copies of the tiny backbone whose fresh task adapters differ by
    seed) on two collections that ask the same questions; run once: (config, out, metrics.json)."""
    from clir.cli.main import main

    tmp = tmp_path_factory.mktemp("design")
    for seed in range(3):
        shutil.copytree(tiny_bert, tmp / "models" / f"seed-{seed}")
    coll2 = tmp / "coll2"
    shutil.copytree(tiny_collection, coll2)
    cfg = tmp / "design.yaml"
    cfg.write_text(_config(tmp / "models", str(tmp / "models" / "seed-{seed}"), tiny_collection, coll2))
    out = tmp / "out"
    assert main(["experiment", "--config", str(cfg), "--out", str(out)]) == 0
    return cfg, out, json.loads((out / "metrics.json").read_text())


def test_seeded_rows_are_expanded_run_and_pooled(design):
    _cfg, out, doc = design
    rows = {(r["collection"], r["variant"]): r for r in doc["rows"]}
    arm = rows[("tiny", "madx/q-source_d-target")]
    assert arm["seeds"] == [0, 1, 2] and len(arm["run"]) == 3
    per = [arm["per_seed"][str(s)]["mrr@100"] for s in range(3)]
    assert arm["metrics"]["mrr@100"] == pytest.approx(sum(per) / 3)
    assert arm["sd"]["mrr@100"] > 0  # the seeds' fresh task adapters differ
    assert rows[("tiny", "plain")].get("seeds") is None  # a model without seeds: one row, as before
    sig = arm["significance"]
    assert set(sig) == {"fisher", "two-level", "seed-t"} and "ci_low" in sig["two-level"]["mrr@100"]
    runs = sorted(p.name for p in (out / "runs").glob("tiny__madx@*__q-source_d-target.trec"))
    assert runs == [f"tiny__madx@{s}__q-source_d-target.trec" for s in range(3)]
    (swap,) = [s for s in doc["swaps"] if s["collection"] == "tiny"]
    assert swap["seeds"] == 3 and swap["source"] == "madx/q-source_d-source"
    models = {m["name"]: m for m in doc["models"]}
    assert models["madx@2"]["seed"] == 2 and models["madx@2"]["arm"] == "madx"


def test_control_rows_run_and_are_read_against_their_reference(design):
    _cfg, out, doc = design
    variants = {(r["collection"], r["variant"]): r for r in doc["rows"]}
    assert ("tiny", "madx/q-source_d-random") in variants and (
        "tiny-again",
        "madx/q-source_d-random",
    ) in variants
    wrong = "madx/q-source_d-target.de-as-ru.fa-as-ru.fr-as-ru.ru-as-de.zh-as-ru"
    assert ("tiny", wrong) in variants and ("tiny-again", wrong) not in variants  # its collections only
    assert variants[("tiny", "madx/q-none_d-none")]["control"] == "no-adapter"
    manifest = json.loads((out / "indexes" / "tiny__madx@0__d-random" / "manifest.json").read_text())
    assert set(manifest["encoder"]["adapters"]) == {"task", "en", "random"}
    wl = json.loads(
        (out / "indexes" / f"tiny__madx@1__d-{wrong.split('_d-')[1]}" / "manifest.json").read_text()
    )
    assert "de" in wl["encoder"]["adapters"] and wl["routing_fallback"] == {}  # Russian docs through de
    controls = {(c["control"], c["collection"]) for c in doc["controls"]}
    assert controls == {
        ("random-adapter", "tiny"),
        ("random-adapter", "tiny-again"),
        ("wrong-language", "tiny"),
    }
    c = next(c for c in doc["controls"] if c["control"] == "random-adapter")
    by = {r["variant"]: r["metrics"] for r in doc["rows"] if r["collection"] == c["collection"]}
    assert c["delta"]["mrr@100"] == pytest.approx(by[c["variant"]]["mrr@100"] - by[c["against"]]["mrr@100"])


def test_claims_count_a_question_set_once_with_holm_per_claim(design):
    _cfg, out, doc = design
    claims = {c["id"]: c for c in doc["claims"]}
    (comp,) = claims["swap"]["comparisons"]  # two collections, one question set: one comparison
    assert comp["question_set"] == "tinyq" and comp["collections"] == ["tiny", "tiny-again"]
    assert comp["paired_seeds"] and comp["seeds"] == [3, 3]
    rows = {(r["collection"], r["variant"]): r["metrics"]["mrr@100"] for r in doc["rows"]}
    want = sum(
        rows[(c, "madx/q-source_d-target")] - rows[(c, "madx/q-source_d-source")] for c in comp["collections"]
    )
    assert comp["delta"] == pytest.approx(want / 2)  # same questions: the mean of the two collections
    two = claims["adapters-vs-plain"]["comparisons"]
    assert len(two) == 2 and all(not c["paired_seeds"] for c in two)
    from clir.experiments.significance import adjust

    raw = {i: c["two-level"]["p_value"] for i, c in enumerate(two)}
    holm = adjust(raw, "holm")
    assert [c["two-level"]["p_adjusted"] for c in two] == pytest.approx([holm[i] for i in range(len(two))])
    report = (out / "report.md").read_text()
    assert "## Claims" in report and "| **swap**: swapping the document adapter hurts" in report
    assert "*pending*" in report and "| not testable with this backbone |" in report
    assert "## Controls" in report and "## Seeds" in report and " ± " in report
    assert "madx: seeds 0, 1, 2" in report


def test_new_analysis_measures_and_their_check_against_the_metric(design):
    _cfg, out, doc = design
    a = doc["analysis"]
    arms = {(r["collection"], r["variant"]): r for r in a["arms"]}
    src, tgt = arms[("tiny", "madx/q-source_d-source")], arms[("tiny", "madx/q-source_d-target")]
    assert (
        src["seeds"] == 3 and src["measures"]["neighbour_rho"] == 1.0 and src["measures"]["cka_mean"] == 1.0
    )
    assert -1 <= tgt["measures"]["neighbour_rho"] < 1 and 0 < tgt["measures"]["cka_mean"] < 1
    assert 0 <= tgt["measures"]["pair_auc"] <= 1 and "sd" in tgt
    cka = json.loads((out / "runs" / "tiny__madx@0.cka.json").read_text())
    assert cka["docs"] == 12 and cka["layers"] == 3  # embeddings + 2 layers of the tiny BERT
    assert cka["routings"]["source"] == [1.0, 1.0, 1.0] and set(cka["routings"]) >= {
        "target",
        "random",
        "none",
    }
    assert cka["routings"]["random"][0] == pytest.approx(1.0, abs=1e-3)  # embeddings: before the adapters
    for key in ("centroid_gap", "pair_auc", "neighbour_rho", "cka_mean"):
        check = a["checks"][key]
        assert check["pairs"] > 0 and (check["tau_within"] is None or -1 <= check["tau_within"] <= 1)
    report = (out / "report.md").read_text()
    assert "### Which measure predicts the ranking" in report and "### CKA per layer" in report


def test_dry_run_lists_seeds_controls_and_claims(design, capsys):
    from clir.cli.main import main

    cfg, out, _doc = design
    assert main(["experiment", "--config", str(cfg), "--out", str(out), "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "madx@0, madx@1, madx@2" in plan
    assert (
        "random-adapter           madx/q-source_d-random on every collection against madx/q-source_d-target"
        in plan
    )
    assert (
        "swap                     madx/q-source_d-source vs madx/q-source_d-target (lower); question sets: "
        in plan
    )
    assert "tinyq = tiny+tiny-again; 1 comparisons" in plan
    from clir.experiments import load_experiment_config, plan_grid

    only = plan_grid(load_experiment_config(cfg), out=out, only=["tiny/madx/q-source_d-target"]).selected
    assert [r.id for r in only] == [
        f"tiny/madx@{s}/q-source_d-target" for s in range(3)
    ]  # the arm: each seed
    one = plan_grid(load_experiment_config(cfg), out=out, only=["tiny/madx@1"]).selected
    assert len(one) == 5 and all(r.model.name == "madx@1" for r in one)  # 2 routings + 3 controls


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("model: madx, routing: {query: source, doc: random}", None),
        ("model: nope, routing: {query: source, doc: random}", r"controls\[c\]\.model 'nope' is not a model"),
        (
            "model: plain, routing: {query: source, doc: random}",
            r"model plain is full; routing controls need a madx model",
        ),
        (
            "model: madx, routing: {query: source, doc: target, doc_map: {de: xx}}",
            r"no language adapter for xx",
        ),
        (
            "model: madx, routing: {query: source, doc: source, doc_map: {de: ru}}",
            r"doc_map needs doc: target",
        ),
        ("model: madx, routing: {query: source, doc: target}", r"already a row of the grid"),
        (
            "model: madx, routing: {query: source, doc: random}, collections: [nope]",
            r"unknown collection\(s\) nope",
        ),
        ("model: madx, routing: {query: source, doc: random}, against: 'a b'", r"against 'a b'"),
    ],
)
def test_controls_are_checked_when_the_config_loads(tmp_path, change, message):
    from clir.errors import ClirError
    from clir.experiments import load_experiment_config

    text = f"""
name: c
collections: [{{source: sample, name: s}}]
models:
  - {{name: plain, model: x, mode: full}}
  - {{name: madx, model: y, mode: madx, overrides: {{language_adapters: {{en: new, de: new, ru: new}}}}}}
controls:
  - {{name: c, {change}}}
"""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    if message is None:
        assert load_experiment_config(path).controls[0].routing.doc == "random"
    else:
        with pytest.raises(ClirError, match=message):
            load_experiment_config(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("seeds: {arms: [0, 0]}", r"duplicate seed"),
        (
            "models: [{name: t, model: m/t, build: {config: c.yaml}}]\nseeds: {arms: [0, 1]}",
            r"must hold \{seed\}",
        ),
        ("models: [{name: t, model: 'm/{seed}/t'}]", r"holds \{seed\} but no seeds"),
        (
            "models: [{name: t, model: 'm/{seed}/t', seeds: [1], build: {config: c.yaml, args: [--seed, '3']}}]",
            r"--seed in args",
        ),
        ("claims: [{id: a, text: t, pairs: [[m, m]]}]", r"not a pair of two different rows"),
        ("claims: [{id: a, text: t, pairs: [[m, nope/q-source_d-target]]}]", r"names no model of the grid"),
        ("claims: [{id: a, text: t, pairs: [[m, m/q-source_d-source]], verdict: maybe}]", r"must be one of"),
        ("claims: [{id: a, text: t, pairs: [[m, m/q-source_d-source]]}]", r"at least 10,000 resamples"),
        ("seeds: {arms: [1, 2], shipped: {folder: f, seed: 0}}", r"shipped.seed 0 is not one of seeds.arms"),
        (
            "seeds: {arms: [1, 0], language_adapters: [0, 1], shipped: {folder: f, seed: 0}}",
            r"language-adapter seed 1",
        ),
    ],
)
def test_seeds_and_claims_are_checked_when_the_config_loads(tmp_path, change, message):
    from clir.errors import ClirError
    from clir.experiments import load_experiment_config

    models = "models: [{name: m, model: x}]\n" if not change.startswith("models:") else ""
    path = tmp_path / "c.yaml"
    path.write_text(f"name: c\ncollections: [{{source: sample}}]\n{models}{change}\n")
    with pytest.raises(ClirError, match=message):
        load_experiment_config(path)


def test_cka_routes_documents_by_the_configured_language(tiny_bert, tiny_collection, tmp_path):
    """A collection whose records name their language in another code (Tatoeba's "deu") is routed by the
    config's doc_lang, in the CKA analysis as in its index: d-target goes through the German adapter."""
    from clir.cli.main import main

    coll = tmp_path / "coded"
    coll.mkdir()
    for name in ("queries.tsv", "qrels.txt"):
        shutil.copy(tiny_collection / name, coll / name)
    recs = [json.loads(x) for x in (tiny_collection / "docs.jsonl").read_text().splitlines()]
    with open(coll / "docs.jsonl", "w", encoding="utf-8") as f:
        for r in recs:  # every record in a three-letter code (deu, ruu, ...): none names an adapter
            f.write(json.dumps({**r, "lang": r["lang"] + r["lang"][-1]}) + "\n")
    adapters = ", ".join(f"{lang}: new" for lang in LANGS)
    cfg = tmp_path / "coded.yaml"
    cfg.write_text(
        f"""
name: coded
collections: [{{source: {coll}, name: coded, doc_lang: de}}]
models:
  - {{name: madx, model: {tiny_bert}, overrides: {{adapter_mode: madx, language_adapters: {{{adapters}}}}}}}
routings: [{{query: source, doc: source}}, {{query: source, doc: target}}]
metrics: [mrr@100]
analysis: {{enabled: true, cka_docs: 12, neighbour_docs: 10}}
"""
    )
    assert main(["experiment", "--config", str(cfg), "--out", str(tmp_path / "out")]) == 0
    cka = json.loads((tmp_path / "out" / "runs" / "coded__madx.cka.json").read_text())
    # a fresh German adapter is near identity, but not the source adapter (which would give exactly 1.0)
    assert min(cka["routings"]["target"][1:]) < 1.0
