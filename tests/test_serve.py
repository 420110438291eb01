"""`clir serve`: every route and every client error through TestClient, the real server over HTTP, and a
bounded concurrency run whose results must equal `Searcher.search` / `clir search`."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clir.testing import server_url, stop_server

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from clir.errors import ClirError  # noqa: E402

QUERIES = [
    "the cat sits on the mat",
    "where is the train station",
    "history of the roman empire",
    "how to bake bread",
    "climate change and the oceans",
    "football world cup final",
    "quantum computers",
    "the river flows to the sea",
]


@pytest.fixture(scope="session")
def tiny_index(tiny_bert, tiny_collection, tmp_path_factory) -> Path:
    from clir.index import IndexArgs, build_index

    out = tmp_path_factory.mktemp("serve") / "tiny-idx"
    # fp32: batched and single-query encodings then agree to float rounding, so rankings can be compared
    build_index(
        IndexArgs(
            collection=str(tiny_collection),
            model=str(tiny_bert),
            out=str(out),
            overrides={"precision": "fp32", "pooling": "mean", "normalize": True},
        )
    )
    return out


@pytest.fixture(scope="module")
def searcher(tiny_index):
    from clir.search import Searcher

    return Searcher(tiny_index)


@pytest.fixture(scope="module")
def client(tiny_index):
    from clir.serve import ServeSettings, create_app

    app = create_app({"tiny": tiny_index, "tiny2": tiny_index}, ServeSettings(max_body_bytes=4096))
    with TestClient(app) as c:
        yield c


def _ids(hits):
    return [h["doc_id"] if isinstance(h, dict) else h.doc_id for h in hits]


def _same(http_hits, ref_hits):
    assert _ids(http_hits) == _ids(ref_hits)
    for a, b in zip(http_hits, ref_hits, strict=True):
        assert a["score"] == pytest.approx(b.score, abs=1e-4)


def _error(resp, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"] == code and body["detail"], body
    return body


# ---------------------------------------------------------------------- routes
def test_health_ready_and_openapi(client):
    assert client.get("/health").json() == {"status": "ok"}
    r = client.get("/ready")
    assert r.status_code == 200 and r.json()["indexes"] == ["tiny", "tiny2"]
    spec = client.get("/openapi.json").json()
    assert {"/search", "/search/batch", "/indexes", "/indexes/{name}/docs/{doc_id}"} <= set(spec["paths"])
    assert "swagger" in client.get("/docs").text.lower()


def test_indexes_lists_counts_languages_fingerprints(client, searcher):
    body = client.get("/indexes").json()
    by_name = {i["name"]: i for i in body["indexes"]}
    assert (
        set(by_name) == {"tiny", "tiny2"} and by_name["tiny"]["default"] and not by_name["tiny2"]["default"]
    )
    tiny = by_name["tiny"]
    assert tiny["num_docs"] == searcher.num_docs == 28
    assert tiny["languages"] == ["de", "fa", "fr", "ru", "zh"]
    assert tiny["encoder_fingerprint"] == searcher.manifest["encoder"]


def test_indexes_with_one_encoder_share_the_loaded_model(client):
    searchers = client.app.state.clir.searchers
    assert searchers["tiny"].encoder is searchers["tiny2"].encoder


@pytest.mark.parametrize("query", QUERIES[:4])
def test_post_search_equals_searcher(client, searcher, query):
    r = client.post("/search", json={"query": query, "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    ref = searcher.search(query, 5, return_text=True)
    _same(body["hits"], ref)
    assert [h["rank"] for h in body["hits"]] == [1, 2, 3, 4, 5]
    assert [h["text"] for h in body["hits"]] == [h.text for h in ref]
    assert body["index"] == "tiny" and body["truncated"] is False and body["took_ms"] >= 0
    assert r.headers["x-request-id"]


def test_get_search_other_index_without_text(client, searcher):
    r = client.get("/search", params={"q": QUERIES[1], "k": 3, "index": "tiny2", "return_text": "false"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["index"] == "tiny2" and all("text" not in h for h in body["hits"])
    _same(body["hits"], searcher.search(QUERIES[1], 3))


def test_batch_search_equals_searcher(client, searcher):
    r = client.post("/search/batch", json={"queries": QUERIES, "k": 4, "return_text": True})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == len(QUERIES)
    for q, item in zip(QUERIES, results, strict=True):
        _same(item["hits"], searcher.search(q, 4))
        assert all(h["text"] for h in item["hits"])


def test_get_document(client, searcher):
    r = client.get("/indexes/tiny/docs/de-1")
    assert r.status_code == 200, r.text
    assert r.json() == {"index": "tiny", **searcher.docstore.get("de-1")}


def test_long_query_is_truncated_and_says_so(client, searcher):
    limit = searcher.encoder.config.max_query_length
    long_query = " ".join(["the river flows to the sea"] * limit)
    body = client.post("/search", json={"query": long_query, "k": 3}).json()
    assert body["truncated"] is True and body["query_tokens"] == limit and "truncated" in body["warning"]
    _same(body["hits"], searcher.search(long_query, 3))
    short = client.post("/search", json={"query": "the cat", "k": 3}).json()
    assert short["truncated"] is False and short["query_tokens"] < limit and "warning" not in short


# ---------------------------------------------------------------------- client errors
@pytest.mark.parametrize(
    "body",
    [
        {"query": ""},
        {"query": "   \t\n"},
        {"query": "cat", "k": 0},
        {"query": "cat", "k": 1001},
        {"query": "cat", "k": "ten"},
        {"k": 3},
        {"query": "cat", "topk": 3},
        {"query": "cat", "query_lang": " "},
    ],
)
def test_bad_search_body_is_422(client, body):
    _error(client.post("/search", json=body), 422, "invalid_request")


def test_k_bounds_are_inclusive(client):
    assert client.post("/search", json={"query": "cat", "k": 1}).status_code == 200
    r = client.post("/search", json={"query": "cat", "k": 1000})  # more than the index holds: all of it
    assert r.status_code == 200 and len(r.json()["hits"]) == 28


def test_malformed_json_is_422(client):
    r = client.post("/search", content=b'{"query": "cat",', headers={"content-type": "application/json"})
    assert "malformed JSON" in _error(r, 422, "invalid_request")["detail"]
    r = client.post("/search", content=b'["cat"]', headers={"content-type": "application/json"})
    _error(r, 422, "invalid_request")
    r = client.post("/search", content=b'{"query": "cat"}')  # no content type
    assert "Content-Type" in _error(r, 422, "invalid_request")["detail"]


@pytest.mark.parametrize(
    "params",
    [{"q": ""}, {"q": "  "}, {}, {"q": "cat", "k": 0}, {"q": "cat", "k": 5000}, {"q": "cat", "k": "x"}],
)
def test_bad_get_search_is_422(client, params):
    _error(client.get("/search", params=params), 422, "invalid_request")


@pytest.mark.parametrize("body", [{"queries": []}, {"queries": ["cat", " "]}, {"queries": "cat"}])
def test_bad_batch_is_422(client, body):
    _error(client.post("/search/batch", json=body), 422, "invalid_request")


def test_unknown_index_and_doc_are_404(client):
    assert (
        "nope"
        in _error(client.post("/search", json={"query": "cat", "index": "nope"}), 404, "not_found")["detail"]
    )
    _error(client.get("/search", params={"q": "cat", "index": "nope"}), 404, "not_found")
    _error(client.post("/search/batch", json={"queries": ["cat"], "index": "nope"}), 404, "not_found")
    _error(client.get("/indexes/nope/docs/de-1"), 404, "not_found")
    assert "no-such-doc" in _error(client.get("/indexes/tiny/docs/no-such-doc"), 404, "not_found")["detail"]
    _error(client.get("/no/such/route"), 404, "not_found")
    _error(client.delete("/search"), 405, "method_not_allowed")


def test_body_over_limit_is_413(client):
    big = {"query": "cat " * 2000}  # > 4096 bytes (the fixture's limit)
    r = client.post("/search", json=big)
    assert "4096" in _error(r, 413, "payload_too_large")["detail"]

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(10):
            yield b"x" * 1000

    _error(
        client.post("/search", content=chunks(), headers={"content-type": "application/json"}),
        413,
        "payload_too_large",
    )
    assert client.post("/search", json={"query": "cat " * 500}).status_code == 200  # under the limit


# ---------------------------------------------------------------------- API key, logs, failures
def test_api_key(searcher, monkeypatch, caplog):
    from clir.serve import ServeSettings, create_app

    secret = "s3cret-key-value"
    monkeypatch.setenv("CLIR_TEST_KEY", secret)
    app = create_app({"tiny": searcher}, ServeSettings(api_key_env="CLIR_TEST_KEY"))
    caplog.set_level(logging.DEBUG)
    with TestClient(app) as c:
        assert "missing" in _error(c.post("/search", json={"query": "cat"}), 401, "unauthorized")["detail"]
        _error(c.post("/search", json={"query": "cat"}, headers={"X-API-Key": "wrong"}), 401, "unauthorized")
        _error(c.get("/indexes"), 401, "unauthorized")
        _error(
            c.post("/search", content=b"{bad", headers={"content-type": "application/json"}),
            401,
            "unauthorized",
        )
        assert c.post("/search", json={"query": "cat"}, headers={"X-API-Key": secret}).status_code == 200
        assert c.get("/indexes/tiny/docs/de-1", headers={"x-api-key": secret}).status_code == 200
        assert c.get("/health").status_code == 200
        # /ready is open: the index names only for those with the key
        assert c.get("/ready").json() == {"status": "ready"}
        assert c.get("/ready", headers={"X-API-Key": secret}).json()["indexes"] == ["tiny"]
    assert secret not in caplog.text


def test_api_key_variable_unset_is_an_error(tiny_index, monkeypatch):
    from clir.serve import ServeSettings, create_app

    monkeypatch.delenv("CLIR_TEST_NO_KEY", raising=False)
    with pytest.raises(ClirError, match="CLIR_TEST_NO_KEY"):
        create_app({"tiny": tiny_index}, ServeSettings(api_key_env="CLIR_TEST_NO_KEY"))


@pytest.mark.parametrize("micro_batching", [True, False])
def test_internal_failure_is_500_with_request_id_and_server_keeps_serving(
    searcher, monkeypatch, caplog, micro_batching
):
    from clir.serve import ServeSettings, create_app

    app = create_app({"tiny": searcher}, ServeSettings(micro_batching=micro_batching))
    real = searcher.search_vectors
    fail_next = {"on": False}  # armed after the startup warm-up (one search per encoder lane)

    def flaky(vecs, k):
        if fail_next["on"]:
            fail_next["on"] = False
            raise RuntimeError("simulated FAISS failure")
        return real(vecs, k)

    monkeypatch.setattr(searcher, "search_vectors", flaky)
    caplog.set_level(logging.INFO)
    with TestClient(app) as c:
        fail_next["on"] = True
        r = c.post("/search", json={"query": "cat"})
        body = _error(r, 500, "internal_error")
        rid = body["request_id"]
        assert rid == r.headers["x-request-id"] and rid in body["detail"]
        assert "simulated FAISS failure" not in r.text  # internals stay in the log
        assert c.post("/search", json={"query": "cat"}).status_code == 200
    failure = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert failure and rid in failure[0].getMessage() and failure[0].exc_info
    assert "simulated FAISS failure" in caplog.text


def test_access_log_has_status_and_latency(client, caplog):
    caplog.set_level(logging.INFO, logger="clir.serve.access")
    client.get("/search", params={"q": "secret words"})
    lines = [r.getMessage() for r in caplog.records if r.name == "clir.serve.access"]
    assert lines and re.search(r'"GET /search" 200 \d+\.\dms rid=\w+', lines[-1])
    assert "secret words" not in lines[-1]  # the query string is not logged


def test_access_log_escapes_what_the_client_sent(client, caplog):
    """A path is logged decoded: its control characters are escaped, so a %0A cannot start a forged log
    line and a %1B cannot reach the terminal reading the log."""
    caplog.set_level(logging.INFO, logger="clir.serve.access")
    client.get("/indexes%0A02:00:00 INFO clir.serve.access: FORGED")
    client.get("/indexes/tiny/docs/%1B[2J%22quoted%22")
    forged, escape = [r.getMessage() for r in caplog.records if r.name == "clir.serve.access"][-2:]
    assert '"GET /indexes\\n02:00:00 INFO clir.serve.access: FORGED" 404' in forged
    assert '"GET /indexes/tiny/docs/\\x1b[2J\\"quoted\\"" 404' in escape
    assert not any(c in line for line in (forged, escape) for c in "\n\r\x1b")


def test_micro_batcher_groups_concurrent_queries(searcher):
    from clir.serve.batching import Job, MicroBatcher

    async def go():
        batcher = MicroBatcher(searcher.encoder, max_batch=8, window_ms=20)
        jobs = [Job(searcher, q, 3, "en") for q in QUERIES]
        results = await asyncio.gather(*(batcher.submit(j) for j in jobs))
        await batcher.stop()
        return batcher, results

    batcher, results = asyncio.run(go())
    assert batcher.batched_queries == len(QUERIES) and batcher.batches < len(QUERIES)
    for q, res in zip(QUERIES, results, strict=True):
        ref = searcher.search(q, 3)
        assert [searcher.docids[r] for r in res.rows] == _ids(ref)
        assert res.scores.tolist() == pytest.approx([h.score for h in ref], abs=1e-5)


@pytest.mark.shared
def test_micro_batches_match_single_queries(e5_small):
    """Micro-batches of mixed lengths give exactly the vectors of encoding each query alone, where the CPU's
    kernels have row blocks that make products independent of the batch (clir.model.rowblocks; without
    them AMX moved vectors by up to 8e-4 and swapped near-tied documents in 13% of top-10s); within 1e-3
    for a product no block helps."""
    import numpy as np
    import torch

    from clir.model import load_encoder
    from clir.model.rowblocks import linear_shapes, row_block
    from clir.serve.batching import encode_grouped

    enc = load_encoder(e5_small, {"pooling": "mean", "normalize": True, "query_prefix": "query: "})
    queries = QUERIES + [q.upper() for q in QUERIES] + ["the cat", "the sea", "where is it"]
    vecs, counts = encode_grouped(enc, queries, ["en"] * len(queries))
    assert len({c[0] for c in counts}) < len(queries)  # some groups really hold several queries
    dtype = enc._autocast_dtype() or torch.float32
    exact = all(row_block(*s, dtype, enc.device) is not None for s in linear_shapes(enc.query_model))
    for q, v in zip(queries, vecs, strict=True):
        alone = enc.encode_queries([q])[0]
        assert np.array_equal(v, alone) if exact else np.abs(v - alone).max() < 1e-3


def test_overload_is_503(searcher):
    from clir.serve import ServeSettings, create_app

    app = create_app(
        {"tiny": searcher}, ServeSettings(max_pending=1, max_batch_queries=1, batch_window_ms=200)
    )

    async def go():
        import httpx

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await asyncio.gather(*(c.post("/search", json={"query": q}) for q in QUERIES[:4]))

    responses = asyncio.run(go())
    statuses = sorted(r.status_code for r in responses)
    assert 200 in statuses and 503 in statuses and set(statuses) <= {200, 503}
    assert all(r.headers["retry-after"] == "1" for r in responses if r.status_code == 503)


# ---------------------------------------------------------------------- load: turns, admission, departures
def _batcher(app):
    return next(iter(app.state.clir.batchers.values()))


async def _until(condition, what: str, seconds: float = 60.0) -> None:
    """Poll ``condition`` (generous deadline: CI is a loaded 2-core machine)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def test_a_single_search_does_not_wait_for_a_running_batch(searcher, monkeypatch):
    """One lane busy with a 1,000-query batch: a single /search takes the lane after the slice that is
    running, and is answered while the batch goes on (it used to wait for the whole batch)."""
    import httpx

    import clir.serve.batching as batching
    from clir.serve import ServeSettings, create_app

    app = create_app({"tiny": searcher}, ServeSettings(lanes=1, max_batch_size=16))
    work: list[str] = []  # what each lane call ran, in order
    real = batching.run_jobs

    def spy(encoder, jobs, **kw):
        work.append("single" if jobs[0].query == "the cat" else "batch")
        return real(encoder, jobs, **kw)

    monkeypatch.setattr(batching, "run_jobs", spy)
    queries = [f"{QUERIES[i % len(QUERIES)]} {i}" for i in range(1000)]

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=120) as c:
            batch = asyncio.ensure_future(c.post("/search/batch", json={"queries": queries, "k": 3}))
            await _until(lambda: work.count("batch") >= 2, "the batch to run")
            slices_before = work.count("batch")
            t0 = time.perf_counter()
            single = await c.post("/search", json={"query": "the cat", "k": 3})
            waited = time.perf_counter() - t0
            batch_running = not batch.done()
            return single, slices_before, waited, batch_running, await batch

    single, slices_before, waited, batch_running, batch = asyncio.run(go())
    assert single.status_code == 200 and batch.status_code == 200, (single.text, batch.text)
    assert len(batch.json()["results"]) == 1000
    assert batch_running and waited < 30
    # the slice running when it came, perhaps one more that started meanwhile, then the single query
    assert work.index("single") <= slices_before + 2, work[:10]
    assert work[-1] == "batch"  # the batch went on afterwards


