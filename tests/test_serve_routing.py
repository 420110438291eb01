"""`clir serve` with language adapters: per-request query routing (`query_routing`) on a madx index gives the
hits of the encoder routed that way, alone or micro-batched with other routings; bad values, or a routing
asked of an index without language adapters, are 422 JSON; the document side stays the index's."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

QUERIES = ["the cat sits on the mat", "where is the train station", "history of the roman empire"]
#: (query_routing, query_lang) pairs a request can ask for; None: the model's own (source)
ROUTES = [(None, "en"), ("source", "de"), ("target", "de"), ("target", "ru"), ("none", "en")]


def _build(collection: Path, model: str, out: Path, doc_routing: str | None = None) -> Path:
    from clir.index import IndexArgs, build_index

    overrides: dict = {"precision": "fp32", "pooling": "mean", "normalize": True}
    if doc_routing:
        overrides["routing"] = {"doc": doc_routing}
    build_index(IndexArgs(collection=str(collection), model=model, out=str(out), overrides=overrides))
    return out


@pytest.fixture(scope="module")
def indexes(tiny_bert, tiny_collection, tmp_path_factory) -> dict[str, Path]:
    """A madx model's index with documents through the English adapter, one through each document's own
    (fr has none: it falls back), and a plain (no adapters) index, of the same tiny collection."""
    from clir.testing import build_tiny_madx

    root = tmp_path_factory.mktemp("serve-routing")
    model = str(build_tiny_madx(tiny_bert, root / "madx"))
    return {
        "madx": _build(tiny_collection, model, root / "madx-d-source"),
        "madx-target": _build(tiny_collection, model, root / "madx-d-target", doc_routing="target"),
        "plain": _build(tiny_collection, str(tiny_bert), root / "plain"),
    }


@pytest.fixture(scope="module")
def client(indexes):
    from clir.serve import ServeSettings, create_app

    with TestClient(create_app(indexes, ServeSettings())) as c:
        yield c


@pytest.fixture(scope="module")
def reference(indexes):
    """Hits of `Searcher.search` on the madx index with the encoder routed as a request asks."""
    from clir.search import Searcher

    searcher = Searcher(indexes["madx"])

    def hits(query: str, routing: str | None, lang: str, k: int = 5) -> list:
        route = replace(searcher.encoder.config.routing, query=routing) if routing else None
        return searcher.search(query, k, query_lang=lang, routing=route)

    return hits


def _same(http_hits: list[dict], ref_hits: list) -> None:
    assert [h["doc_id"] for h in http_hits] == [h.doc_id for h in ref_hits]
    assert [h["score"] for h in http_hits] == pytest.approx([h.score for h in ref_hits], abs=1e-4)


def _error(resp, fragment: str) -> str:
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert body["error"] == "invalid_request" and fragment in body["detail"], body
    return body["detail"]


@pytest.mark.parametrize("routing,lang", ROUTES)
def test_query_routing_per_request_equals_the_routed_encoder(client, reference, routing, lang):
    body = {"query": QUERIES[0], "k": 5, "index": "madx", "query_lang": lang}
    if routing:
        body["query_routing"] = routing
    r = client.post("/search", json=body)
    assert r.status_code == 200, r.text
    _same(r.json()["hits"], reference(QUERIES[0], routing, lang))


def test_routings_really_differ_and_do_not_leak(client, reference):
    def scores(**extra) -> list[float]:
        r = client.post("/search", json={"query": QUERIES[0], "k": 5, "index": "madx", **extra})
        assert r.status_code == 200, r.text
        return [h["score"] for h in r.json()["hits"]]

    source = scores()
    assert scores(query_routing="target", query_lang="de") != source
    assert scores(query_routing="none") != source
    # query_lang alone does not swap an adapter under the model's own (source) routing
    assert scores(query_lang="de") == source
    # the request's routing was only the request's: the next one gets the model's again
    assert scores() == source


def test_get_and_batch_take_query_routing(client, reference):
    params = {"q": QUERIES[1], "k": 5, "index": "madx", "query_routing": "target", "query_lang": "de"}
    r = client.get("/search", params=params)
    assert r.status_code == 200, r.text
    _same(r.json()["hits"], reference(QUERIES[1], "target", "de"))
    body = {"queries": QUERIES, "k": 5, "index": "madx", "query_routing": "none"}
    r = client.post("/search/batch", json=body)
    assert r.status_code == 200, r.text
    for q, item in zip(QUERIES, r.json()["results"], strict=True):
        _same(item["hits"], reference(q, "none", "en"))


def test_query_lang_defaults_to_the_models_source_language(client, reference):
    """Without query_lang, target query routing takes the model's source language (en here) on every route,
    rather than failing for an unknown language (a source language other than en: tests/test_model.py)."""
    want = reference(QUERIES[2], "target", "en")
    r = client.post("/search", json={"query": QUERIES[2], "k": 5, "index": "madx", "query_routing": "target"})
    assert r.status_code == 200, r.text
    _same(r.json()["hits"], want)
    r = client.get("/search", params={"q": QUERIES[2], "k": 5, "index": "madx", "query_routing": "target"})
    assert r.status_code == 200, r.text
    _same(r.json()["hits"], want)
    body = {"queries": [QUERIES[2]], "k": 5, "index": "madx", "query_routing": "target"}
    r = client.post("/search/batch", json=body)
    assert r.status_code == 200, r.text
    _same(r.json()["results"][0]["hits"], want)
    _error(client.post("/search", json={"query": "x", "index": "madx", "query_lang": " "}), "query_lang")


def test_routings_mixed_in_one_micro_batch_each_get_their_own(indexes, reference):
    """Concurrent requests with different routings share micro-batches: each is encoded its own way."""
    import httpx

    from clir.serve import ServeSettings, create_app

    app = create_app({"madx": indexes["madx"]}, ServeSettings(batch_window_ms=100, lanes=1))
    asks = [(q, routing, lang) for q in QUERIES for routing, lang in ROUTES]

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            rs = []
            for q, routing, lang in asks:
                body = {"query": q, "k": 5, "query_lang": lang}
                rs.append(c.post("/search", json=body | ({"query_routing": routing} if routing else {})))
            return await asyncio.gather(*rs)

    answers = asyncio.run(go())
    batcher = next(iter(app.state.clir.batchers.values()))
    assert batcher.batches < len(asks)  # some requests really shared a batch
    for (q, routing, lang), r in zip(asks, answers, strict=True):
        assert r.status_code == 200, r.text
        _same(r.json()["hits"], reference(q, routing, lang))


@pytest.mark.parametrize(
    "method,path,request_kwargs",
    [
        ("POST", "/search", {"json": {"query": "cat", "index": "madx", "query_routing": "english"}}),
        ("POST", "/search", {"json": {"query": "cat", "index": "madx", "query_routing": 3}}),
        ("GET", "/search", {"params": {"q": "cat", "index": "madx", "query_routing": "doc"}}),
        ("POST", "/search/batch", {"json": {"queries": ["cat"], "index": "madx", "query_routing": "TARGET"}}),
    ],
)
def test_bad_query_routing_is_422(client, method, path, request_kwargs):
    detail = _error(client.request(method, path, **request_kwargs), "query_routing")
    assert "'source', 'target' or 'none'" in detail


def test_query_routing_on_an_index_without_language_adapters_is_422(client):
    for r in (
        client.post("/search", json={"query": "cat", "index": "plain", "query_routing": "source"}),
        client.get("/search", params={"q": "cat", "index": "plain", "query_routing": "none"}),
        client.post("/search/batch", json={"queries": ["cat"], "index": "plain", "query_routing": "target"}),
    ):
        detail = _error(r, "query_routing")
        assert "index 'plain' has no language adapters" in detail and "madx" in detail
    # without the field, the plain index answers
    assert client.post("/search", json={"query": "cat", "index": "plain"}).status_code == 200


def test_openapi_says_document_routing_is_the_index_s(client):
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for name in ("SearchRequest", "BatchSearchRequest"):
        field = schemas[name]["properties"]["query_routing"]
        assert "fixed by the index" in field["description"], name
        enums = [x.get("enum") for x in field.get("anyOf", [field])]
        assert ["source", "target", "none"] in enums, field
    (get_param,) = [p for p in spec["paths"]["/search"]["get"]["parameters"] if p["name"] == "query_routing"]
    assert "fixed by the index" in get_param["description"]


def test_indexes_expose_document_routing_and_its_fallback(client):
    """What the search page pairs two indexes by: one collection, one model, doc routing source vs target."""
    by_name = {i["name"]: i for i in client.get("/indexes").json()["indexes"]}
    source, target = by_name["madx"], by_name["madx-target"]
    assert source["encoder_fingerprint"]["routing"]["doc"] == "source" and source["routing_fallback"] == {}
    assert target["encoder_fingerprint"]["routing"]["doc"] == "target"
    assert target["routing_fallback"] == {"fr": 3}  # the tiny collection's French documents: no fr adapter
    assert source["collection"] == target["collection"]
    assert by_name["plain"]["encoder_fingerprint"]["routing"] is None  # no language adapters to route
