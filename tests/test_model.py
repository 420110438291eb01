"""The dual encoder: adapter modes, routing, pooling/prefixes, save/load, batching (clir/model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clir.config import ModelConfig, Routing
from clir.errors import ClirError
from clir.model import DualEncoder, load_encoder

TEXTS = [
    "die katze sitzt auf der matte",
    "wo ist der bahnhof",
    "the cat",
    "история римской империи и её падение",
]


def _enc(tiny_bert, **over) -> DualEncoder:
    over.setdefault("precision", "fp32")
    return load_encoder(str(tiny_bert), over)


def _madx(tiny_bert, langs=("en", "de"), **over) -> DualEncoder:
    return _enc(tiny_bert, adapter_mode="madx", language_adapters={lang: "new" for lang in langs}, **over)


def _train_step(enc: DualEncoder) -> dict[str, torch.Tensor]:
    """One optimiser step on a contrastive loss; returns the parameters before the step."""
    model = enc.query_model
    if enc.config.adapter_mode != "full":
        from adapters.composition import Stack

        model.train_adapter(Stack(*enc.task_adapter_names()))
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.5)
    q = enc.forward(enc.tokenize(["the cat", "the river"], "query"), "query", "en")
    d = enc.forward(enc.tokenize(["die katze", "der fluss"], "passage"), "passage", "de")
    # Cosine logits at temperature 1 keep the softmax away from saturation. Raw dot products (~50 on this
    # random model) at temperature 0.05 gave logit margins near 100: when a random init ranked both pairs
    # right, the loss was exactly 0 and the gradients (~1e-21) too small to move a float32 weight.
    q, d = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(d, dim=-1)
    loss = torch.nn.functional.cross_entropy(q @ d.T, torch.arange(2))
    opt.zero_grad()
    loss.backward()
    opt.step()
    return before


@pytest.mark.parametrize("mode", ["full", "task", "madx"])
def test_only_intended_parameters_train(tiny_bert, mode):
    torch.manual_seed(0)  # adapter init and dropout: the same draw whatever ran before
    enc = _madx(tiny_bert) if mode == "madx" else _enc(tiny_bert, adapter_mode=mode, pooling="mean")
    before = _train_step(enc)
    changed = {n for n, p in enc.query_model.named_parameters() if not torch.equal(p.detach(), before[n])}
    with_grad = {
        n for n, p in enc.query_model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0
    }
    assert changed, "an optimiser step changed nothing"
    if mode == "full":
        # every weight that the forward pass touches trains (the unused pooler/type rows aside)
        assert len(changed) >= 0.9 * len(before)
        assert not any("adapters" in n for n in before)
    else:
        assert all(".adapters.task." in n for n in changed), sorted(
            changed - {n for n in changed if ".task." in n}
        )
        assert with_grad == changed
        task_params = {n for n in before if ".adapters.task." in n}
        assert changed == {n for n in task_params if n in with_grad}
    if mode == "madx":
        # the English language adapter sits in the forward pass but stays frozen
        assert any(".adapters.en." in n for n in before)
        assert not any(".en." in n for n in changed)


def test_save_load_identical(tiny_bert, tmp_path):
    for mode in ("full", "task", "madx"):
        enc = (
            _madx(tiny_bert, routing={"doc": "target"})
            if mode == "madx"
            else _enc(tiny_bert, adapter_mode=mode)
        )
        if mode != "full":
            _train_step(enc)  # saved weights must be the trained ones, not a fresh init
            enc.query_model.eval()
        q = enc.encode_queries(TEXTS)
        d = enc.encode_passages(TEXTS, lang="de")
        out = enc.save(tmp_path / mode)
        assert (out / "clir_model.yaml").is_file()
        if mode != "full":
            assert not (out / "backbone").exists()  # adapter modes store adapters only
            size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
            assert size < 2_000_000
        again = load_encoder(str(out), {"precision": "fp32"})
        np.testing.assert_array_equal(again.encode_queries(TEXTS), q)
        np.testing.assert_array_equal(again.encode_passages(TEXTS, lang="de"), d)
        assert again.fingerprint() == enc.fingerprint()


def test_target_routing_swaps_the_language_adapter(tiny_bert, tmp_path):
    both = _madx(tiny_bert, routing={"doc": "target"})
    both.load_language_adapter("de")
    both.save(tmp_path / "m")  # bundles en + de adapters
    en_dir, de_dir = tmp_path / "m/adapters/lang_en", tmp_path / "m/adapters/lang_de"
    base = {"adapter_mode": "madx", "precision": "fp32"}
    task = str(tmp_path / "m")

    target = load_encoder(task, {**base, "routing": {"doc": "target"}})
    source = load_encoder(task, {**base, "routing": {"doc": "source"}})
    none = load_encoder(task, {**base, "routing": {"doc": "none"}})
    d_target = target.encode_passages(TEXTS, lang="de")
    d_source = source.encode_passages(TEXTS, lang="de")
    assert not np.allclose(d_target, d_source, atol=1e-6)
    assert not np.allclose(none.encode_passages(TEXTS, lang="de"), d_source, atol=1e-6)

    # `source` equals a model that never had the German adapter at all
    import shutil

    import yaml

    shutil.copytree(tmp_path / "m", tmp_path / "en-only")
    shutil.rmtree(tmp_path / "en-only/adapters/lang_de")
    cfg = yaml.safe_load((tmp_path / "en-only/clir_model.yaml").read_text())
    del cfg["language_adapters"]["de"]
    cfg["routing"]["doc"] = "source"
    (tmp_path / "en-only/clir_model.yaml").write_text(yaml.safe_dump(cfg))
    never = load_encoder(str(tmp_path / "en-only"), {"precision": "fp32"})
    np.testing.assert_array_equal(never.encode_passages(TEXTS, lang="de"), d_source)
    assert never._lang_loaded == {"en"} and de_dir.is_dir() and en_dir.is_dir()


def test_target_routing_needs_a_language(tiny_bert):
    enc = _madx(tiny_bert, routing={"doc": "target"})
    with pytest.raises(ClirError, match="language is unknown"):
        enc.encode_passages(["x"], lang=None)
    with pytest.raises(ClirError, match="no language adapter for 'fa'"):
        enc.encode_passages(["x"], lang="fa")


def test_queries_default_to_the_models_source_language(tiny_bert):
    """Target query routing without a query language routes through the model's source language's adapter
    (a model trained on German queries takes German by default, not English)."""
    enc = _madx(tiny_bert, source_lang="de", routing={"query": "target"}, precision="fp32")
    default = enc.encode_queries(TEXTS)
    np.testing.assert_array_equal(default, enc.encode_queries(TEXTS, lang="de"))
    assert not np.allclose(default, enc.encode_queries(TEXTS, lang="en"), atol=1e-6)


def test_pooling_and_prefixes_match_hand_computation(tiny_bert):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    model = AutoModel.from_pretrained(tiny_bert).eval()
    for pooling, normalize in (("cls", False), ("mean", True)):
        enc = _enc(
            tiny_bert,
            pooling=pooling,
            normalize=normalize,
            query_prefix="query: ",
            passage_prefix="passage: ",
        )
        got = enc.encode_queries(TEXTS)
        want = []
        for t in TEXTS:
            b = tok("query: " + t, return_tensors="pt", truncation=True, max_length=64)
            with torch.no_grad():
                h = model(**b).last_hidden_state[0]
            v = h[0] if pooling == "cls" else h.mean(0)
            if normalize:
                v = v / v.norm()
            want.append(v.numpy())
        np.testing.assert_allclose(got, np.stack(want), atol=1e-5)
        p = enc.encode_passages(TEXTS[:1])
        b = tok("passage: " + TEXTS[0], return_tensors="pt")
        with torch.no_grad():
            h = model(**b).last_hidden_state[0]
        v = h[0] if pooling == "cls" else h.mean(0)
        v = v / v.norm() if normalize else v
        np.testing.assert_allclose(p[0], v.numpy(), atol=1e-5)


def test_batch_order_restored_after_length_sorting(tiny_bert):
    enc = _enc(tiny_bert, pooling="mean")
    texts = [("wort " * n).strip() for n in (3, 17, 1, 9, 30, 2, 12)]
    batched = enc.encode_passages(texts, batch_size=3)
    single = np.stack([enc.encode_passages([t])[0] for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert batched.dtype == np.float32
    assert enc.encode_passages([]).shape == (0, enc.dim)


def test_untied_towers_differ_after_training(tiny_bert):
    enc = _enc(tiny_bert, adapter_mode="task", tied=False)
    assert enc.task_adapter_names() == ["task_query", "task_passage"]
    _train_step(enc)
    enc.query_model.eval()
    assert not np.allclose(enc.encode_queries(TEXTS), enc.encode_passages(TEXTS), atol=1e-6)


def test_bf16_autocast_stays_close_to_fp32(tiny_bert):
    fp32 = _enc(tiny_bert, pooling="mean", normalize=True).encode_passages(TEXTS)
    bf16 = _enc(tiny_bert, pooling="mean", normalize=True, precision="bf16").encode_passages(TEXTS)
    cos = (fp32 * bf16).sum(1)
    assert cos.min() > 0.99


def test_model_config_errors():
    from clir.config import from_dict

    with pytest.raises(ClirError, match="unknown key"):
        from_dict(ModelConfig, {"polling": "mean"})
    with pytest.raises(ClirError, match="pooling: must be one of"):
        from_dict(ModelConfig, {"pooling": "max"})
    with pytest.raises(ClirError, match="no 'en' entry"):
        from_dict(ModelConfig, {"adapter_mode": "madx"})
    with pytest.raises(ClirError, match="needs adapter_mode madx"):
        from_dict(ModelConfig, {"routing": {"doc": "target"}})


def test_adapter_activations_allowed_are_the_ones_adapters_builds():
    """The names config validation accepts (ADAPTER_ACTIVATIONS) all build; a new adapters release that
    drops one fails here, not in a user's run."""
    from adapters.methods.modeling import Activation_Function_Class

    from clir.config.model import ADAPTER_ACTIVATIONS

    for name in sorted(ADAPTER_ACTIVATIONS):
        Activation_Function_Class(name)


