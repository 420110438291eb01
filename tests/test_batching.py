"""Batched encoding and the REST server's micro-batching: texts of any lengths share one packed forward
(clir.model.packing), with query-side products in row blocks where the CPU's kernels round by row count
(clir.model.rowblocks), so answers under concurrent mixed-length traffic equal `clir search --query`."""

from __future__ import annotations

import asyncio
import random
import sys

import numpy as np
import pytest

pytest.importorskip("fastapi")

MIXED = [
    "cat",
    "the cat sits on the mat",
    "where is the train station in the old town near the river",
    "bread",
    "history of the roman empire and its fall in the west",
    "football world cup final",
    "quantum",
    "the river flows to the sea",
    "how to bake bread at home without yeast or an oven",
    "climate change and the oceans",
]


def test_padded_width_rounds_up_within_the_limit():
    from clir.model.encoder import PAD_MULTIPLE, padded_width

    assert PAD_MULTIPLE == 8
    assert [padded_width(n, 64) for n in (1, 7, 8, 9, 16, 17, 63, 64)] == [8, 8, 8, 16, 16, 24, 64, 64]
    assert padded_width(61, 62) == 62  # never beyond the encoder's limit ...
    assert padded_width(70, 62) == 70  # ... nor below the text itself


def _tiny_xlmr(tiny_bert, out):
    """A random XLM-RoBERTa with tiny_bert's tokenizer: positions counted from padding_idx + 1."""
    import shutil

    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    shutil.copytree(tiny_bert, out)
    torch.manual_seed(0)
    cfg = XLMRobertaConfig(vocab_size=600, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=128, max_position_embeddings=130, pad_token_id=0)  # fmt: skip
    XLMRobertaModel(cfg, add_pooling_layer=False).save_pretrained(out)
    return out


@pytest.mark.parametrize("kind", ["bert", "madx", "xlm-roberta"])
def test_packed_batches_equal_padded_encoding(tiny_bert, tmp_path, monkeypatch, kind):
    """fp32: a batch of mixed lengths runs as packed rows, and each vector equals the padded, masked
    encoding (the training path), for a plain BERT, a MAD-X adapter stack and RoBERTa-style positions."""
    import torch

    from clir.model import load_encoder, packing

    settings = {"pooling": "mean", "normalize": True, "precision": "fp32"}
    model = str(_tiny_xlmr(tiny_bert, tmp_path / "xlmr")) if kind == "xlm-roberta" else str(tiny_bert)
    if kind == "madx":
        settings.update(adapter_mode="madx", language_adapters={"en": "new", "de": "new"})
    enc = load_encoder(model, settings)
    packs: list[int] = []
    real_pack = packing.pack
    monkeypatch.setattr(packing, "pack", lambda m, ids, d: packs.append(len(ids)) or real_pack(m, ids, d))
    queries = MIXED * 2
    enc.encode_passages(queries[:1], lang="de")  # the first call also probes the model (a pack of two)
    packs.clear()
    packed = enc.encode_passages(queries, lang="de", batch_size=8)
    assert packs == [8, 8, 4]  # one forward per batch, whatever the lengths
    with torch.no_grad():
        padded = enc.forward(enc.tokenize(queries, "passage"), "passage", "de").numpy()
    assert np.abs(packed - padded).max() < 1e-5


def test_bf16_vectors_do_not_depend_on_their_batch(tiny_bert):
    """bf16 autocast (the default precision on a CPU with bf16): a query encodes to the same vector alone,
    in a batch of mixed lengths, and in another order and batch size (within bf16 rounding: some CPUs'
    matrix kernels round differently by the number of rows)."""
    from clir.model import load_encoder

    enc = load_encoder(str(tiny_bert), {"pooling": "mean", "normalize": True, "precision": "bf16"})
    queries = MIXED * 2
    batched = enc.encode_queries(queries, batch_size=64)
    alone = np.stack([enc.encode_queries([q])[0] for q in queries])
    shuffled = list(range(len(queries)))
    random.Random(0).shuffle(shuffled)
    other = enc.encode_queries([queries[i] for i in shuffled], batch_size=3)
    assert np.abs(batched - alone).max() < 2e-3
    assert np.abs(other - batched[shuffled]).max() < 2e-3
    fp32 = load_encoder(str(tiny_bert), {"pooling": "mean", "normalize": True, "precision": "fp32"})
    assert np.abs(fp32.encode_queries(queries) - batched).max() > 0  # bf16 really ran


