"""Control routings of the language-adapter experiment: an untrained adapter on the documents (``random``),
a wrong language's adapter (``doc_map``), and how a config declares them (checked when it loads)."""

from __future__ import annotations

import numpy as np
import pytest

from clir.config import ModelConfig, Routing, from_dict
from clir.errors import ClirError
from clir.model.adapters import RANDOM_ADAPTER, language_adapter_for, language_adapter_source


def _madx(routing: Routing) -> ModelConfig:
    return ModelConfig(
        adapter_mode="madx",
        language_adapters={"en": "new", "de": "new", "ru": "new"},
        routing=routing,
    )


def test_the_one_rule_routes_controls():
    cfg = _madx(Routing("source", "target", {"de": "ru"}))
    assert language_adapter_for(cfg, "passage", "de") == "ru"  # German documents, Russian adapter
    assert language_adapter_for(cfg, "passage", "ru") == "ru"  # languages the map leaves alone
    assert language_adapter_for(cfg, "query", "en") == "en"  # the map is the documents' only
    rnd = _madx(Routing("source", "random"))
    assert language_adapter_for(rnd, "passage", "de") == RANDOM_ADAPTER
    assert language_adapter_source(rnd, None, RANDOM_ADAPTER) == "new"  # fresh and untrained
    both = _madx(Routing("none", "none"))
    assert (
        language_adapter_for(both, "query", "en") is None
        and language_adapter_for(both, "passage", "de") is None
    )
    assert (
        Routing("source", "target", {"zh": "ru", "de": "ru"}).label() == "q-source_d-target.de-as-ru.zh-as-ru"
    )
    assert Routing("source", "target", {"de": "ru"}).doc_label() == "target.de-as-ru"


def test_bad_routings_are_refused_with_their_key():
    with pytest.raises(ClirError, match="doc_map needs doc: target"):
        from_dict(Routing, {"query": "source", "doc": "source", "doc_map": {"de": "ru"}})
    with pytest.raises(ClirError, match="maps 'de' to itself"):
        from_dict(Routing, {"doc": "target", "doc_map": {"de": "de"}})
    with pytest.raises(ClirError, match="give language codes"):
        from_dict(Routing, {"doc": "target", "doc_map": {"de": "Russian adapter"}})
    with pytest.raises(ClirError, match="must be one of"):
        from_dict(Routing, {"doc": "wrong"})
    with pytest.raises(ClirError, match="random needs adapter_mode madx"):
        from_dict(ModelConfig, {"adapter_mode": "task", "routing": {"doc": "random"}})


def test_encoder_routes_documents_through_the_control_adapters(tiny_bert, one_torch_thread):
    import torch

    from clir.model import load_encoder

    torch.manual_seed(0)
    enc = load_encoder(
        str(tiny_bert), {"adapter_mode": "madx", "language_adapters": {"en": "new", "de": "new", "ru": "new"}}
    )
    texts = ["der Hund schläft im Garten", "die Katze sitzt auf der Matte"]
    target, mapped = Routing("source", "target"), Routing("source", "target", {"de": "ru"})
    as_ru = enc.encode_passages(texts, lang="ru", routing=target)  # what the Russian adapter makes of them
    own = enc.encode_passages(texts, lang="de", routing=target)
    wrong = enc.encode_passages(texts, lang="de", routing=mapped)
    assert enc.fingerprint(mapped)["routing"]["doc_map"] == {"de": "ru"}
    assert np.allclose(wrong, as_ru, atol=1e-6) and not np.allclose(wrong, own, atol=1e-3)
    src = enc.encode_passages(texts, lang="de", routing=Routing("source", "source"))
    assert "doc_map" not in enc.fingerprint(Routing("source", "source"))["routing"]  # as before maps existed
    rnd = enc.encode_passages(texts, lang="de", routing=Routing("source", "random"))
    assert RANDOM_ADAPTER in enc.loaded_languages() and not np.allclose(rnd, src, atol=1e-3)
    assert enc.config.routing == Routing()  # the calls left the model's own routing alone
