"""The benchmark scripts' building blocks on the tiny model (correctness only: nothing here is timed)."""

from __future__ import annotations

import numpy as np
import pytest

from eval.bench import common


def _enc(tiny_bert, **over):
    from clir.model import load_encoder

    settings = {"pooling": "mean", "normalize": True, "passage_prefix": "passage: ", "precision": "fp32"}
    return load_encoder(str(tiny_bert), {**settings, **over})


TEXTS = [
    "ein kurzer Satz",
    "a much longer sentence with quite a few more words in it",
    "x",
    "Привет мир",
    "猫",
]


def test_write_section_replaces_only_its_own_section(tmp_path):
    path = tmp_path / "RESULTS.md"
    common.write_section("A", "first", path)
    common.write_section("REST serving", "kept as is\n\n| a | b |", path)
    common.write_section("A", "second", path)
    text = path.read_text()
    assert text.startswith("# Benchmarks")
    assert "second" in text and "first" not in text
    assert "## REST serving\n\nkept as is\n\n| a | b |" in text
    assert text.index("## A") < text.index("## REST serving")  # order kept


def test_alternate_interleaves_and_counts():
    calls: list[str] = []
    times = common.alternate(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, warmup=1
    )
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}


def test_padding_share_orders(tiny_bert):
    from eval.bench.encode_throughput import padding_share

    enc = _enc(tiny_bert)
    texts = TEXTS * 10
    by_tokens = padding_share(enc.tokenizer, texts, 8, "tokens")
    unsorted = padding_share(enc.tokenizer, texts, 8, "none")
    assert 0 <= by_tokens < unsorted < 1


def test_sentence_transformers_peer_matches_clir(tiny_bert):
    pytest.importorskip("sentence_transformers")
    from eval.bench.encode_throughput import build_sentence_transformer, clir_encode, cosines, st_encode

    enc = _enc(tiny_bert)
    st = build_sentence_transformer(str(tiny_bert), enc.config.max_passage_length)
    ours = clir_encode(enc, TEXTS, 2, "fp32")
    theirs = st_encode(st, TEXTS, 2)
    assert cosines(ours, theirs).min() >= 0.9999


def test_bf16_cached_weight_copies_are_bit_identical(tiny_bert, monkeypatch):
    import torch

    from clir.model import encoder

    enc = _enc(tiny_bert, precision="bf16")
    cached = enc.encode_passages(TEXTS)
    casts = []
    real_cast = encoder.cast_linear_params
    monkeypatch.setattr(encoder, "cast_linear_params", lambda *a: casts.append(a) or real_cast(*a))
    enc.cache_casts = False  # plain autocast, casting weights on each call
    plain = enc.encode_passages(TEXTS)
    assert casts == []  # what search's "casting weights per call" row measures: no kept copies used
    enc.cache_casts = True
    assert np.array_equal(cached, enc.encode_passages(TEXTS)) and casts  # the kept copies again
    assert np.array_equal(cached, plain)
    with torch.no_grad():  # an in-place update (a training step) must refresh the copies
        for p in enc.passage_model.parameters():
            p.mul_(1.5)
    updated = enc.encode_passages(TEXTS)
    enc.cache_casts = False
    assert np.array_equal(updated, enc.encode_passages(TEXTS))
    assert not np.allclose(updated, cached)


def test_packing_can_be_switched_off_for_the_padded_comparison(tiny_bert, monkeypatch):
    """``DualEncoder.allow_packing = False`` (encode_throughput's lever A/B): padded batches of one width
    each, never a packed row; the vectors agree with the packed ones to fp32 rounding."""
    from clir.model import packing

    enc = _enc(tiny_bert)
    rows = []
    real_pack = packing.pack
    monkeypatch.setattr(packing, "pack", lambda *a: rows.append(a) or real_pack(*a))
    packed = enc.encode_passages(TEXTS)
    assert enc.packs("passage") and rows  # the tiny model packs: the switch has something to turn off
    rows.clear()
    enc.allow_packing = False
    padded = enc.encode_passages(TEXTS)
    assert rows == [] and enc.replica().allow_packing is False  # a replica keeps its original's switches
    assert np.abs(packed - padded).max() < 1e-5


def test_encoding_levers_on_the_tiny_model(tiny_bert):
    """encode_throughput's lever A/Bs (all but the e5-only attention swap and torch.compile): one row per
    lever, the encoder's switches and process settings restored after each."""
    import torch

    from eval.bench.encode_levers import LeverAB, precision_and_batching, runtime_settings, tokenisation

    enc = _enc(tiny_bert)
    threads = torch.get_num_threads()
    lab = LeverAB(enc, TEXTS * 4, 4, rounds=1)
    precision_and_batching(lab)
    runtime_settings(lab)
    tokenisation(lab)
    names = [r["lever"] for r in lab.rows]
    assert names[:4] == [
        "bf16 autocast (precision auto on this CPU)",
        "packed batches (clir.model.packing)",
        "length bucketing (sort by token count)",
        "flush denormals",
    ]
    assert names[-1] == "tokenisation overlapped with compute (upper bound)"
    assert all(r["gain"] > 0 for r in lab.rows)
    assert enc.allow_packing and torch.get_num_threads() == threads


def test_int8_encoder_stays_close(tiny_bert):
    from eval.bench.int8 import quantized_encoder

    enc = _enc(tiny_bert)
    ref = enc.encode_passages(TEXTS)
    q = quantized_encoder(enc).encode_passages(TEXTS)
    cos = (q * ref).sum(1)
    assert cos.min() > 0.9 and not np.array_equal(q, ref)


