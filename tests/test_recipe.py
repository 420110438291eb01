"""The index recipe (what an index is made of) and the adapter-mode strategies: one typed home each."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from clir.config import ModelConfig, Routing
from clir.errors import ClirError
from clir.index import IndexArgs, PassageSpec, build_index
from clir.index.recipe import IndexRecipe
from clir.index.store import read_manifest
from clir.model import load_encoder
from clir.model.modes import MODES, adapter_mode, routes_languages

FP32 = {"pooling": "mean", "normalize": True, "precision": "fp32"}


@pytest.fixture(scope="module")
def built(tiny_bert, tiny_collection, tmp_path_factory):
    out = tmp_path_factory.mktemp("recipe") / "idx"
    args = IndexArgs(
        collection=str(tiny_collection), model=str(tiny_bert), out=str(out), overrides=dict(FP32)
    )
    enc = load_encoder(str(tiny_bert), FP32)
    build_index(args, enc)
    return args, enc, out


def test_a_built_index_records_the_recipe_it_was_built_from(built):
    args, enc, out = built
    manifest = read_manifest(out)
    recorded = IndexRecipe.from_manifest(manifest)
    asked = IndexRecipe.of(args, enc.fingerprint())
    assert asked.diff(recorded) == []
    assert recorded.encoder == manifest["encoder"] and recorded.passages is not None
    # what the manifest says of the recipe is what the recipe writes
    mine = asked.to_manifest(enc.config.max_passage_length)
    assert {k: manifest[k] for k in ("encoder", "collection", "doc_lang", "shard")} == {
        k: mine[k] for k in ("encoder", "collection", "doc_lang", "shard")
    }
    assert {k: v for k, v in manifest["passages"].items() if k != "split_docs"} == mine["passages"]


def test_diff_names_what_differs(built):
    args, enc, out = built
    recorded = IndexRecipe.from_manifest(read_manifest(out))
    asked = IndexRecipe.of(args, enc.fingerprint())
    assert replace(asked, passages=PassageSpec(length=64)).diff(recorded) == ["passages.length"]
    assert replace(asked, passages=PassageSpec(split="none")).diff(recorded) == ["passages.split"]
    assert replace(asked, lang_id="off").diff(recorded) == ["lang_id"]
    assert replace(asked, doc_lang="de", collection="other").diff(recorded) == ["collection", "doc_lang"]
    other = {**asked.encoder, "pooling": "cls"}  # type: ignore[dict-item]
    assert asked.with_encoder(other).diff(recorded) == ["encoder.pooling"]
    # query-side settings never touch stored vectors
    assert asked.with_encoder({**asked.encoder, "query_prefix": "q: "}).diff(recorded) == []  # type: ignore[dict-item]


def test_settings_an_old_manifest_predates_are_not_compared(built):
    args, enc, out = built
    old = {k: v for k, v in read_manifest(out).items() if k not in ("passages", "lang_id")}
    recorded = IndexRecipe.from_manifest(old)
    assert recorded.passages is None and recorded.lang_id is None
    asked = IndexRecipe.of(args, enc.fingerprint())
    assert replace(asked, passages=PassageSpec(split="none"), lang_id="all").diff(recorded) == []


def test_the_default_window_matches_any_recorded_length():
    recorded = IndexRecipe("c", passages=PassageSpec(length=512))
    assert IndexRecipe("c").diff(recorded) == []  # left to the default: as it was when built
    assert IndexRecipe("c", passages=PassageSpec(length=256)).diff(recorded) == ["passages.length"]


def test_key_keeps_only_settings_off_their_defaults():
    assert IndexRecipe("c").key() == {}
    spec = PassageSpec(length=512, stride=128)
    assert IndexRecipe("c", passages=spec, lang_id="off").key() == {
        "passage_length": 512,
        "stride": 128,
        "lang_id": "off",
    }


def test_resume_state_is_the_recipe_resolved(built):
    args, enc, _ = built
    state = IndexRecipe.of(args, enc.fingerprint()).state(enc.config.max_passage_length)
    assert state["passages"] == args.passages.resolve(enc.config.max_passage_length)
    assert json.loads(json.dumps(state)) == state  # what state.json holds, as it is read back
    assert set(state) == {"encoder", "collection", "doc_lang", "shard", "chunk_size", "passages", "lang_id"}


# ---------------------------------------------------------------------- adapter modes
def test_each_mode_answers_which_stack_a_side_uses():
    cfg = ModelConfig(adapter_mode="madx", source_lang="en", language_adapters={"de": "x"})
    target = Routing(query="source", doc="target", doc_map={"ru": "de"})
    madx = adapter_mode(cfg)
    assert madx.stack(cfg, target, "passage", "de") == ["de", "task"]
    assert madx.stack(cfg, target, "passage", "ru") == ["de", "task"]  # the wrong-language control
    assert madx.stack(cfg, target, "query", "en") == ["en", "task"]
    assert madx.stack(cfg, Routing(doc="none"), "passage", "de") == ["task"]
    assert madx.stack(cfg, Routing(doc="random"), "passage", "de") == ["random", "task"]
    task = replace(cfg, adapter_mode="task", tied=False)
    assert adapter_mode(task).stack(task, target, "passage", "de") == ["task_passage"]
    full = replace(cfg, adapter_mode="full")
    assert adapter_mode(full).stack(full, target, "passage", "de") is None
    with pytest.raises(ClirError, match="language is unknown"):
        madx.stack(cfg, target, "passage", None)


def test_the_fallback_sends_documents_without_an_adapter_through_the_source_one():
    cfg = ModelConfig(adapter_mode="madx", source_lang="en")
    have = {"en", "de"}.__contains__
    madx, target = adapter_mode(cfg), Routing(doc="target")
    assert madx.doc_lang(cfg, target, "de", have) == "de"
    assert madx.doc_lang(cfg, target, "fa", have) == "en"
    assert madx.doc_lang(cfg, target, None, have) == "en"
    assert madx.doc_lang(cfg, Routing(), "fa", have) == "fa"  # nothing routes by language: kept
    assert madx.routes_docs_by_lang(target) and not madx.routes_docs_by_lang(Routing())
    assert not adapter_mode("task").routes_docs_by_lang(target)


def test_mode_traits_and_names():
    assert [m for m in MODES if routes_languages(m)] == ["madx"]
    assert not routes_languages(None) and not routes_languages("nonsense")
    assert adapter_mode("full").trains_backbone and not adapter_mode("full").has_adapters
    with pytest.raises(ClirError, match="unknown"):
        adapter_mode("lora")


def test_routing_is_an_argument_of_the_call(built):
    """A call's routing does not change the encoder's: the vectors of a default call stay the same."""
    _, enc, _ = built
    texts = ["ein Hund", "a dog"]
    before = enc.encode_passages(texts)
    enc.encode_passages(texts, routing=Routing(doc="none"))  # full mode: nothing to route, still accepted
    assert np.array_equal(enc.encode_passages(texts), before) and enc.config.routing == Routing()