@pytest.mark.parametrize("shape", [(64, 64), (256, 64), (1536, 384)])
def test_row_blocks_make_batched_products_equal_lone_ones(shape):
    """Whatever row_block answers for a shape holds on fresh data: with its block (0: none), every row of a
    batched product equals the row's product alone, bit for bit, at any offset."""
    import torch
    import torch.nn.functional as F

    from clir.model.rowblocks import BLOCKS, row_block

    k, n = shape
    dtype = torch.bfloat16
    block = row_block(k, n, dtype, torch.device("cpu"))
    assert block in (0, None, *BLOCKS)
    if block is None:
        pytest.skip(f"no row block makes {k} x {n} products row-independent on this CPU")
    g = torch.Generator().manual_seed(1)
    w, b = torch.randn(n, k, generator=g).to(dtype), torch.randn(n, generator=g).to(dtype)
    x = torch.randn(300, k, generator=g).to(dtype)
    alone = torch.cat([F.linear(x[i : i + 1], w, b) for i in range(len(x))])
    for offset in (0, 5):
        rows = x[offset:]
        batched = torch.cat([F.linear(p, w, b) for p in rows.split(block or len(rows))])
        assert torch.equal(batched, alone[offset:])


def test_blocked_linear_runs_blocks_of_at_most_the_given_rows(monkeypatch):
    import types

    import torch
    import torch.nn.functional as F

    from clir.model import packing

    x, w, b = torch.randn(1, 10, 8), torch.randn(5, 8), torch.randn(5)
    calls: list[int] = []

    def linear(x, w, b):
        calls.append(x.shape[-2])
        return F.linear(x, w, b)

    monkeypatch.setattr(packing, "F", types.SimpleNamespace(linear=linear))
    out = packing.blocked_linear(x, w, b, 4)
    assert calls == [4, 4, 2]
    assert torch.allclose(out, F.linear(x, w, b), atol=1e-6)
    calls.clear()
    packing.blocked_linear(x, w, b, None)
    assert calls == [10]


def test_packed_query_batches_use_the_row_blocks(tiny_bert, monkeypatch):
    """Row blocks set for the model's products reach every product of a packed query batch, which still
    equals the padded fp32 encoding; a lone query that fits every block skips the mode."""
    import torch

    from clir.model import load_encoder, packing
    from clir.model.rowblocks import linear_shapes

    enc = load_encoder(str(tiny_bert), {"pooling": "mean", "normalize": True, "precision": "fp32"})
    model = enc.query_model
    shapes = linear_shapes(model)
    enc._blocks[(id(model), None)] = dict.fromkeys(shapes, 4)
    seen: list[int | None] = []
    real = packing.blocked_linear
    monkeypatch.setattr(packing, "blocked_linear", lambda x, w, b, n: seen.append(n) or real(x, w, b, n))
    enc._packs_texts(model, "query")  # the probe runs first, outside the count
    vecs = enc.encode_queries(MIXED)
    assert seen and set(seen) == {4}
    with torch.no_grad():
        ref = enc.forward(enc.tokenize(MIXED, "query"), "query", "en").numpy()
    assert np.abs(vecs - ref).max() < 1e-5
    seen.clear()
    enc._blocks[(id(model), None)] = dict.fromkeys(shapes, 64)
    enc.encode_queries(["cat"])
    assert seen == []  # fits every block: no mode, no per-operation dispatch


def test_a_model_whose_attention_cannot_be_split_encodes_padded(tiny_bert):
    """Eager attention spans the whole row: the probe sees packed states differ from padded ones, and the
    encoder falls back to batches of one padded width (vectors still equal the masked encoding)."""
    import torch
    from transformers.models.bert.modeling_bert import BertSelfAttention

    from clir.model import load_encoder

    enc = load_encoder(str(tiny_bert), {"pooling": "mean", "normalize": True, "precision": "fp32"})
    for layer in enc.query_model.encoder.layer:
        layer.attention.self.__class__ = BertSelfAttention  # what attn_implementation="eager" loads
    widths: list[int] = []
    real_pad = enc._pad

    def spy(feats, width):
        widths.append(width)
        return real_pad(feats, width)

    enc._pad = spy  # type: ignore[method-assign]
    vecs = enc.encode_queries(MIXED)
    assert list(enc._packs.values()) == [False]
    assert len(widths) > 1 and all(w % 8 == 0 for w in widths)  # one padded width per batch
    with torch.no_grad():
        ref = enc.forward(enc.tokenize(MIXED, "query"), "query", "en").numpy()
    assert np.abs(vecs - ref).max() < 1e-5


