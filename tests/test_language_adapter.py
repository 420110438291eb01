"""Language adapters the MAD-X way, on tiny random BERTs: one frozen MLM head shared by every adapter of a
backbone (``head_sha256``), the invertible adapter's inverse before the decoder, dev losses beside the
no-adapter and unigram references, packed batches equal to padded ones, and an exact resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from clir.errors import ClirError
from clir.testing import _LINES
from clir.train import mlm
from clir.train.head_training import MlmHeadArgs, train_mlm_head
from clir.train.language_adapter import INFO_FILE, LanguageAdapterArgs, train_language_adapter
from clir.train.mlm_head import HEAD_INFO, attach_inverse, head_module, head_sha256, load_mlm

# distinct lines (the dev slice is chosen by content, so duplicates would fall on one side together)
LINES = {lang: [f"{s} ({i})" for i in range(12) for s in _LINES[lang]] for lang in ("de", "en", "ru")}
DEV = mlm.DevSettings(fraction=0.2, seed=0, limit=500)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mono")
    out = {}
    for lang, lines in LINES.items():
        out[lang] = root / f"{lang}.txt"
        out[lang].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def head(tiny_bert, texts, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("head") / "head"
    train_mlm_head(
        MlmHeadArgs(
            texts=[f"{lang}={p}" for lang, p in texts.items()],
            backbone=str(tiny_bert),
            out=str(out),
            max_steps=15,
            batch_size=8,
            lr=3e-3,
            dev=DEV,
        ),
        show_progress=False,
    )
    return out


def args(tiny_bert, texts, head, out, lang="de", **kw) -> LanguageAdapterArgs:
    base = dict(
        lang=lang,
        text=str(texts[lang]),
        backbone=str(tiny_bert),
        head=str(head) if head else None,
        out=str(out),
        max_steps=12,
        batch_size=8,
        lr=3e-3,
        dev=DEV,
        checkpoint_every=5,
        log_every=4,
    )
    return LanguageAdapterArgs(**{**base, **kw})


def test_dev_split_is_seeded_disjoint_and_capped():
    lines = LINES["de"]
    split = mlm.DevSplit(0.2, seed=7, limit=1000)
    dev = split.dev(lines)
    train = list(split.train(lines))
    assert dev and train and not set(dev) & set(train)
    assert len(dev) + len(train) == len(lines)
    assert 0.05 < len(dev) / len(lines) < 0.4
    assert split.dev(lines) == dev  # same seed, same slice
    assert mlm.DevSplit(0.2, seed=8, limit=1000).dev(lines) != dev
    assert mlm.DevSplit(0.2, seed=7, limit=3).dev(lines) == dev[:3]


def test_masking_follows_bert_and_its_generator(tiny_bert):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    enc = mlm.tokenize(tok, LINES["de"][:32], 64)
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


class _ToyTokenizer:
    """Whitespace tokens with fixed ids: the unigram reference by hand."""

    all_special_ids = [0]
    vocab = {"a": 1, "b": 2, "c": 3, "d": 4}

    def __len__(self) -> int:
        return 5

    def __call__(self, texts, truncation=True, max_length=128):
        return {"input_ids": [[0, *(self.vocab[w] for w in t.split())][:max_length] for t in texts]}


def test_unigram_reference_by_hand():
    tok = _ToyTokenizer()
    train = ["a a b", "a c"]  # counts a=3 b=1 c=1 d=0, 5 tokens (the special 0 is left out)
    dev = [mlm.DevBatch(None, None, torch.tensor([[-100, 1, 4], [2, -100, -100]]))]  # labels a, d, b
    loss, k = mlm.unigram_loss(tok, train, dev, max_length=16)
    assert k in mlm.UNIGRAM_SMOOTHING

    def by_hand(k: float) -> float:
        p = {t: (c + k) / (5 + 5 * k) for t, c in {1: 3, 2: 1, 3: 1, 4: 0}.items()}
        return -(math.log(p[1]) + math.log(p[4]) + math.log(p[2])) / 3

    assert loss == pytest.approx(by_hand(k))
    assert loss == pytest.approx(min(by_hand(x) for x in mlm.UNIGRAM_SMOOTHING))  # the strongest table


def test_logits_go_through_the_inverse_before_the_decoder(tiny_bert, head):
    import adapters

    model, _ = load_mlm(str(tiny_bert), str(head))
    adapters.init(model)
    model.add_adapter("de", config="seq_bn_inv")
    model.train_adapter("de")
    model.eval()
    hidden = torch.randn(5, model.config.hidden_size)
    h = head_module(model)
    with torch.no_grad():  # a head only a few steps out of its zero start: give its transform some scale
        h.predictions.transform.LayerNorm.weight.fill_(1.0)
    decoder = model.get_output_embeddings()
    transformed = h.predictions.transform(hidden)
    inverse = model.base_model.invertible_adapters["de"](transformed.unsqueeze(0), rev=True)[0]
    assert not torch.allclose(inverse, transformed)  # the inverse is not the identity
    without = h(hidden)
    with torch.no_grad():
        expected = decoder(inverse)  # before the hook: it would apply the inverse to this call too
    attach_inverse(model)
    attach_inverse(model)  # once only
    with torch.no_grad():
        logits = h(hidden)
        assert torch.allclose(logits, expected, atol=1e-6), (logits - expected).abs().max()
        assert not torch.allclose(logits, without, atol=1e-3)
    model.set_active_adapters(None)  # no active invertible adapter: the head as it is
    with torch.no_grad():
        assert torch.allclose(h(hidden), without, atol=1e-6)


def test_packed_batches_equal_padded_ones(tiny_bert, head):
    import adapters
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    model, _ = load_mlm(str(tiny_bert), str(head))
    adapters.init(model)
    attach_inverse(model)
    model.add_adapter("de", config="seq_bn_inv")
    model.train_adapter("de")
    model.eval()
    assert mlm.packs(model, tok, torch.device("cpu"))
    enc = mlm.tokenize(tok, LINES["de"][:16], 64)
    ids, labels = mlm.mask_tokens(enc, tok, 0.3, torch.Generator().manual_seed(0))
    h = head_module(model)
    losses, grads = [], []
    for packed in (False, True):
        model.zero_grad()
        loss, n = mlm.masked_loss(model, h, ids, enc["attention_mask"], labels, packed=packed)
        loss.backward()
        losses.append((float(loss.detach()), n))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    assert losses[0][1] == losses[1][1]
    assert losses[0][0] == pytest.approx(losses[1][0], rel=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_head_trains_alone_and_holds_out_every_dev_slice(tiny_bert, texts, head, monkeypatch):
    info = json.loads((head / HEAD_INFO).read_text())
    assert set(info["languages"]) == set(LINES) and info["dev_split"] == DEV.__dict__
    for lang, rec in info["languages"].items():
        assert rec["dev_texts"] == len(DEV.split().dev(LINES[lang]))
        assert rec["dev_loss"] > 0 and rec["dev_loss_unigram"] > 0
    # reloaded, it is the same head, frozen, over the unchanged backbone
    model, got = load_mlm(str(tiny_bert), str(head))
    assert got.sha256 == info["head_sha256"] == head_sha256(model)
    assert not any(p.requires_grad for p in model.parameters())
    fresh, fresh_info = load_mlm(str(tiny_bert), fresh_ok=True)
    assert fresh_info.sha256 != got.sha256  # the head trained
    emb = model.get_input_embeddings().weight
    assert torch.equal(emb, fresh.get_input_embeddings().weight)  # the backbone did not
    assert model.get_output_embeddings().weight is emb  # the decoder stays tied to it
    with pytest.raises(ClirError, match="train-mlm-head"):
        load_mlm(str(tiny_bert))  # a headless backbone needs the shared head


def test_a_head_for_another_backbone_is_refused(tiny_bert, head, tmp_path):
    import shutil

    from transformers import BertModel

    other = tmp_path / "other"
    shutil.copytree(tiny_bert, other)
    model = BertModel.from_pretrained(tiny_bert)
    with torch.no_grad():
        model.get_input_embeddings().weight.add_(0.01)  # same shapes, other word embeddings
    model.save_pretrained(other)
    with pytest.raises(ClirError, match="head_sha256 does not match"):
        load_mlm(str(other), str(head))


def test_adapters_share_the_head_and_record_their_references(tiny_bert, texts, head, tmp_path):
    sha = json.loads((head / HEAD_INFO).read_text())["head_sha256"]
    infos = {}
    for lang in ("de", "ru"):
        res = train_language_adapter(args(tiny_bert, texts, head, tmp_path / lang, lang), show_progress=False)
        infos[lang] = json.loads((tmp_path / lang / INFO_FILE).read_text())
        assert res.head_sha256 == sha == infos[lang]["head_sha256"]
    de = infos["de"]
    for key in ("dev_loss", "dev_loss_no_adapter", "dev_loss_unigram", "seed", "steps", "train_texts"):
        assert key in de
    assert de["train_texts"] == len(LINES["de"]) - de["dev"]["texts"]
    # the no-adapter reference is the head's own dev loss on the same masked tokens
    head_info = json.loads((head / HEAD_INFO).read_text())
    assert de["dev_loss_no_adapter"] == pytest.approx(head_info["languages"]["de"]["dev_loss"], abs=1e-4)
    assert de["dev_loss_unigram"] == pytest.approx(head_info["languages"]["de"]["dev_loss_unigram"], abs=1e-4)
    assert de["trainable_parameters"] > 0 and de["packed"] is True


def test_adapters_of_different_heads_are_refused_together(tiny_bert, texts, head, tmp_path):
    from clir.model import load_encoder

    other_head = tmp_path / "head2"
    train_mlm_head(
        MlmHeadArgs(
            texts=[f"de={texts['de']}"], backbone=str(tiny_bert), out=str(other_head), max_steps=3, dev=DEV
        ),
        show_progress=False,
    )
    train_language_adapter(
        args(tiny_bert, texts, head, tmp_path / "en", "en", max_steps=2), show_progress=False
    )
    train_language_adapter(
        args(tiny_bert, texts, other_head, tmp_path / "de", "de", max_steps=2), show_progress=False
    )
    train_language_adapter(
        args(tiny_bert, texts, head, tmp_path / "ru", "ru", max_steps=2), show_progress=False
    )
    la = {lang: str(tmp_path / lang) for lang in ("en", "de", "ru")}
    enc = load_encoder(str(tiny_bert), {"adapter_mode": "madx", "language_adapters": la, "precision": "fp32"})
    enc.load_language_adapter("ru")  # same head as en: fine
    with pytest.raises(ClirError, match="different MLM heads"):
        enc.load_language_adapter("de")


def test_a_head_held_out_another_dev_slice_is_refused(tiny_bert, texts, head, tmp_path):
    a = args(tiny_bert, texts, head, tmp_path / "de", dev=mlm.DevSettings(fraction=0.2, seed=5))
    with pytest.raises(ClirError, match="dev slice"):
        train_language_adapter(a, show_progress=False)


def test_interrupted_run_resumes_to_the_same_adapter(tiny_bert, texts, head, tmp_path, monkeypatch):
    whole = train_language_adapter(args(tiny_bert, texts, head, tmp_path / "whole"), show_progress=False)

    calls = {"n": 0}
    real_clip = torch.nn.utils.clip_grad_norm_

    def crash_at_step_8(params, max_norm):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return real_clip(params, max_norm)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", crash_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        train_language_adapter(args(tiny_bert, texts, head, tmp_path / "cut"), show_progress=False)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", real_clip)
    assert (tmp_path / "cut.partial" / "adapter" / "checkpoints").is_dir()
    with pytest.raises(ClirError, match="--resume"):
        train_language_adapter(args(tiny_bert, texts, head, tmp_path / "cut"), show_progress=False)
    with pytest.raises(ClirError, match="other settings"):
        train_language_adapter(
            args(tiny_bert, texts, head, tmp_path / "cut", lr=1e-3, resume=True), show_progress=False
        )
    resumed = train_language_adapter(
        args(tiny_bert, texts, head, tmp_path / "cut", resume=True), show_progress=False
    )
    assert resumed.dev_loss == pytest.approx(whole.dev_loss, abs=1e-6)
    # bit for bit: the resumed run took the uninterrupted run's steps
    a, b = (torch.load(r.out / "pytorch_adapter.bin", weights_only=True) for r in (whole, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.dev_loss_no_adapter == pytest.approx(whole.dev_loss_no_adapter, abs=1e-6)
    a = json.loads((tmp_path / "whole" / INFO_FILE).read_text())["loss"]
    b = json.loads((tmp_path / "cut" / INFO_FILE).read_text())["loss"]
    assert [r["step"] for r in a] == [r["step"] for r in b]
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], abs=1e-6)


def test_a_pretrained_head_is_used_frozen_without_a_head_folder(tiny_bert, texts, tmp_path):
    from transformers import BertForMaskedLM

    torch.manual_seed(0)
    with_head = BertForMaskedLM.from_pretrained(tiny_bert)  # a head of its own, saved with the backbone
    with_head.save_pretrained(tmp_path / "mlm-bert")
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (Path(tiny_bert) / f).is_file():
            (tmp_path / "mlm-bert" / f).write_bytes((Path(tiny_bert) / f).read_bytes())
    model, info = load_mlm(str(tmp_path / "mlm-bert"))
    assert info.source == "pretrained"
    a = args(tmp_path / "mlm-bert", texts, None, tmp_path / "de", max_steps=3)
    res = train_language_adapter(a, show_progress=False)
    assert res.head_sha256 == info.sha256  # the head did not move
    import adapters

    adapters.init(model)
    model.load_adapter(str(tmp_path / "de"), load_as="de")  # a plain `adapters` folder
    assert any(".adapters.de." in n for n, _ in model.named_parameters())


def test_fp16_weights_are_saved_and_scored_as_saved(tiny_bert, texts, head, tmp_path):
    import adapters

    res = train_language_adapter(
        args(tiny_bert, texts, head, tmp_path / "de", max_steps=3, save_dtype="fp16"), show_progress=False
    )
    saved = torch.load(tmp_path / "de" / "pytorch_adapter.bin", weights_only=True)
    assert saved and all(t.dtype == torch.float16 for t in saved.values())
    model, _ = load_mlm(str(tiny_bert), str(head))
    adapters.init(model)
    attach_inverse(model)
    model.load_adapter(str(tmp_path / "de"), load_as="de", set_active=True)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    dev, _ = mlm.prepare_dev(tok, mlm.TextSource(str(texts["de"])), DEV, 128, 0.15)
    assert mlm.dev_loss(model, head_module(model), dev, torch.device("cpu")) == pytest.approx(
        res.dev_loss, abs=1e-4
    )