def test_batches_count_against_max_pending(searcher, monkeypatch):
    """A batch's queries count as pending until their slice is done: beside a running batch, a request
    beyond max_pending gets 503 with Retry-After, and the count comes back to 0 once the batch is done."""
    import threading

    import httpx

    import clir.serve.batching as batching
    from clir.serve import ServeSettings, create_app

    settings = ServeSettings(max_pending=10, max_batch_queries=10, max_batch_size=2, lanes=1)
    app = create_app({"tiny": searcher}, settings)
    gate = threading.Event()  # holds the lane until the refusals are seen
    real = batching.run_jobs
    monkeypatch.setattr(batching, "run_jobs", lambda enc, jobs, **kw: gate.wait(60) and real(enc, jobs, **kw))

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=120) as c:
            batch = asyncio.ensure_future(c.post("/search/batch", json={"queries": (QUERIES * 2)[:10]}))
            await _until(lambda: _batcher(app).pending == 10, "the batch to be admitted")
            refused = [
                await c.post("/search", json={"query": "cat"}),
                await c.post("/search/batch", json={"queries": ["cat"]}),
            ]
            gate.set()
            done = await batch
            return refused, done, _batcher(app).pending, await c.post("/search", json={"query": "cat"})

    refused, done, pending, after = asyncio.run(go())
    for r in refused:
        assert _error(r, 503, "unavailable") and r.headers["retry-after"] == "1"
    assert "max_pending" in refused[1].json()["detail"]
    assert done.status_code == 200 and pending == 0 and after.status_code == 200