@pytest.mark.parametrize("lanes", [1, 2])
def test_concurrent_mixed_length_requests_match_single_searches(tiny_bert, tiny_collection, tmp_path, lanes):
    """Concurrent /search requests of many lengths, micro-batched on one or two lanes: each answer equals
    `Searcher.search` for that query alone (top-10 ids and scores)."""
    import httpx

    from clir.index import IndexArgs, build_index
    from clir.search import Searcher
    from clir.serve import ServeSettings, create_app

    out = tmp_path / "idx"
    build_index(
        IndexArgs(
            collection=str(tiny_collection),
            model=str(tiny_bert),
            out=str(out),
            overrides={"pooling": "mean", "normalize": True},  # precision auto: bf16 where the CPU has it
        )
    )
    searcher = Searcher(out)
    app = create_app({"tiny": searcher}, ServeSettings(batch_window_ms=20, lanes=lanes))
    queries = MIXED * 3

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            rs = await asyncio.gather(*(c.post("/search", json={"query": q, "k": 10}) for q in queries))
        batcher = next(iter(app.state.clir.batchers.values()))
        await batcher.stop()
        return rs, batcher

    responses, batcher = asyncio.run(go())
    assert batcher.batches < len(queries)  # requests really shared encoder calls
    assert len(batcher.lanes) == lanes
    for q, r in zip(queries, responses, strict=True):
        assert r.status_code == 200, r.text
        hits = r.json()["hits"]
        ref = searcher.search(q, 10)
        assert [h["doc_id"] for h in hits] == [h.doc_id for h in ref]
        assert [h["score"] for h in hits] == pytest.approx([h.score for h in ref], abs=1e-4)


# ---------------------------------------------------------------------- lanes
class _SlowEncoder:
    """Stands in for DualEncoder in the batcher: records each batch, and takes ``seconds`` per batch."""

    def __init__(self, seconds: float, log: list[list[str]]) -> None:
        self.seconds, self.log = seconds, log

    def replica(self):
        return _SlowEncoder(self.seconds, self.log)

    def exclusive(self):
        import contextlib

        return contextlib.nullcontext()

    def count_tokens(self, text, side="query"):
        return len(text.split()), False

    def encode_queries(self, texts, lang="en", **kw):
        import time

        self.log.append(list(texts))
        time.sleep(self.seconds)
        return np.zeros((len(texts), 4), dtype=np.float32)


class _Searcher:
    def search_vectors(self, vectors, k):
        return np.zeros((len(vectors), k), dtype=np.float32), np.zeros((len(vectors), k), dtype=np.int64)


def _batches_of(
    arrivals: list[tuple[float, str]], lanes: int, seconds: float, monkeypatch, gap: float = 0.2
) -> list[list[str]]:
    """Submit each query at its time (s); the batches the encoder saw, in order."""
    from clir.serve import batching

    monkeypatch.setattr(batching, "GATHER_GAP", gap)  # wide margins: timing on a busy machine varies
    monkeypatch.setattr(batching, "GATHER_MAX", 2.0)
    log: list[list[str]] = []
    batcher = batching.MicroBatcher(_SlowEncoder(seconds, log), lanes=lanes)

    async def go():
        async def one(at, q):
            await asyncio.sleep(at)
            return await batcher.submit(batching.Job(_Searcher(), q, 1, "en"))

        await asyncio.gather(*(one(at, q) for at, q in arrivals))
        await batcher.stop()

    asyncio.run(go())
    batcher.close()
    return log


def test_a_free_lane_gathers_arrivals_while_another_is_busy(monkeypatch):
    """Lane 1 comes free while lane 0 works: it waits for arrivals to pause instead of taking the first
    query alone. With both lanes idle, a query starts at once."""
    arrivals = [(0.0, "a"), (0.1, "b"), (0.15, "c")]
    assert _batches_of(arrivals, lanes=2, seconds=1.0, monkeypatch=monkeypatch) == [["a"], ["b", "c"]]
    # one lane: queries wait while it works, and the next batch takes them all
    assert _batches_of(arrivals, lanes=1, seconds=1.0, monkeypatch=monkeypatch) == [["a"], ["b", "c"]]
    lone = [(0.0, "a"), (0.6, "b")]  # b comes after a's batch is done: both lanes idle, no wait
    assert _batches_of(lone, lanes=2, seconds=0.05, monkeypatch=monkeypatch) == [["a"], ["b"]]


