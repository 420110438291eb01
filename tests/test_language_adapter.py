"""`clir train-language-adapter` on a tiny random BERT: the dev slice is held out, the head-only baseline
trains no adapter weight, dev losses land in the info file, and an interrupted run resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clir.errors import ClirError
from clir.testing import _LINES
from clir.train import mlm
from clir.train.language_adapter import INFO_FILE, LanguageAdapterArgs, train_language_adapter

# distinct lines (the dev slice is chosen by content, so duplicates would fall on one side together)
LINES = [f"{s} ({i})" for i in range(12) for s in _LINES["de"]]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "de.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return path


def args(tiny_bert, text_file, out, **kw) -> LanguageAdapterArgs:
    base = dict(
        lang="de",
        text=str(text_file),
        backbone=str(tiny_bert),
        out=str(out),
        max_steps=12,
        batch_size=8,
        lr=3e-3,
        dev_fraction=0.2,
        checkpoint_every=5,
        log_every=4,
    )
    return LanguageAdapterArgs(**{**base, **kw})


def test_dev_split_is_seeded_disjoint_and_capped():
    split = mlm.DevSplit(0.2, seed=7, limit=1000)
    dev = split.dev(LINES)
    train = list(split.train(LINES))
    assert dev and train and not set(dev) & set(train)
    assert len(dev) + len(train) == len(LINES)
    assert 0.05 < len(dev) / len(LINES) < 0.4
    assert split.dev(LINES) == dev  # same seed, same slice
    assert mlm.DevSplit(0.2, seed=8, limit=1000).dev(LINES) != dev
    assert mlm.DevSplit(0.2, seed=7, limit=3).dev(LINES) == dev[:3]


def test_masking_follows_bert_and_its_generator(tiny_bert):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    enc = mlm.tokenize(tok, LINES[:32], 64)
    a = mlm.mask_tokens(enc, tok, 0.15, torch.Generator().manual_seed(1))
    b = mlm.mask_tokens(enc, tok, 0.15, torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    ids, labels = a
    masked = labels != -100
    special = enc["special_tokens_mask"].bool() | (enc["attention_mask"] == 0)
    assert not (masked & special).any()  # never a special token or padding
    assert 0.08 < masked.sum() / (~special).sum() < 0.25
    assert torch.equal(labels[masked], enc["input_ids"][masked])  # labels are the original tokens
    share_mask = (ids[masked] == tok.mask_token_id).float().mean()
    assert 0.6 < share_mask < 0.95


def test_dev_loss_on_held_out_lines_only_and_head_only_baseline(tiny_bert, text_file, tmp_path, monkeypatch):
    seen: list[list[str]] = []
    real_tokenize = mlm.tokenize

    def spy(tokenizer, texts, max_length):
        seen.append(list(texts))
        return real_tokenize(tokenizer, texts, max_length)

    monkeypatch.setattr(mlm, "tokenize", spy)
    a = args(tiny_bert, text_file, tmp_path / "de")
    res = train_language_adapter(a, show_progress=False)
    dev = set(mlm.DevSplit(a.dev_fraction, a.seed, a.dev_max).dev(LINES))
    dev_calls = [b for b in seen if set(b) <= dev]
    train_calls = [b for b in seen if not set(b) <= dev]
    assert sum(len(b) for b in dev_calls) == len(dev) == res.dev_texts
    # both phases train on the same budget of texts, none of them held out
    assert len(train_calls) == 2 * a.max_steps
    assert all(not set(b) & dev for b in train_calls)

    info = json.loads((tmp_path / "de" / INFO_FILE).read_text())
    assert info["dev"]["texts"] == len(dev) and info["steps"] == a.max_steps
    assert info["dev_loss"] == pytest.approx(res.dev_loss, abs=1e-4)
    base = info["baseline"]
    assert base["phase"] == "head-only" and base["steps"] == a.max_steps
    assert base["dev_loss"] == pytest.approx(res.baseline_dev_loss, abs=1e-4)
    # the head alone trains far fewer weights than adapter + head
    assert 0 < base["trainable_parameters"] < info["adapter_run"]["trainable_parameters"]
    assert info["seconds"] > 0 and not (tmp_path / "de.partial").exists()


def test_head_only_phase_trains_no_adapter_weight(tiny_bert):
    from clir.train.language_adapter import _load_model, _Phase

    a = LanguageAdapterArgs(lang="de", text="x", backbone=str(tiny_bert), out="o")
    model, fresh = _load_model(a, str(tiny_bert), _Phase("head-only", Path("h")), torch.device("cpu"))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert fresh and trainable
    assert not any("adapter" in n for n in trainable)
    assert all(not n.startswith(model.base_model_prefix + ".") for n in trainable)
    model, _ = _load_model(a, str(tiny_bert), _Phase("adapter", Path("a")), torch.device("cpu"))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(".adapters.de." in n for n in trainable) and any("invertible" in n for n in trainable)
    # the head starts from the same seeded weights in both phases
    heads = [
        dict(_load_model(a, str(tiny_bert), _Phase(p, Path(p)), torch.device("cpu"))[0].named_parameters())
        for p in ("adapter", "head-only")
    ]
    head_names = [n for n in heads[1] if not n.startswith("bert.")]
    assert head_names and all(torch.equal(heads[0][n], heads[1][n]) for n in head_names)


def test_interrupted_run_resumes_to_the_same_adapter(tiny_bert, text_file, tmp_path, monkeypatch):
    whole = train_language_adapter(args(tiny_bert, text_file, tmp_path / "whole"), show_progress=False)

    calls = {"n": 0}
    real_clip = torch.nn.utils.clip_grad_norm_

    def crash_at_step_8(params, max_norm):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return real_clip(params, max_norm)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", crash_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        train_language_adapter(args(tiny_bert, text_file, tmp_path / "cut"), show_progress=False)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", real_clip)
    assert (tmp_path / "cut.partial" / "adapter" / "checkpoints").is_dir()
    with pytest.raises(ClirError, match="--resume"):
        train_language_adapter(args(tiny_bert, text_file, tmp_path / "cut"), show_progress=False)
    with pytest.raises(ClirError, match="other settings"):
        train_language_adapter(
            args(tiny_bert, text_file, tmp_path / "cut", lr=1e-3, resume=True), show_progress=False
        )
    resumed = train_language_adapter(
        args(tiny_bert, text_file, tmp_path / "cut", resume=True), show_progress=False
    )
    assert resumed.dev_loss == pytest.approx(whole.dev_loss, abs=1e-6)
    assert resumed.baseline_dev_loss == pytest.approx(whole.baseline_dev_loss, abs=1e-6)
    a = json.loads((tmp_path / "whole" / INFO_FILE).read_text())["loss"]
    b = json.loads((tmp_path / "cut" / INFO_FILE).read_text())["loss"]
    assert [r["step"] for r in a] == [r["step"] for r in b]
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], abs=1e-6)