def test_faiss_scaling_small():
    from eval.bench.faiss_scaling import run

    rows = run([3000], budget_s=60, n_queries=20, hnsw_max=10_000)
    kinds = {r["index"]: r for r in rows}
    assert set(kinds) == {"Flat", "HNSW32", "IVF256,PQ32"}
    assert kinds["Flat"]["recall"] == {"exact": 1.0}
    for r in rows:
        assert all(0 <= v <= 1 for v in r["recall"].values()) and r["bytes"] > 0
    assert kinds["IVF256,PQ32"]["bytes"] < kinds["Flat"]["bytes"] / 4  # 32-byte codes vs 1536-byte vectors
    assert kinds["HNSW32"]["recall"]["efSearch=128"] > 0.8


def test_flat_search_paths_return_the_same_neighbours(capsys):
    from eval.bench.flat_search import main as flat_search

    assert flat_search(["--size", "3000", "--dim", "16", "--rounds", "1", "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "Same neighbours on every path: yes" in out and "| 1 | 32 |" in out


def test_gpu_flops_model():
    from eval.bench.gpu_encode import flops_per_token, peak_tflops

    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("Some Card") is None

    class Cfg:
        num_hidden_layers, hidden_size = 2, 8

    class Model:
        config = Cfg()

        def named_parameters(self):
            import torch

            return [("embeddings.word", torch.zeros(100, 8)), ("layer.w", torch.zeros(8, 8))]

    assert flops_per_token(Model(), 16) == 2 * 64 + 4 * 2 * 16 * 8


def test_the_batcher_in_process_answers_every_client(tiny_bert, tiny_collection, tmp_path):
    """serve_ceiling's ``batcher`` command: clir serve's micro-batcher in a closed loop, no HTTP."""
    from clir.index import IndexArgs, build_index
    from clir.search import Searcher
    from eval.bench.serve_ceiling import closed_loop
    from eval.bench.serve_load import merge_batcher

    index = build_index(
        IndexArgs(collection=str(tiny_collection), model=str(tiny_bert), out=str(tmp_path / "ix"))
    ).path
    searcher = Searcher(index)
    runs = [closed_loop(searcher, ["die katze", "the weather", "ein hund im park"], 4, 0.5) for _ in range(2)]
    for r in runs:
        assert r["queries"] == len(r["latencies_ms"]) > 4 and all(x > 0 for x in r["latencies_ms"])
        assert 1 <= r["batch_mean"] <= 4  # four clients: never more than four queries waiting
    merged = merge_batcher(runs)
    assert merged["p50_ms"] <= merged["p99_ms"] and merged["qps"] > 0


def test_serve_load_reports_the_machines_steal_over_its_slices():
    """Steal and idle come from summed /proc/stat tick deltas; a slice without them leaves them out."""
    from eval.bench import common
    from eval.bench.serve_load import merge

    def run(ticks):
        return {"clients": 2, "latencies_ms": [10.0, 20.0], "errors": [], "seconds": 1.0, "ticks": ticks}

    # user, nice, system, idle, iowait, irq, softirq, steal
    a, b = [50, 0, 10, 20, 0, 0, 0, 20], [70, 0, 0, 0, 0, 0, 0, 30]
    row = merge([run(a), run(b)])
    assert row["steal"] == pytest.approx(50 / 200) and row["idle"] == pytest.approx(20 / 200)
    assert "steal" not in merge([run(a), run(None)])
    before = common.cpu_ticks()
    if before is None:
        pytest.skip("no /proc/stat here")
    sum(i * i for i in range(200_000))  # some CPU time passes
    shares = common.cpu_shares(common.ticks_between(before, common.cpu_ticks()))
    assert not shares or 0 <= shares["steal"] <= 1 and 0 <= shares["idle"] <= 1


def test_contrastive_train_contenders_on_the_tiny_model(tiny_bert, tmp_path, one_torch_thread):
    import json

    from clir.config import AdapterArch, DataConfig, ModelConfig, OptimConfig, TrainConfig
    from clir.testing import _LINES
    from eval.bench.contrastive_train import contender, dev_loss, report, split

    en, de = _LINES["en"], _LINES["de"]
    triples = tmp_path / "t.jsonl"
    rows = [
        {"query": f"{en[i % 8]} {r}", "positive": de[i % 8], "negative": de[(i + 1) % 8]}
        for r in range(40)
        for i in range(8)
    ]
    triples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train_path, dev = split(triples, tmp_path)
    assert dev and len(dev) + len(train_path.read_text().splitlines()) == len(rows)
    cfg = TrainConfig(
        model=ModelConfig(
            backbone=str(tiny_bert), adapter_mode="task", task_adapter=AdapterArch(reduction_factor=2)
        ),
        data=DataConfig(triples=str(train_path), shuffle_block=8),
        optim=OptimConfig(batch_size=4, max_steps=10, lr=1e-2, precision="fp32"),
    )
    cs = [contender("before", cfg, train_path, legacy=True), contender("now", cfg, train_path)]
    for c in cs:
        c.step()
        c.step()
        c.dev[2] = dev_loss(c, dev, batch=4)
    assert all(len(c.times) == 2 and c.dev[2] > 0 for c in cs)
    assert "| before |" in report(cs, dev, type("A", (), {"steps": 2})(), "0 0 0")
