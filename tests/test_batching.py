"""The REST server's micro-batching: length buckets (optimal padding vs encoder calls) and answers under
concurrent mixed-length traffic equal to `clir search --query` within the stated tolerance."""

from __future__ import annotations

import asyncio
import itertools
import random

import numpy as np
import pytest

pytest.importorskip("fastapi")

from clir.serve.batching import length_buckets  # noqa: E402

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


def _cost(groups, lengths, call_cost):
    return sum(call_cost + len(g) * max(lengths[i] for i in g) for g in groups)


def _brute_force(lengths, call_cost):
    vals = sorted(set(lengths))
    best = float("inf")
    for cuts in itertools.product([False, True], repeat=len(vals) - 1):
        groups, cur = [], [vals[0]]
        for v, cut in zip(vals[1:], cuts, strict=True):
            if cut:
                groups.append(cur)
                cur = []
            cur.append(v)
        groups.append(cur)
        pos = [[i for i, n in enumerate(lengths) if n in set(g)] for g in groups]
        best = min(best, _cost(pos, lengths, call_cost))
    return best


@pytest.mark.parametrize("seed", range(20))
def test_length_buckets_are_optimal_and_cover_every_query(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(3, 40) for _ in range(rng.randint(1, 12))]
    call_cost = rng.choice([0, 8, 64, 1000])
    groups = length_buckets(lengths, call_cost)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert _cost(groups, lengths, call_cost) == _brute_force(lengths, call_cost)


def test_length_buckets_extremes():
    assert length_buckets([]) == []
    assert length_buckets([7, 7, 7]) == [[0, 1, 2]]
    # calls cost nothing: each length on its own (no padding at all); calls dear: one padded call
    assert sorted(map(sorted, length_buckets([5, 9, 5, 30], call_cost=0))) == [[0, 2], [1], [3]]
    assert length_buckets([5, 9, 5, 30], call_cost=10_000) == [[0, 2, 1, 3]]
    # 1,000 queries (the /search/batch limit) cost no more than their distinct lengths
    assert len(length_buckets([i % 50 + 3 for i in range(1000)])) <= 50


def test_concurrent_mixed_length_requests_match_single_searches(tiny_bert, tiny_collection, tmp_path):
    """Concurrent /search requests of many lengths, batched (padded buckets, the default): each answer
    equals `Searcher.search` for that query alone (top-10 ids; scores within 1e-3)."""
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
    app = create_app({"tiny": searcher}, ServeSettings(batch_window_ms=20))
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
    for q, r in zip(queries, responses, strict=True):
        assert r.status_code == 200, r.text
        hits = r.json()["hits"]
        ref = searcher.search(q, 10)
        assert [h["doc_id"] for h in hits] == [h.doc_id for h in ref]
        assert np.abs(np.array([h["score"] for h in hits]) - [h.score for h in ref]).max() <= 1e-3