def test_json_and_yaml_limits():
    """What clir parses stays within limits, and is quick to refuse when it does not."""
    import time

    from clir.safe_load import MAX_DEPTH, MAX_YAML_NODES, loads_json, loads_yaml

    nested = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert loads_json(nested, "x") == loads_yaml(nested, "y")
    for deeper in ("[" * 65 + "]" * 65, '{"a":' * 10**5 + "1" + "}" * 10**5):
        with pytest.raises(ClirError, match="nested deeper than 64"):
            loads_json(deeper, "x")
    with pytest.raises(ClirError, match="NaN is not a JSON number"):
        loads_json('{"loss": NaN}', "x")
    assert loads_json('{"loss": NaN}', "x", allow_nan=True)["loss"] != 0
    with pytest.raises(ClirError, match="integer 1000000000000000000000 is too large"):
        loads_json("[1" + "0" * 21 + "]", "x")
    assert loads_json("\ufeff[1]", "x") == [1] and loads_yaml("\ufeffa: 1", "y") == {"a": 1}
    t = time.perf_counter()
    big = "".join(f"k{i}: [a, b]\n" for i in range(MAX_YAML_NODES // 5))  # 80k values: parsed
    assert len(loads_yaml(big, "y")) == MAX_YAML_NODES // 5
    with pytest.raises(ClirError, match="expands to more than"):
        loads_yaml("- a\n" * (MAX_YAML_NODES + 1), "y")
    assert time.perf_counter() - t < 10
    with pytest.raises(ClirError, match="alias refers to a node that contains it"):
        loads_yaml("a: &a [1, *a]", "y")


def test_env_expansion_in_configs(tmp_path, monkeypatch):
    from clir.config import load_yaml

    p = tmp_path / "c.yaml"
    p.write_text("backbone: ${CLIR_TEST_MODEL}\nother: ${CLIR_UNSET_X:-fallback}\n")
    monkeypatch.setenv("CLIR_TEST_MODEL", "/models/x")
    assert load_yaml(p) == {"backbone": "/models/x", "other": "fallback"}
    monkeypatch.delenv("CLIR_TEST_MODEL")
    with pytest.raises(ClirError, match="CLIR_TEST_MODEL is not set"):
        load_yaml(p)


def test_unreachable_hub_gives_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        ClirError, match="could not load the tokenizer 'no-such-org/no-such-model'.*--model DIR"
    ):
        load_encoder("no-such-org/no-such-model")


def test_unreachable_adapter_hub_names_the_adapter(tiny_bert, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ClirError, match="language adapter for 'en' from 'AdapterHub/.*local"):
        _enc(
            tiny_bert,
            adapter_mode="madx",
            language_adapters={"en": "AdapterHub/bert-base-multilingual-cased-en-wiki_pfeiffer"},
        )


@pytest.mark.shared
def test_e5_matches_plain_transformers(e5_small):
    """The real multilingual-e5-small: our encoder vs a plain transformers computation (mean pooling, L2)."""
    from transformers import AutoModel, AutoTokenizer

    sents = {
        "en": ["query: how many people live in Berlin?"],
        "de": ["passage: Berlin hat etwa 3,7 Millionen Einwohner."],
        "fa": ["passage: تهران پایتخت ایران است."],
        "zh": ["passage: 北京是中国的首都。"],
    }
    tok = AutoTokenizer.from_pretrained(e5_small)
    model = AutoModel.from_pretrained(e5_small).eval()
    enc = load_encoder(
        str(e5_small),
        {"pooling": "mean", "normalize": True, "query_prefix": "query: ", "passage_prefix": "passage: "},
    )
    for lang, (text,) in sents.items():
        b = tok(text, return_tensors="pt")
        with torch.no_grad():
            h = model(**b).last_hidden_state[0].mean(0)
        ref = (h / h.norm()).numpy()
        side, raw = text.split(": ", 1)
        got = enc.encode_queries([raw])[0] if side == "query" else enc.encode_passages([raw], lang=lang)[0]
        assert float(ref @ got) >= 0.9999, lang


@pytest.mark.parametrize("mode", ["full", "madx"])
def test_a_replica_shares_the_weights_and_encodes_the_same_at_the_same_time(tiny_bert, mode):
    """The REST server's lanes: replicas encode concurrently, bit-identical to the encoder they copy, with
    no second copy of the weights and routing of their own."""
    from concurrent.futures import ThreadPoolExecutor

    enc = _enc(tiny_bert, precision="bf16") if mode == "full" else _madx(tiny_bert, precision="bf16")
    queries = TEXTS * 5
    ref = enc.encode_queries(queries, batch_size=3)
    ref_docs = enc.encode_passages(TEXTS, lang="de")
    twin = enc.replica()
    assert twin.query_model is not enc.query_model and twin.tokenizer is enc.tokenizer
    ptrs = [p.data_ptr() for p in enc.query_model.parameters()]
    assert [p.data_ptr() for p in twin.query_model.parameters()] == ptrs  # shared, not copied
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(e.encode_queries, queries, batch_size=3) for e in (enc, twin, enc, twin)]
        assert all(np.array_equal(r.result(), ref) for r in runs)
    assert np.array_equal(twin.encode_passages(TEXTS, lang="de"), ref_docs)
    none = twin.encode_queries(queries[:2], routing=Routing(query="none"))  # per call: no state to leak
    assert twin.config.routing.query == "source" and np.array_equal(twin.encode_queries(queries[:2]), ref[:2])
    assert np.array_equal(none, enc.encode_queries(queries[:2], routing=Routing(query="none")))
    assert twin.fingerprint() == enc.fingerprint()
