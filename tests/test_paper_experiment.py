"""The paper experiment's configs: three arms on one budget, the grid that trains what is missing and resumes
what was interrupted."""

from __future__ import annotations

from pathlib import Path

import pytest

from clir.config import load_train_config, to_dict
from clir.experiments.grid import load_experiment_config
from clir.experiments.plan import plan_grid

REPO = Path(__file__).resolve().parents[1]
ARMS = ("full", "task", "madx")


def _arm(mode: str, monkeypatch):
    monkeypatch.setenv("CLIR_E5_SMALL", "multilingual-e5-small")
    return load_train_config(REPO / f"configs/train/e5-small-{mode}-wikiqa.yaml")


def test_the_three_arms_share_one_budget(monkeypatch):
    cfgs = {m: _arm(m, monkeypatch) for m in ARMS}
    budgets = {m: (to_dict(c.data), {**to_dict(c.optim)}) for m, c in cfgs.items()}
    assert budgets["full"] == budgets["task"] == budgets["madx"]  # triples, order, steps, batch, seed
    assert all(c.optim.lr is None for c in cfgs.values())  # each mode's default learning rate
    assert {m: c.lr for m, c in cfgs.items()} == {"full": 2e-5, "task": 1e-4, "madx": 1e-4}
    assert {m: c.model.adapter_mode for m, c in cfgs.items()} == {m: m for m in ARMS}
    enc = {
        m: {
            k: v
            for k, v in to_dict(c.model).items()
            if k not in ("adapter_mode", "task_adapter", "language_adapters")
        }
        for m, c in cfgs.items()
    }
    assert enc["full"] == enc["task"] == enc["madx"]  # same backbone, pooling, prefixes
    assert cfgs["task"].model.task_adapter == cfgs["madx"].model.task_adapter
    assert set(cfgs["madx"].model.language_adapters) == {"en"}  # trained on the English adapter only


def test_an_interrupted_model_build_is_resumed(tiny_bert, tiny_collection, tmp_path):
    from clir.config import ExperimentConfig, from_dict

    folder = tmp_path / "arm"
    folder.mkdir()
    (folder / "train_config.yaml").write_text("model: {}\n")  # what an unfinished `clir train` leaves
    train_cfg = tmp_path / "train.yaml"
    train_cfg.write_text(
        f"model: {{backbone: {tiny_bert}, adapter_mode: task}}\ndata: {{triples: x.jsonl}}\n"
    )
    cfg = from_dict(
        ExperimentConfig,
        {
            "name": "t",
            "collections": [{"source": str(tiny_collection), "name": "tiny"}],
            "models": [
                {"name": "arm", "model": str(folder), "mode": "task", "build": {"config": str(train_cfg)}}
            ],
        },
    )
    plan = plan_grid(cfg, out=tmp_path / "out")
    (model,) = plan.models
    assert not model.exists()
    command = model.build.command
    assert command[:3] == ("train", "--config", str(train_cfg)) and "--resume" in command


def test_the_paper_configs_name_only_ids_repo_paths_and_models():
    """Reproducible anywhere: no ../shared, no CLIR_SHARED; data comes through registered ir_datasets ids."""
    files = [REPO / "configs/eval/paper-small.yaml"] + [
        REPO / f"configs/train/e5-small-{m}-wikiqa.yaml" for m in ARMS
    ]
    for f in files:
        text = f.read_text(encoding="utf-8")
        assert "../shared" not in text and "CLIR_SHARED" not in text, f
    cfg = load_experiment_config(REPO / "configs/eval/paper-small.yaml")
    assert {a.lang: a.text for a in cfg.adapters} == {
        x: f"irds:clir/ud/{x}" for x in ("en", "de", "ru", "zh", "fa")
    }
    assert all(c.source.startswith("irds:clir/") for c in cfg.collections)
    for m in ARMS:
        text = (REPO / f"configs/train/e5-small-{m}-wikiqa.yaml").read_text(encoding="utf-8")
        assert "triples: irds:clir/wikiqa/train-triples" in text