def test_a_batch_stops_when_its_client_leaves(searcher, caplog):
    """The client of a 1,000-query batch disconnects after two slices: the batch stops after the slice
    that is running (not 125 of them), its queries leave the pending count, and it is logged as 499."""
    from clir.serve import ServeSettings, create_app

    app = create_app({"tiny": searcher}, ServeSettings(lanes=1, max_batch_size=8))
    body = json.dumps({"queries": [f"{QUERIES[i % len(QUERIES)]} {i}" for i in range(1000)]}).encode()
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "path": "/search/batch", "raw_path": b"/search/batch", "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 5555), "server": ("testserver", 80), "scheme": "http",
    }  # fmt: skip
    batcher = _batcher(app)
    sent: list[dict] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        if messages:
            return messages.pop()
        await _until(lambda: batcher.slices >= 2, "two slices")
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    async def go():
        await app(scope, receive, send)
        await _until(lambda: batcher._lanes.idle() == 1, "the last slice to finish")
        started = batcher.slices
        await asyncio.sleep(0.2)
        assert batcher.slices == started  # nothing started after the client left
        pending = batcher.pending
        await batcher.stop()
        return started, pending

    with caplog.at_level(logging.INFO, logger="clir.serve"):
        started, pending = asyncio.run(go())
    assert started <= 4 and pending == 0
    access = [r.getMessage() for r in caplog.records if r.name == "clir.serve.access"]
    assert len(access) == 1 and '"POST /search/batch" 499' in access[0], access
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_900k_character_query_is_cut_before_it_is_tokenised(searcher, monkeypatch):
    """A query far over the encoder's limit is cut (by characters, then checked in tokens) before the
    tokenizer reads it: the tokenizer never sees more than a few thousand of its 900k characters, and the
    vector, token count and hits are those of its truncated form tokenised whole. Where a cut would drop
    kept tokens (after a long run of spaces), the cut widens."""
    import numpy as np

    from clir.model import cut
    from clir.serve import ServeSettings, create_app

    enc = searcher.encoder
    limit = enc.max_length("query")
    seen: list[int] = []

    class Spy:  # the tokenizer, recording how many characters each call reads
        def __init__(self, tok):
            self._tok = tok

        def __call__(self, texts, *a, **kw):
            seen.append(max(map(len, [texts] if isinstance(texts, str) else texts)))
            return self._tok(texts, *a, **kw)

        def __getattr__(self, name):
            return getattr(self._tok, name)

    huge = ("the river flows to the sea " * 40_000)[:900_000]
    spaced = "cat" + " " * 100_000 + "the sea " * 2_000
    monkeypatch.setattr(enc, "tokenizer", Spy(enc.tokenizer))
    vectors = {q: enc.encode_queries([q]) for q in (huge, spaced)}
    counts = {q: enc.count_tokens(q) for q in (huge, spaced)}
    assert max(seen) > 100_000 and max(seen[:4]) < 10_000  # the huge one cut short; the spaced one widened
    app = create_app({"tiny": searcher}, ServeSettings(lanes=1))  # after the spy: lanes share the tokenizer
    with TestClient(app) as c:
        seen.clear()  # the warm-up's
        r = c.post("/search", json={"query": huge, "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["truncated"] is True and body["query_tokens"] == limit
    assert max(seen) < 10_000
    monkeypatch.setattr(cut, "CHARS_PER_TOKEN", 10**9)  # no cut: texts are tokenised whole, as before
    truncated = huge[:20_000]  # far more than the limit's tokens
    for q, whole in ((huge, truncated), (spaced, spaced)):
        assert np.array_equal(vectors[q], enc.encode_queries([whole]))
        assert counts[q] == enc.count_tokens(whole) == (limit, True)
    _same(body["hits"], searcher.search(truncated, 5))


# ---------------------------------------------------------------------- an index rebuilt under the server
def _docs(collection: Path) -> dict[str, str]:
    lines = (collection / "docs.jsonl").read_text(encoding="utf-8").splitlines()
    return {d["doc_id"]: d["text"] for d in map(json.loads, lines)}


@pytest.fixture(scope="module")
def rebuilds(tiny_bert, tiny_collection, tmp_path_factory):
    """(old index, new collection, its index, old texts, new texts): one encoder, the same doc ids, other
    texts, fewer of them."""
    from clir.index import IndexArgs, build_index

    root = tmp_path_factory.mktemp("rebuilds")
    new_coll = root / "new-coll"
    new_coll.mkdir()
    new_texts = {d: f"{t} rebuilt" for d, t in list(_docs(tiny_collection).items())[::2]}
    (new_coll / "docs.jsonl").write_text(
        "".join(
            json.dumps({"doc_id": d, "text": t}, ensure_ascii=False) + "\n" for d, t in new_texts.items()
        ),
        encoding="utf-8",
    )
    for name, coll in (("old", tiny_collection), ("new", new_coll)):
        build_index(IndexArgs(collection=str(coll), model=str(tiny_bert), out=str(root / name),
                              overrides={"precision": "fp32", "pooling": "mean", "normalize": True}))  # fmt: skip
    return root / "old", new_coll, root / "new", _docs(tiny_collection), new_texts


def test_an_index_rebuilt_under_the_server_is_served_from_its_old_snapshot(
    rebuilds, searcher, tiny_bert, tmp_path
):
    """`clir index --overwrite` rebuilds the folder a server serves: every answer stays the old index's,
    ids and texts together, until the server restarts (it used to answer 500s, and old ids with new texts:
    the doc store opened at the first request, from the new folder)."""
    import shutil

    from clir.index import IndexArgs, build_index
    from clir.search import Searcher
    from clir.serve import ServeSettings, create_app

    old, new_coll, _, old_texts, new_texts = rebuilds  # `searcher` is `old`'s twin: the reference
    live = tmp_path / "live"
    shutil.copytree(old, live)
    with TestClient(create_app({"live": live}, ServeSettings(lanes=1))) as c:
        build_index(IndexArgs(collection=str(new_coll), model=str(tiny_bert), out=str(live), overwrite=True,
                              overrides={"precision": "fp32", "pooling": "mean", "normalize": True}))  # fmt: skip
        assert Searcher(live).num_docs == len(new_texts) < len(old_texts)  # the folder holds the new index
        for q in QUERIES[:3]:
            r = c.post("/search", json={"query": q, "k": 28})
            assert r.status_code == 200, r.text
            hits = r.json()["hits"]
            _same(hits, searcher.search(q, 28))
            assert all(h["text"] == old_texts[h["doc_id"]] for h in hits)
        batch = c.post("/search/batch", json={"queries": QUERIES[:2], "k": 28, "return_text": True})
        assert all(
            h["text"] == old_texts[h["doc_id"]] for item in batch.json()["results"] for h in item["hits"]
        )
        doc_id = next(d for d in old_texts if d not in new_texts)
        assert c.get(f"/indexes/live/docs/{doc_id}").json()["text"] == old_texts[doc_id]
        assert c.get("/indexes").json()["indexes"][0]["num_docs"] == len(old_texts)


def test_a_rebuild_landing_while_an_index_is_opened_is_opened_again(rebuilds, tmp_path, monkeypatch):
    """The folder swapped between reading the FAISS index and the ids: the searcher notices (the folder
    is another one) and opens everything again, all from the new build."""
    import shutil

    from clir.atomic import swap_into_place
    from clir.index import store
    from clir.search import Searcher

    old, _, new, _, new_texts = rebuilds
    live = tmp_path / "live"
    shutil.copytree(old, live)
    shutil.copytree(new, tmp_path / "live.partial")
    real = store.read_docids

    def rebuilt_meanwhile(folder):
        if (tmp_path / "live.partial").exists():
            swap_into_place(tmp_path / "live.partial", live)
        return real(folder)

    monkeypatch.setattr(store, "read_docids", rebuilt_meanwhile)
    s = Searcher(live)
    assert s.num_docs == s.index.ntotal == len(new_texts)
    assert {d: s.docstore.get(d)["text"] for d in s.docids} == new_texts
    assert s.manifest["num_docs"] == len(new_texts)


# ---------------------------------------------------------------------- configuration and CLI
def test_index_specs_and_yaml_config(tmp_path, monkeypatch):
    from clir.serve import load_serve_config, parse_index_spec

    assert parse_index_spec("de=indexes/xquad-de") == ("de", "indexes/xquad-de")
    assert parse_index_spec("indexes/xquad-de/") == ("xquad-de", "indexes/xquad-de/")
    with pytest.raises(ClirError, match="URL-safe"):
        parse_index_spec("bad name=dir")
    monkeypatch.setenv("IDX_ROOT", "/data/idx")
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("indexes:\n  de: ${IDX_ROOT}/de\n  ru: rel/ru\nport: 9000\nmicro_batching: false\n")
    indexes, settings = load_serve_config(cfg)
    assert indexes == {"de": "/data/idx/de", "ru": str(tmp_path / "rel/ru")}
    assert settings == {"port": 9000, "micro_batching": False}
    cfg.write_text("indexes: {de: x}\nprot: 9000\n")
    with pytest.raises(ClirError, match="prot"):
        load_serve_config(cfg)


def test_cli_flags_override_config(tmp_path):
    from clir.cli.main import build_parser
    from clir.cli.serve import resolve

    cfg = tmp_path / "serve.yaml"
    cfg.write_text("indexes: {de: /x/de}\nport: 9000\nmax_body_bytes: 10\nlanes: 3\n")
    args = build_parser().parse_args(
        ["serve", "--config", str(cfg), "--index", "ru=/x/ru", "--port", "9001", "--lanes", "1"]
    )
    indexes, settings = resolve(args)
    assert indexes == {"de": "/x/de", "ru": "/x/ru"}
    assert (settings.port, settings.max_body_bytes, settings.lanes) == (9001, 10, 1)
    cfg.write_text("indexes: {de: /x/de}\nlanes: 0\n")
    with pytest.raises(ClirError, match="lanes must be positive"):
        resolve(build_parser().parse_args(["serve", "--config", str(cfg)]))[1].validate()
    args = build_parser().parse_args(["serve", "--index", "a/x", "--index", "b/x"])
    with pytest.raises(ClirError, match="alias"):
        resolve(args)


@pytest.mark.parametrize(
    "flags,fragment",
    [
        (["--batch-window-ms", "nan"], "batch_window_ms must be a finite number"),
        (["--batch-window-ms", "inf"], "batch_window_ms must be a finite number"),
        (["--request-timeout", "nan"], "request_timeout must be a finite number"),
        (["--request-timeout", "0"], "request_timeout must be a finite number"),
        (["--max-pending", "10"], "max_batch_queries (1000) is above max_pending (10)"),
    ],
)
def test_cli_refuses_non_finite_and_inconsistent_settings(flags, fragment, capsys):
    from clir.cli.main import main

    assert main(["serve", "--index", "x/idx", *flags]) == 1  # before any index or model is opened
    assert fragment in capsys.readouterr().err


def test_the_connection_cap_fits_the_open_file_limit(monkeypatch, caplog):
    import resource

    from clir.serve import protocol

    monkeypatch.setattr(resource, "getrlimit", lambda _: (512, 4096))
    assert protocol.connection_cap(None) == 512 - protocol.FILES_RESERVED  # the default, lowered to fit
    with caplog.at_level(logging.WARNING, logger="clir.serve.protocol"):
        assert protocol.connection_cap(2000) == 2000  # what was asked for, with a warning
    assert "open-file limit" in caplog.text
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1 << 20, 1 << 20))
    assert protocol.connection_cap(None) == protocol.DEFAULT_MAX_CONNECTIONS