def test_a_free_lane_waits_past_a_pause_for_as_many_queries_as_the_busy_lane_holds(monkeypatch):
    """Lane 1 runs b and c; lane 0 comes free and d arrives, then e after a pause longer than GATHER_GAP
    (while lane 1 still works): lane 0 waits for a second query, as many as lane 1 holds, instead of
    leaving e to wait a whole batch."""
    arrivals = [(0.0, "a"), (0.6, "b"), (0.6, "c"), (1.1, "d"), (1.3, "e")]
    got = _batches_of(arrivals, lanes=2, seconds=1.0, monkeypatch=monkeypatch, gap=0.05)
    assert got == [["a"], ["b", "c"], ["d", "e"]]


def test_lanes_take_even_shares(monkeypatch):
    """A burst is split evenly over idle lanes, and a lane leaves queries for a busy one rather than running
    a much larger batch beside it (unequal batches cost more per query)."""
    burst = [(0.0, q) for q in "abcdef"]
    assert _batches_of(burst, lanes=2, seconds=0.5, monkeypatch=monkeypatch) == [list("abc"), list("def")]
    assert _batches_of(burst, lanes=1, seconds=0.5, monkeypatch=monkeypatch) == [list("abcdef")]
    # lane 0 runs a; b..e arrive while it works: lane 1 takes an even share of the 5 queries (3), and the
    # one left waits for the next free lane
    later = [(0.0, "a"), (0.1, "b"), (0.12, "c"), (0.14, "d"), (0.16, "e")]
    assert _batches_of(later, lanes=2, seconds=1.0, monkeypatch=monkeypatch) == [["a"], list("bcd"), ["e"]]


def test_a_lone_lane_spreads_over_all_threads_only_for_large_batches():
    """Threads (2, 1): a lane alone takes both threads for a batch of ALONE_MIN_BATCH queries (a
    /search/batch slice) but one for a single query, where a second thread costs more than it shares."""
    import torch

    from clir.serve import batching

    seen: list[tuple[int, int]] = []

    class _Counting(_SlowEncoder):
        def replica(self):
            return _Counting(self.seconds, self.log)

        def encode_queries(self, texts, lang="en", **kw):
            seen.append((len(texts), torch.get_num_threads()))
            return super().encode_queries(texts, lang, **kw)

    batcher = batching.MicroBatcher(_Counting(0.0, []), lanes=2, threads=(2, 1))

    async def go():
        job = batching.Job(_Searcher(), "q", 1, "en")
        await batcher.submit(job)  # both lanes idle: alone
        await batcher.run_now([job] * batching.ALONE_MIN_BATCH)
        await batcher.stop()

    asyncio.run(go())
    batcher.close()
    assert seen == [(1, 1), (batching.ALONE_MIN_BATCH, 2)]


@pytest.mark.skipif(sys.platform != "linux", reason="nice is per thread on Linux only")
def test_lanes_run_below_the_event_loop_priority():
    import os
    import threading

    from clir.serve import batching

    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = nice()
    batcher = batching.MicroBatcher(_SlowEncoder(0.0, []), lanes=2)
    try:
        lanes = [pool.submit(nice).result() for pool in batcher._pools]
    finally:
        batcher.close()
    assert lanes == [min(19, before + batching.LANE_NICE)] * 2
    assert nice() == before  # the caller (the event loop's thread) keeps its priority


