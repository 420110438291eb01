"""The REST server's micro-batching: batches of one padded width each, so answers under concurrent
mixed-length traffic equal `clir search --query` bit for bit."""

from __future__ import annotations

import asyncio
import random

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


def test_batches_never_mix_padded_widths_and_vectors_do_not_depend_on_neighbours(tiny_bert):
    """bf16 autocast (the default precision on a CPU with bf16): a query encodes to the same vector alone,
    in a batch of mixed lengths, and in another order and batch size."""
    from clir.model import load_encoder

    enc = load_encoder(str(tiny_bert), {"pooling": "mean", "normalize": True, "precision": "bf16"})
    widths: list[int] = []
    real_pad = enc._pad

    def spy(feats, width):
        widths.append(width)
        assert all(len(f["input_ids"]) <= width < len(f["input_ids"]) + 8 for f in feats)
        return real_pad(feats, width)

    enc._pad = spy  # type: ignore[method-assign]
    queries = MIXED * 2
    batched = enc.encode_queries(queries, batch_size=64)
    assert len(widths) > 1 and all(w % 8 == 0 for w in widths)  # one call per padded width
    alone = np.stack([enc.encode_queries([q])[0] for q in queries])
    shuffled = list(range(len(queries)))
    random.Random(0).shuffle(shuffled)
    other = enc.encode_queries([queries[i] for i in shuffled], batch_size=3)
    assert np.array_equal(batched, alone)
    assert np.array_equal(other, batched[shuffled])


def test_concurrent_mixed_length_requests_match_single_searches(tiny_bert, tiny_collection, tmp_path):
    """Concurrent /search requests of many lengths, micro-batched: each answer equals `Searcher.search` for
    that query alone (top-10 ids and scores)."""
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
        assert [h["score"] for h in hits] == pytest.approx([h.score for h in ref], abs=1e-6)