def test_cli_bad_index_folder_is_a_clear_error(tmp_path, capsys):
    from clir.cli.main import main

    assert main(["serve", "--index", str(tmp_path / "missing")]) == 1
    assert "index folder not found" in capsys.readouterr().err


# ---------------------------------------------------------------------- the real server over HTTP
#: the test server's --request-timeout and --max-connections
REQUEST_TIMEOUT = 3
MAX_CONNECTIONS = 40


@pytest.fixture(scope="module")
def server(tiny_index):
    """`clir serve` in a subprocess on a free loopback port (uvicorn picks it: --port 0); small connection
    limits, so that the tests reach them."""
    import httpx

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clir",
            "serve",
            "--index",
            f"tiny={tiny_index}",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--request-timeout",
            str(REQUEST_TIMEOUT),
            "--max-connections",
            str(MAX_CONNECTIONS),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    deadline = time.time() + 120  # to start and to become ready
    try:
        url = server_url(proc, 120)
        # keep draining stderr so the server never blocks on a full pipe
        import threading

        threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
        while httpx.get(f"{url}/ready").status_code != 200:
            assert time.time() < deadline
            time.sleep(0.1)
        yield url
    finally:
        stop_server(proc)


def test_real_server_over_http(server, searcher):
    import httpx

    with httpx.Client(base_url=server, timeout=30) as c:
        assert c.get("/health").json() == {"status": "ok"}
        r = c.post("/search", json={"query": QUERIES[0], "k": 5})
        assert r.status_code == 200
        _same(r.json()["hits"], searcher.search(QUERIES[0], 5))
        _error(c.post("/search", json={"query": " "}), 422, "invalid_request")
        _error(c.get("/indexes/tiny/docs/nope"), 404, "not_found")