def test_lane_threads_stay_in_their_lane():
    """A lane's OpenMP thread count applies to its own thread: the process default that new threads
    start with, and the caller's count, are unchanged."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from clir.serve.batching import _set_thread_count
    from clir.serve.state import lane_plan

    default = torch.get_num_threads()
    assert lane_plan(None, "cuda") == (1, None)
    assert lane_plan(1, "cpu") == (1, None)
    assert lane_plan(3, "cpu") == (3, (default, max(1, default // 3)))
    assert lane_plan(None, "cpu")[0] == min(2, default)
    with ThreadPoolExecutor(1) as lane:
        assert lane.submit(lambda: (_set_thread_count(1, default), torch.get_num_threads())[1]).result() == 1
        assert lane.submit(torch.get_num_threads).result() == 1  # it stays for the lane's later batches
    seen: list[int] = []
    fresh = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    fresh.start()
    fresh.join()
    assert seen == [default] and torch.get_num_threads() == default


def test_batches_take_turns_and_a_single_query_goes_before_them(monkeypatch):
    """One lane, two /search/batch calls of three slices each and a single query arriving during the
    first slice: the lane goes to the single query next, then to the batches in turn. (A slice that gave
    its lane back used to take it again at once: the single query waited for both whole batches.)"""
    from clir.serve import batching

    monkeypatch.setattr(batching, "BATCH_SLICE_S", 60.0)  # slices of max_batch_size (2) here
    log: list[list[str]] = []
    batcher = batching.MicroBatcher(_SlowEncoder(0.3, log), lanes=1, max_batch=2)

    def jobs(name: str) -> list:
        return [batching.Job(_Searcher(), f"{name}{i}", 1, "en") for i in range(6)]

    async def go():
        a = asyncio.ensure_future(batcher.run_batch(jobs("a"), 2))
        b = asyncio.ensure_future(batcher.run_batch(jobs("b"), 2))
        while not log:  # a's first slice is running
            await asyncio.sleep(0.005)
        await batcher.submit(batching.Job(_Searcher(), "s", 1, "en"))
        await asyncio.gather(a, b)
        await batcher.stop()

    asyncio.run(go())
    batcher.close()
    assert log == [["a0", "a1"], ["s"], ["b0", "b1"], ["a2", "a3"], ["b2", "b3"], ["a4", "a5"], ["b4", "b5"]]
    assert batcher.pending == 0


def test_batches_keep_a_lane_under_a_stream_of_single_queries():
    """Two lanes: while single queries hold one, a waiting batch slice gets the next lane freed, even with
    more single queries waiting (they wait for at most the micro-batch on the other lane)."""
    from clir.serve.lanes import Lanes

    async def go():
        lanes = Lanes(2)
        first, second = await lanes.acquire(single=True), await lanes.acquire(single=True)
        batch = asyncio.ensure_future(lanes.acquire(single=False))
        single = asyncio.ensure_future(lanes.acquire(single=True))
        await asyncio.sleep(0)
        lanes.release(first)
        await asyncio.sleep(0)
        got_batch = batch.done() and batch.result() == first
        lanes.release(second)
        await asyncio.sleep(0)
        return got_batch, single.done() and single.result() == second

    assert asyncio.run(go()) == (True, True)


def test_batch_slices_shrink_only_while_single_queries_would_wait_for_them(monkeypatch):
    """While single queries come and no other lane is idle or busy with something short, a batch's slices
    shrink to take about BATCH_SLICE_S at the pace of the slices before (a single query waits for one
    slice); otherwise they stay whole (small slices cost throughput)."""
    from clir.serve import batching

    class _PerQuery(_SlowEncoder):  # ``seconds`` per query
        def replica(self):
            return _PerQuery(self.seconds, self.log)

        def encode_queries(self, texts, lang="en", **kw):
            import time

            self.log.append(list(texts))
            time.sleep(self.seconds * len(texts))
            return np.zeros((len(texts), 4), dtype=np.float32)

    monkeypatch.setattr(batching, "BATCH_SLICE_S", 0.05)
    monkeypatch.setattr(batching, "BATCH_SLICE_MIN", 8)  # above 0.05 s / 0.01 s: sleeps that overrun

    def sizes(lanes: int, single_first: bool) -> list[int]:
        log: list[list[str]] = []
        batcher = batching.MicroBatcher(_PerQuery(0.01, log), lanes=lanes)
        jobs = [batching.Job(_Searcher(), f"q{i}", 1, "en") for i in range(48)]

        async def go():
            if single_first:
                await batcher.submit(batching.Job(_Searcher(), "single", 1, "en"))
            results = await batcher.run_batch(jobs, 16)
            await batcher.stop()
            return results

        assert len(asyncio.run(go())) == 48
        batcher.close()
        return [len(b) for b in log if b != ["single"]]

    one = sizes(1, single_first=True)  # 16 queries took >= 0.16 s: then max(8, 0.05 / 0.01) a slice
    assert one == [16, 8, 8, 8, 8], one
    assert sizes(1, single_first=False) == [16] * 3  # no single query to wait
    assert sizes(2, single_first=True) == [16] * 3  # the other lane is idle