@pytest.mark.shared
def test_paper_small_plans_every_row_and_build(raw_irds_home, monkeypatch):
    monkeypatch.delenv("CLIR_SHARED", raising=False)
    monkeypatch.chdir(REPO)
    cfg = load_experiment_config(REPO / "configs/eval/paper-small.yaml")
    assert cfg.significance.correction == "holm" and cfg.analysis.enabled
    plan = plan_grid(cfg, out=REPO / ".cache" / "paper-small-plan")
    assert plan.irds_missing == {}  # every input found under IR_DATASETS_HOME, training data included
    variants = {r.variant for r in plan.rows}
    assert variants == {
        "e5",
        "full",
        "task",
        "madx/q-source_d-source",
        "madx/q-source_d-target",
        "madx/q-source_d-none",
    }
    names = {c.name for c in plan.collections}
    assert {"xquad-r-de", "xquad-r-ru", "xquad-r-zh", "tatoeba-pes", "xquad-r-mlir"} <= names
    assert sorted(a.lang for a in cfg.adapters) == ["de", "en", "fa", "ru", "zh"]
    assert all(a.text == f"irds:clir/ud/{a.lang}" for a in cfg.adapters)


def test_builds_run_in_parallel_workers(tiny_bert, tiny_collection, tmp_path):
    """Two language adapters built by two worker processes, then the madx rows that use them."""
    import json

    from clir.cli.main import main

    la = {lang: tmp_path / "adapters" / lang for lang in ("de", "fr")}
    others = ", ".join(f"{lang}: new" for lang in ("en", "ru", "zh", "fa"))
    cfg = tmp_path / "par.yaml"
    cfg.write_text(
        f"""
name: par
collections: [{{source: {tiny_collection}, name: tiny}}]
mlm_head: {{out: {tmp_path / "head"}, backbone: {tiny_bert}, texts: [de={tiny_collection}], max_steps: 2, args: [--batch-size, "4", --dev-fraction, "0.3", --threads, "1"]}}
adapters:
  - {{lang: de, out: {la["de"]}, text: {tiny_collection}, backbone: {tiny_bert}, max_steps: 2, args: [--batch-size, "4", --dev-fraction, "0.3", --threads, "1"]}}
  - {{lang: fr, out: {la["fr"]}, text: {tiny_collection}, backbone: {tiny_bert}, max_steps: 2, args: [--batch-size, "4", --dev-fraction, "0.3", --threads, "1"]}}
models:
  - name: madx
    model: {tiny_bert}
    overrides:
      adapter_mode: madx
      language_adapters: {{de: {la["de"]}, fr: {la["fr"]}, {others}}}
routings: [{{query: source, doc: target}}]
metrics: [mrr@100]
build_workers: 2
"""
    )
    assert main(["experiment", "--config", str(cfg), "--out", str(tmp_path / "out")]) == 0
    for lang, folder in la.items():
        info = json.loads((folder / "clir_language_adapter.json").read_text())
        assert info["lang"] == lang and info["head"] == str((tmp_path / "head").resolve())
        head = json.loads((tmp_path / "head" / "clir_mlm_head.json").read_text())
        assert info["head_sha256"] == head["head_sha256"]  # every adapter trained against the one head
        assert info["dev_loss_no_adapter"] > 0 and info["dev_loss_unigram"] > 0
    manifest = json.loads(
        (tmp_path / "out" / "indexes" / "tiny__madx__d-target" / "manifest.json").read_text()
    )
    assert {"de", "fr"} <= set(manifest["encoder"]["adapters"])