def test_concurrent_clients_get_identical_results(server, tiny_index, tmp_path):
    """16 clients x 20 requests: zero errors, every answer equal to `clir search`'s."""
    import httpx

    qfile = tmp_path / "queries.tsv"
    qfile.write_text("".join(f"q{i}\t{q}\n" for i, q in enumerate(QUERIES)))
    out = subprocess.run(
        [sys.executable, "-m", "clir", "-q", "search", "--index", str(tiny_index), "--queries", str(qfile),
         "--json", "--k", "10"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    expected = {QUERIES[int(qid[1:])]: hits for qid, hits in json.loads(out.stdout).items()}

    async def client_task(c: httpx.AsyncClient, worker: int) -> list[str]:
        problems = []
        for i in range(20):
            q = QUERIES[(worker + i) % len(QUERIES)]
            r = await c.post("/search", json={"query": q, "k": 10, "return_text": False})
            if r.status_code != 200:
                problems.append(f"{r.status_code} {r.text}")
                continue
            got = r.json()["hits"]
            want = expected[q]
            if _ids(got) != _ids(want) or any(
                abs(a["score"] - b["score"]) > 1e-4 for a, b in zip(got, want, strict=True)
            ):
                problems.append(f"{q!r}: {_ids(got)} != {_ids(want)}")
        return problems

    async def go():
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(base_url=server, timeout=60, limits=limits) as c:
            return await asyncio.gather(*(client_task(c, w) for w in range(16)))

    problems = [p for ps in asyncio.run(go()) for p in ps]
    assert problems == []


def _raw(url: str, data: bytes) -> tuple[int | None, dict[str, str], bytes]:
    """Send ``data`` as it is on a new connection and read until the server closes it: (status, headers,
    body); status None when the server closed without answering."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        if data:
            sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    if not head:
        return None, {}, b""
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


#: (name, bytes sent, status): requests the HTTP layer refuses, or that never arrive whole
RAW_REQUESTS = [
    ("negative Content-Length", b"POST /search HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
     b"Content-Length: -1\r\n\r\n{}", 400),
    ("Content-Length beside Transfer-Encoding", b"POST /search HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("malformed request line", b"NOT HTTP\r\n\r\n", 400),
    ("newline in the path", b"GET /indexes%0Ax HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", 404),
    ("half-sent headers", b"GET /health HTTP/1.1\r\nHost: t\r\n", 408),
    ("half-sent body", b"POST /search HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
     b"Content-Length: 100\r\n\r\n{\"query\": ", 408),
]  # fmt: skip


@pytest.mark.parametrize("name,data,status", RAW_REQUESTS, ids=[r[0] for r in RAW_REQUESTS])
def test_protocol_errors_and_unfinished_requests_get_json(server, name, data, status):
    """What uvicorn's parser refuses (it answers before the app) and requests that do not arrive whole
    within --request-timeout: JSON errors like every other, and the connection closed."""
    got, headers, body = _raw(server, data)
    assert got == status, body
    error = {400: "bad_request", 404: "not_found", 408: "request_timeout"}[status]
    assert headers["content-type"] == "application/json" and json.loads(body)["error"] == error


def test_idle_connections_are_closed_and_capped(server):
    """A connection that sends nothing is closed after --request-timeout, without an answer; beyond
    --max-connections open ones, a new connection gets 503 with Retry-After and is closed at once."""
    import socket

    import httpx

    host, port = server.removeprefix("http://").split(":")
    assert _raw(server, b"") == (None, {}, b"")  # closed, unanswered
    idle = [socket.create_connection((host, int(port))) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.3)  # accepted (they are closed only after REQUEST_TIMEOUT)
        status, headers, body = _raw(server, b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        assert status == 503 and headers["retry-after"] == "1" and "connections" in json.loads(body)["detail"]
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 60
    while (r := httpx.get(f"{server}/health", timeout=30)).status_code != 200:  # the closed ones are freed
        assert time.monotonic() < deadline, r.text
        time.sleep(0.1)


# ---------------------------------------------------------------------- bad requests, table-driven
@pytest.fixture(scope="module")
def strict_client(tiny_index):
    """Small limits, so every cap is reachable with small requests."""
    from clir.serve import ServeSettings, create_app

    settings = ServeSettings(max_body_bytes=4096, max_batch_queries=5, max_batch_chars=200, max_batch_size=2)
    with TestClient(create_app({"tiny": tiny_index}, settings)) as c:
        yield c


JSON = {"content-type": "application/json"}
#: (name, method, path, request kwargs, status, fragment of the detail): the place for the next bad request
BAD_REQUESTS = [
    ("lone high surrogate", "POST", "/search", {"json": {"query": "\ud800 Faust"}}, 422, "lone surrogate"),
    ("lone low surrogate", "POST", "/search", {"json": {"query": "\udc80"}}, 422, "lone surrogate"),
    ("surrogate in query_lang", "POST", "/search", {"json": {"query": "cat", "query_lang": "\ud800"}}, 422,
     "query_lang"),
    ("one surrogate in a batch", "POST", "/search/batch", {"json": {"queries": ["cat", "\ud800 Faust"]}}, 422,
     "query 1: invalid Unicode"),
    ("empty query", "POST", "/search", {"json": {"query": ""}}, 422, "empty"),
    ("k of 0", "POST", "/search", {"json": {"query": "cat", "k": 0}}, 422, "k"),
    ("misspelt field", "POST", "/search", {"json": {"query": "cat", "topk": 3}}, 422, "topk"),
    ("malformed JSON", "POST", "/search", {"content": b'{"query": ', "headers": JSON}, 422, "malformed JSON"),
    ("JSON that is not an object", "POST", "/search", {"content": b'["cat"]', "headers": JSON}, 422, ""),
    ("invalid UTF-8 body", "POST", "/search", {"content": b'{"query": "caf\xff"}', "headers": JSON}, 400, "parsing the body"),
    ("too many batch queries", "POST", "/search/batch", {"json": {"queries": ["cat"] * 6}}, 422,
     "at most 5 queries"),
    ("too many batch characters", "POST", "/search/batch", {"json": {"queries": ["x" * 100] * 3}}, 413,
     "max_batch_chars (200)"),
    ("body over max_body_bytes", "POST", "/search", {"json": {"query": "cat " * 2000}}, 413, "4096 bytes"),
    ("unknown index", "POST", "/search", {"json": {"query": "cat", "index": "nope"}}, 404, "nope"),
    ("unknown document", "GET", "/indexes/tiny/docs/no-such-doc", {}, 404, "no-such-doc"),
    ("unknown route", "GET", "/no/such/route", {}, 404, ""),
    ("wrong method", "DELETE", "/search", {}, 405, ""),
    ("newline in the path (log forging)", "GET", "/indexes%0A02:00:00 INFO clir.serve.access: FORGED", {}, 404,
     ""),
    ("escape character in a doc id", "GET", "/indexes/tiny/docs/%1B[31mred", {}, 404, "red"),
    ("k NaN", "POST", "/search", {"content": b'{"query": "cat", "k": NaN}', "headers": JSON}, 422, "k"),
    ("k Infinity", "POST", "/search", {"content": b'{"query": "cat", "k": Infinity}', "headers": JSON}, 422,
     "k"),
    ("NaN in a batch", "POST", "/search/batch", {"content": b'{"queries": ["cat"], "k": NaN}', "headers": JSON},
     422, "k"),
]  # fmt: skip


@pytest.mark.parametrize(
    "name,method,path,kwargs,status,fragment", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_requests_are_4xx_json(strict_client, name, method, path, kwargs, status, fragment):
    # JSON goes out as ASCII escapes ("\\ud800"), as clients send it; httpx would refuse to encode a surrogate
    if "json" in kwargs:
        kwargs = {"content": json.dumps(kwargs["json"]).encode(), "headers": JSON}
    r = strict_client.request(method, path, **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) >= {"error", "detail"} and fragment in str(body["detail"]), body
    # the server keeps serving
    assert strict_client.post("/search", json={"query": "cat", "k": 1}).status_code == 200


def test_batch_runs_in_slices_so_single_searches_interleave(strict_client, searcher, monkeypatch):
    import clir.serve.batching as batching_module
    import clir.serve.routes as routes_module

    sizes = []
    real = routes_module.run_jobs

    def spy(encoder, jobs, **kw):
        sizes.append(len(jobs))
        return real(encoder, jobs, **kw)

    # slices run on the micro-batcher's lanes (batching), or directly without micro-batching (routes)
    monkeypatch.setattr(routes_module, "run_jobs", spy)
    monkeypatch.setattr(batching_module, "run_jobs", spy)
    r = strict_client.post("/search/batch", json={"queries": QUERIES[:5], "k": 3})
    assert r.status_code == 200
    assert sizes == [2, 2, 1]  # max_batch_size each: the encoder is free between slices
    for item, q in zip(r.json()["results"], QUERIES[:5], strict=True):
        assert _ids(item["hits"]) == _ids(searcher.search(q, 3))


def test_head_health_and_offline_docs(client):
    r = client.head("/health")
    assert r.status_code == 200 and r.content == b""
    page = client.get("/docs").text
    assert "cdn" not in page.lower()
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/docs/assets/{asset}" in page
        got = client.get(f"/docs/assets/{asset}")
        assert got.status_code == 200 and len(got.content) > 10_000
    assert client.get("/redoc").status_code == 404  # ReDoc only exists on a CDN


def test_client_that_leaves_mid_body_is_logged_499_not_500(client, caplog):
    messages = iter(
        [{"type": "http.request", "body": b'{"query": ', "more_body": True}, {"type": "http.disconnect"}]
    )
    sent = []

    async def receive():
        return next(messages)

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "path": "/search",
        "raw_path": b"/search",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 5555),
        "server": ("testserver", 80),
        "scheme": "http",
    }
    with caplog.at_level(logging.INFO, logger="clir.serve"):
        asyncio.run(client.app(scope, receive, send))
    assert sent == []  # nothing to answer: the client is gone
    access = [r.getMessage() for r in caplog.records if r.name == "clir.serve.access"]
    assert len(access) == 1 and '"POST /search" 499' in access[0], access
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_clir_serve_exempts_its_startup_objects_from_full_gc_passes(tiny_index, monkeypatch):
    """`clir serve` freezes what loading made before it serves (a full GC pass over it stalled every
    request ~300 ms); an app made with create_app alone, as embedders do, leaves the host's GC as it is."""
    import gc

    import uvicorn

    from clir.cli.main import main
    from clir.serve import create_app

    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # what run() would set, restored afterwards
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(frozen=gc.get_freeze_count()))
    gc.unfreeze()
    try:
        create_app({"tiny": tiny_index})
        assert gc.get_freeze_count() == 0
        assert main(["serve", "--index", f"tiny={tiny_index}", "--port", "0"]) == 0
    finally:
        gc.unfreeze()
    assert seen["frozen"] > 0
