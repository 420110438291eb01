"""AdapterHub interoperability (clir/model/card.py, clir/model/folder.py): the task and language adapters clir
writes load with plain ``adapters`` (``model.load_adapter(path)`` on the same backbone) and give the hidden
states clir computes; every model and adapter folder clir writes has a README.md model card in the ecosystem's
layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

TEXTS = ["Der Hund schläft im Garten.", "Die Stadt liegt am Fluss.", "Ein kurzer Satz."]


def _card(folder: Path) -> tuple[dict, str]:
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def _language_adapter(tiny_bert: Path, head: Path, text: Path, out: Path, lang: str) -> Path:
    from clir.cli.main import main

    args = ["train-language-adapter", "--lang", lang, "--text", str(text), "--backbone", str(tiny_bert)]
    args += [
        "--head",
        str(head),
        "--out",
        str(out),
        "--max-steps",
        "3",
        "--batch-size",
        "4",
        "--dev-fraction",
        "0.3",
        "--threads",
        "1",
    ]
    assert main(args) == 0
    return out


@pytest.fixture(scope="module")
def madx_folder(tiny_bert, tiny_head, tiny_collection, tmp_path_factory):
    """A madx model folder (trained-looking task adapter on English, German adapter by MLM) and its inputs."""
    from clir.model.encoder import load_encoder

    tmp = tmp_path_factory.mktemp("adapterhub")
    la = {
        lang: _language_adapter(tiny_bert, tiny_head(0.3), tiny_collection, tmp / f"lang-{lang}", lang)
        for lang in ("en", "de")
    }
    settings = {"adapter_mode": "madx", "pooling": "mean", "normalize": True}
    enc = load_encoder(str(tiny_bert), {**settings, "language_adapters": {k: str(v) for k, v in la.items()}})
    enc.load_language_adapter("de")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a fresh task adapter is the identity: give it weights that change the states
        for name, p in enc.query_model.named_parameters():
            if ".task." in name:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    folder = enc.save(tmp / "model")
    return folder, la


def _plain(tiny_bert: Path, folders: list[Path]):
    """The backbone with ``adapters`` alone: no clir in the loop."""
    import adapters
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(tiny_bert))
    adapters.init(model)
    names = [model.load_adapter(str(f)) for f in folders]
    return model.eval(), names


def test_adapters_load_with_plain_adapters_and_give_clirs_hidden_states(
    madx_folder, tiny_bert, one_torch_thread
):
    from adapters.composition import Stack

    from clir.config import Routing
    from clir.model.encoder import load_encoder

    folder, la = madx_folder
    model, names = _plain(
        tiny_bert, [folder / "adapters" / "task", folder / "adapters" / "lang_en", la["de"]]
    )
    assert names == ["task", "en", "de"]  # each folder names itself (adapter_config.json)
    enc = load_encoder(str(folder), {"precision": "fp32"})  # the same folder, inside clir (no bf16 autocast)
    for side, lang, stack in (("query", "en", Stack("en", "task")), ("passage", "de", Stack("de", "task"))):
        batch = enc.tokenize(TEXTS, side)
        inside = enc.query_model
        inside.active_adapters = enc.adapter_setup(side, lang, Routing(doc="target"))
        assert str(inside.active_adapters) == str(stack)
        with torch.no_grad():
            ours = inside(**batch).last_hidden_state
        vectors = enc.encode(TEXTS, side, lang, routing=Routing(doc="target"))
        model.active_adapters = stack
        with torch.no_grad():
            theirs = model(**batch).last_hidden_state
            model.active_adapters = None
            bare = model(**batch).last_hidden_state
        torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-6)
        assert (theirs - bare).abs().max() > 1e-3  # the adapters do change the states
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = torch.nn.functional.normalize((theirs * mask).sum(1) / mask.sum(1), dim=-1)
        torch.testing.assert_close(torch.from_numpy(vectors), pooled, rtol=0, atol=1e-5)


def test_a_task_mode_folder_loads_the_same(tiny_bert, tmp_path, one_torch_thread):
    from clir.model.encoder import load_encoder

    enc = load_encoder(str(tiny_bert), {"adapter_mode": "task", "pooling": "cls"})
    with torch.no_grad():
        for name, p in enc.query_model.named_parameters():
            if ".task." in name:
                p.add_(0.05)
    folder = enc.save(tmp_path / "task-model")
    model, names = _plain(tiny_bert, [folder / "adapters" / "task"])
    model.active_adapters = "task"
    inside = load_encoder(str(folder), {"precision": "fp32"})
    batch = inside.tokenize(TEXTS, "passage")
    with torch.no_grad():
        torch.testing.assert_close(
            model(**batch).last_hidden_state[:, 0],
            torch.from_numpy(inside.encode(TEXTS, "passage")),
            rtol=0,
            atol=1e-5,
        )
    meta, body = _card(folder)
    assert meta["clir"]["adapter_mode"] == "task" and meta["library_name"] == "adapter-transformers"
    assert 'task_adapter = model.load_adapter("adapters/task")' in body and "Stack(task_adapter)" in body


def test_model_and_adapter_folders_have_cards(madx_folder, tiny_bert):
    folder, la = madx_folder
    meta, body = _card(folder)
    assert meta["tags"][:2] == ["adapter-transformers", "adapters"] and "bert" in meta["tags"]
    assert meta["library_name"] == "adapter-transformers" and "base_model" not in meta  # a local backbone
    clir = meta["clir"]
    assert clir["kind"] == "model" and clir["adapter_mode"] == "madx" and clir["source_lang"] == "en"
    assert clir["adapter_config"] == {"config": "seq_bn", "reduction_factor": 16, "non_linearity": "relu"}
    assert clir["routing"] == {"query": "source", "doc": "source"} and meta["language"] == ["de", "en"]
    assert clir["encoder"]["pooling"] == "mean"
    for heading in ("## Usage", "## Architecture & Training", "## Evaluation results", "## Citation"):
        assert heading in body
    assert 'en_adapter = model.load_adapter("adapters/lang_en")' in body
    assert "Stack(en_adapter, task_adapter)" in body
    task_meta, task_body = _card(folder / "adapters" / "task")
    assert (
        task_meta["clir"]["kind"] == "task adapter"
        and 'en_adapter = model.load_adapter("../lang_en")' in task_body
    )
    de_meta, _ = _card(folder / "adapters" / "lang_de")  # copied in with its training record
    assert de_meta["clir"]["kind"] == "language adapter" and "dev_mlm_loss" in de_meta["clir"]["metrics"]

    meta, body = _card(la["de"])  # the folder `clir train-language-adapter` wrote
    info = json.loads((la["de"] / "clir_language_adapter.json").read_text())
    assert meta["language"] == ["de"] and "mad-x" in meta["tags"]
    assert meta["clir"]["adapter_config"]["config"] == "seq_bn_inv"
    assert meta["clir"]["training"]["steps"] == 3 and meta["clir"]["training"]["batch_size"] == 4
    assert meta["clir"]["metrics"]["dev_mlm_loss"] == info["dev_loss"]
    assert meta["clir"]["metrics"]["no_adapter_dev_mlm_loss"] == info["dev_loss_no_adapter"]
    assert meta["clir"]["metrics"]["unigram_dev_mlm_loss"] == info["dev_loss_unigram"]
    assert "Stack(de, <task adapter>)" in meta["clir"]["routing"]["composition"]
    assert 'de_adapter = model.load_adapter(".")' in body
    from clir.portable import host_paths

    for f in (folder, folder / "adapters" / "task", la["de"]):
        assert host_paths((f / "README.md").read_text()) == []  # cards travel: no host folders


def test_cards_of_trained_models_name_data_steps_and_licence(tiny_bert, tiny_collection, tmp_path):
    from clir.cli.main import main
    from clir.model.card import data_licence, hub_backbone

    triples = tmp_path / "t.jsonl"
    lines = [{"query": f"q {i}", "positive": f"p {i}", "negative": f"n {i}"} for i in range(8)]
    triples.write_text("".join(json.dumps(x) + "\n" for x in lines))
    cfg = tmp_path / "train.yaml"
    cfg.write_text(
        f"model: {{backbone: {tiny_bert}, adapter_mode: full, pooling: mean}}\n"
        f"data: {{triples: {triples}}}\noptim: {{batch_size: 4, max_steps: 2, threads: 1}}\n"
    )
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "full")]) == 0
    meta, body = _card(tmp_path / "full")
    assert meta["library_name"] == "transformers" and "adapter-transformers" not in meta["tags"]
    assert meta["clir"]["training"]["steps"] == 2 and meta["clir"]["training"]["batch_size"] == 4
    assert "final_train_loss" in meta["clir"]["metrics"] and "holds full weights" in body
    assert data_licence("irds:clir/wikiqa/train-triples").startswith("Microsoft Research")
    assert data_licence("irds:clir/ud/de").startswith("CC BY-SA 4.0") and data_licence("x.jsonl") is None
    assert hub_backbone("multilingual-e5-small") == "intfloat/multilingual-e5-small"
    assert hub_backbone("bert-base-multilingual-cased") == "bert-base-multilingual-cased"
    assert hub_backbone("org/model") == "org/model" and hub_backbone(str(tiny_bert)) is None