def test_paper_small_dry_run_lists_the_training_data_it_lacks(tmp_path, monkeypatch):
    """Offline with nothing placed: the plan names every upstream file, training text and triples included."""
    from clir.experiments.plan import format_plan

    monkeypatch.setenv("IR_DATASETS_HOME", str(tmp_path / "empty"))
    monkeypatch.chdir(REPO)
    plan = plan_grid(load_experiment_config(REPO / "configs/eval/paper-small.yaml"), out=tmp_path / "out")
    assert {f"clir/ud/{x}" for x in ("en", "de", "ru", "zh", "fa")} <= set(plan.irds_missing)
    assert "clir/wikiqa/train-triples" in plan.irds_missing  # the arms' triples, read by `clir train`
    text = format_plan(plan)
    home = tmp_path / "empty" / "clir"
    assert f"{home}/castorini-data/WikiQA/train/sim.txt" in text
    assert text.count("WikiQA/train/sim.txt (from") == 1  # one line per file, whichever parts read it
    assert f"{home}/ud/UD_German-PUD/de_pud-ud-test.conllu" in text
    assert "UniversalDependencies/UD_German-PUD/ff80846a/de_pud-ud-test.conllu" in text


@pytest.mark.shared
def test_paper_small_v2_plans_seeds_controls_and_claims(
    shared_dir, raw_irds_home, tmp_path, monkeypatch, capsys
):
    from clir.cli.main import main

    monkeypatch.chdir(REPO)
    cfg = load_experiment_config(REPO / "configs/eval/paper-small-v2.yaml")
    assert cfg.seeds.arms == [0, 1, 2] and len(cfg.seeds.language_adapters) >= 2
    assert min(cfg.significance.n_permutations, cfg.significance.n_resamples) >= 10000
    plan = plan_grid(cfg, out=tmp_path / "out")
    seeds = {}
    for m in plan.models:
        seeds.setdefault(m.arm, []).append(m.seed)
    assert all(len(seeds[arm]) >= 3 for arm in ARMS) and seeds["e5"] == [None]
    madx = {m.seed: m for m in plan.models if m.arm == "madx"}
    assert [madx[s].lang_seed for s in (0, 1, 2)] == [0, 1, 0]  # seed i <- language seed i mod 2
    shipped = cfg.seeds.shipped
    assert shipped is not None and madx[0].folder == (REPO / shipped.folder / "e5-madx").resolve()
    assert madx[1].settings["language_adapters"]["de"].endswith("shipped/paper-small-v2/seed-1/lang/de")
    # madx@2 is committed, trained on the seed-0 language adapters it is evaluated with
    assert madx[2].exists() and madx[2].settings["language_adapters"]["de"].endswith(
        f"{shipped.folder}/lang/de"
    )
    assert {a.seed for a in plan.adapters} == {0, 1} and len(plan.adapters) == 10
    variants = {r.arm_variant for r in plan.rows}
    for v in (
        "madx/q-source_d-random",
        "madx/q-none_d-none",
        "madx/q-source_d-target.en-as-de",
        "task",
        "e5",
    ):
        assert v in variants
    en_rows = {r.arm_variant for r in plan.rows if r.collection.name == "xquad-r-en"}
    assert {"madx/q-source_d-source", "madx/q-source_d-target.en-as-de"} <= en_rows  # English, then German
    # the paper's three claims carry the lead's verdicts from the committed run
    verdicts = {c.id: c.verdict for c in cfg.claims}
    assert verdicts["adapters-beat-full"] == "not testable with this backbone"
    assert verdicts["swap-hurts"] is not None and verdicts["stack-mismatch-hurts"] is not None

    def tree() -> list[Path]:
        return sorted((REPO / "models").rglob("*")) if (REPO / "models").exists() else []

    before = tree()
    assert main(["experiment", "--config", "configs/eval/paper-small-v2.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "madx@0 <- lang seed 0, madx@1 <- lang seed 1, madx@2 <- lang seed 0" in out
    assert "english-adapter-cost     task vs madx/q-source_d-source (lower)" in out
    assert "xquad-r = xquad-r-de+xquad-r-ru+xquad-r-zh+xquad-r-mlir+xquad-r-articles-de" in out
    assert tree() == before  # a dry run builds nothing
