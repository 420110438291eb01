"""Index building, search and evaluation (clir/index, clir/search, clir/evaluate, their CLI verbs)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from clir.cli.main import main
from clir.errors import ClirError
from clir.index import IndexArgs, build_index, merge_indexes
from clir.search import Searcher
from clir.testing import index_docids, index_vectors, java21_home

FP32 = {"precision": "fp32", "pooling": "mean", "normalize": True}


def _args(coll, model, out, **kw) -> IndexArgs:
    kw.setdefault("overrides", dict(FP32))
    return IndexArgs(collection=str(coll), model=str(model), out=str(out), **kw)


def _cli(*argv: str) -> int:
    return main([str(a) for a in argv])


def test_end_to_end_cli(tiny_bert, tiny_collection, tmp_path, capsys):
    out = tmp_path / "idx"
    model = ["--model", tiny_bert, "--pooling", "mean", "--normalize", "--precision", "fp32"]
    assert _cli("index", "--collection", tiny_collection, "--out", out, *model) == 0
    assert json.loads(capsys.readouterr().out)["num_docs"] == 28
    for name in ("index", "docid", "manifest.json", "docs.jsonl", "docs.offsets.npy"):
        assert (out / name).is_file(), name
    assert not (out.parent / "idx.partial").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_docs"] == 28 and manifest["dim"] == 64 and manifest["factory"] == "Flat"
    assert manifest["encoder"]["pooling"] == "mean" and manifest["encoder"]["normalize"] is True
    assert manifest["doc_langs"] == {"de": 8, "ru": 7, "zh": 6, "fa": 4, "fr": 3}
    assert "torch" in manifest["versions"] and manifest["collection"] == str(tiny_collection)

    assert (
        _cli("search", "--index", out, "--query", "die katze sitzt auf der matte", "--k", "3", "--json") == 0
    )
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["doc_id"] == "de-0" and hits[0]["text"] == "die katze sitzt auf der matte"
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]

    run = tmp_path / "run.trec"
    assert _cli("search", "--index", out, "--queries", tiny_collection, "--run", run, "--k", "20") == 0
    lines = run.read_text().splitlines()
    assert len(lines) == 8 * 20
    qid, q0, docid, rank, score, tag = lines[0].split()
    assert (q0, rank, tag) == ("Q0", "1", "clir")
    capsys.readouterr()
    assert (
        _cli("evaluate", "--run", run, "--qrels", tiny_collection, "--metrics", "mrr@100", "recall@20") == 0
    )
    scores = json.loads(capsys.readouterr().out)
    assert 0 < scores["mrr@100"] <= 1 and scores["recall@20"] > 0

    # the same numbers through ranx directly
    import ranx

    direct = ranx.evaluate(
        ranx.Qrels.from_file(str(tiny_collection / "qrels.txt")), ranx.Run.from_file(str(run)), "mrr@100"
    )
    assert scores["mrr@100"] == pytest.approx(direct, abs=1e-4)


def test_resume_after_crash_equals_uninterrupted(tiny_bert, tiny_collection, tmp_path, monkeypatch):
    full = build_index(_args(tiny_collection, tiny_bert, tmp_path / "full", chunk_size=5))
    assert full.encoded_docs == 28

    import clir.index.build as build

    real = build.encode_records
    calls = {"n": 0}

    def crash_after_two(encoder, recs, batch_size, routing=None):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt  # a kill mid-build
        return real(encoder, recs, batch_size, routing)

    monkeypatch.setattr(build, "encode_records", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        build_index(_args(tiny_collection, tiny_bert, tmp_path / "re", chunk_size=5))
    assert not (tmp_path / "re").exists()
    assert len(list((tmp_path / "re.partial/chunks").glob("*.npy"))) == 2
    monkeypatch.setattr(build, "encode_records", real)

    # resuming with other settings is refused, not mixed (a typed refusal: the experiment runner starts
    # such an index over by catching the type, not by reading the message)
    from clir.errors import ResumeRefused

    with pytest.raises(ResumeRefused, match="different settings"):
        build_index(_args(tiny_collection, tiny_bert, tmp_path / "re", chunk_size=7, resume=True))
    res = build_index(_args(tiny_collection, tiny_bert, tmp_path / "re", chunk_size=5, resume=True))
    assert res.encoded_docs == 28 - 10  # only the missing chunks
    assert index_docids(tmp_path / "re") == index_docids(tmp_path / "full")
    np.testing.assert_array_equal(index_vectors(tmp_path / "re"), index_vectors(tmp_path / "full"))
    assert (tmp_path / "re/docs.jsonl").read_bytes() == (tmp_path / "full/docs.jsonl").read_bytes()


def test_shards_merge_to_the_single_build(tiny_bert, tiny_collection, tmp_path, capsys):
    single = build_index(_args(tiny_collection, tiny_bert, tmp_path / "single", chunk_size=4)).path
    shards = [
        build_index(_args(tiny_collection, tiny_bert, tmp_path / f"s{i}", chunk_size=4, shard=(i, 3))).path
        for i in range(3)
    ]
    assert sum(len(index_docids(s)) for s in shards) == 28
    with pytest.raises(ClirError, match=r"missing shard\(s\) \[1\]"):
        merge_indexes([shards[0], shards[2]], tmp_path / "bad")
    # through the CLI, shards in any order
    assert _cli("index", "merge", shards[2], shards[0], shards[1], "--out", tmp_path / "merged") == 0
    merged = tmp_path / "merged"
    assert index_docids(merged) == index_docids(single)
    np.testing.assert_allclose(index_vectors(merged), index_vectors(single), atol=1e-6)
    s = Searcher(merged)
    assert (
        s.search("die katze sitzt auf der matte", 1, return_text=True)[0].text
        == "die katze sitzt auf der matte"
    )
    assert s.docstore.get("zh-3")["lang"] == "zh"


def test_model_mismatch_refused_unless_forced(tiny_bert, tiny_collection, tmp_path):
    idx = build_index(_args(tiny_collection, tiny_bert, tmp_path / "idx")).path
    with pytest.raises(ClirError, match=r"does not match index .*pooling"):
        Searcher(idx, model=str(tiny_bert), overrides={"pooling": "cls", "normalize": True})
    forced = Searcher(idx, model=str(tiny_bert), overrides={"pooling": "cls", "normalize": True}, force=True)
    assert len(forced.search("die katze", 3)) == 3
    # a different query prefix does not touch document vectors: accepted
    Searcher(idx, model=str(tiny_bert), overrides={**FP32, "query_prefix": "q: "})
    # CLI: clear error, exit 1
    rc = _cli("search", "--index", idx, "--query", "x", "--model", tiny_bert, "--pooling", "cls")
    assert rc == 1


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"doc_id": "a", "text": "x"}\n{"doc_id": "b", "text": \n', r"docs.jsonl:2: malformed JSON"),
        ('{"doc_id": "a", "text": "x"}\n{"text": "y"}\n', r"docs.jsonl:2: missing 'doc_id'"),
        ('{"doc_id": "a"}\n', r"docs.jsonl:1: missing 'text'"),
        ('{"doc_id": "a", "text": "x"}\n{"doc_id": "a", "text": "y"}\n', r"duplicate doc id 'a'"),
        ('{"doc_id": "a", "text": "  "}\n', r"no documents to index \(1 empty"),
        ("", r"no documents to index"),
    ],
)
def test_bad_collections_fail_clearly_and_write_nothing(tiny_bert, tmp_path, capsys, content, message):
    coll = _write(tmp_path / "c/docs.jsonl", content).parent
    out = tmp_path / "idx"
    rc = _cli("index", "--collection", coll, "--out", out, "--model", tiny_bert)
    assert rc == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(message, err), err
    assert not out.exists()


def test_failed_rebuild_keeps_the_existing_index(tiny_bert, tiny_collection, tmp_path, capsys):
    out = build_index(_args(tiny_collection, tiny_bert, tmp_path / "idx")).path
    before = (out / "index").read_bytes()
    rc = _cli("index", "--collection", tiny_collection, "--out", out, "--model", tiny_bert)
    assert rc == 1 and "already exists" in capsys.readouterr().err
    bad = _write(tmp_path / "bad/docs.jsonl", '{"doc_id": 1, "text": "a"}\nnot json\n').parent
    rc = _cli("index", "--collection", bad, "--out", out, "--model", tiny_bert, "--overwrite")
    assert rc == 1
    assert (out / "index").read_bytes() == before and Searcher(out).num_docs == 28


def test_empty_texts_are_skipped_with_a_count(tiny_bert, tmp_path):
    coll = _write(
        tmp_path / "c/docs.jsonl", '{"doc_id": "a", "text": "die katze"}\n{"doc_id": "b", "text": ""}\n'
    ).parent
    res = build_index(_args(coll, tiny_bert, tmp_path / "idx"))
    assert (res.num_docs, res.skipped_empty) == (1, 1)
    assert json.loads((res.path / "manifest.json").read_text())["skipped_empty"] == 1


def test_unknown_sources_and_bad_args(tiny_bert, tmp_path, capsys):
    assert (
        _cli("index", "--collection", tmp_path / "nope", "--out", tmp_path / "i", "--model", tiny_bert) == 1
    )
    assert "unknown collection" in capsys.readouterr().err
    assert _cli("search", "--index", tmp_path / "nope", "--query", "x") == 1
    assert "index folder not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _cli("index", "--collection", "x", "--out", "y", "--model", "m", "--batch-size", "0")


def test_ivf_needs_enough_vectors(tiny_bert, tiny_collection, tmp_path):
    with pytest.raises(ClirError, match="needs at least 4096 vectors"):
        build_index(_args(tiny_collection, tiny_bert, tmp_path / "ivf", factory="IVF4096,Flat"))
    with pytest.raises(ClirError, match="invalid FAISS factory"):
        build_index(_args(tiny_collection, tiny_bert, tmp_path / "bad", factory="NoSuchThing"))
    assert not (tmp_path / "ivf").exists() and not (tmp_path / "bad").exists()


def test_ivf_pq_index_trains_and_searches(tiny_bert, tiny_collection, tmp_path):
    import faiss

    from clir.index.faiss_index import DEFAULT_NPROBE

    res = build_index(_args(tiny_collection, tiny_bert, tmp_path / "ivf", factory="IVF2,Flat"))
    assert faiss.extract_index_ivf(Searcher(res.path, nprobe=1).index).nprobe == 1
    s = Searcher(res.path)  # no --nprobe: clir's default, capped at the number of lists
    assert faiss.extract_index_ivf(s.index).nprobe == min(2, DEFAULT_NPROBE) == 2
    assert (
        s.search("die katze", 1)[0].doc_id
        == Searcher(build_index(_args(tiny_collection, tiny_bert, tmp_path / "flat")).path)
        .search("die katze", 1)[0]
        .doc_id
    )


def test_flat_search_is_exact_on_both_faiss_paths():
    """Searches of fewer than FLAT_SEQ_QUERIES queries take FAISS's per-query loop, larger ones BLAS, and
    one query under two threads runs on one thread: every path returns the exact top-k."""
    import faiss

    from clir.index.faiss_index import FLAT_SEQ_QUERIES, search_threads, use_blas_for_flat

    rng = np.random.default_rng(0)
    db = rng.standard_normal((20_000, 48)).astype(np.float32)  # large enough for FAISS's split over threads
    queries = rng.standard_normal((2 * FLAT_SEQ_QUERIES, 48)).astype(np.float32)
    index = faiss.IndexFlatIP(48)
    index.add(db)
    use_blas_for_flat(48)
    exact = queries @ db.T
    before = faiss.omp_get_max_threads()
    try:
        for threads in (1, 2):
            faiss.omp_set_num_threads(threads)
            for n in (1, FLAT_SEQ_QUERIES - 1, FLAT_SEQ_QUERIES, len(queries)):
                with search_threads(n):
                    scores, rows = index.search(queries[:n], 10)
                want = np.sort(exact[:n], axis=1)[:, ::-1][:, :10]
                assert np.allclose(scores, want, atol=1e-4), (threads, n)
                assert np.allclose(np.take_along_axis(exact[:n], rows, 1), scores, atol=1e-4)
    finally:
        faiss.omp_set_num_threads(before)


def test_search_threads_drops_to_one_thread_only_for_few_queries_on_few_threads():
    import threading

    import faiss

    from clir.index.faiss_index import FEW_THREADS, search_threads

    def in_another_thread(key: str) -> None:
        other = threading.Thread(target=lambda: seen.update({key: faiss.omp_get_max_threads()}))
        other.start()
        other.join()

    before = faiss.omp_get_max_threads()
    seen: dict[str, int] = {}
    in_another_thread("fresh")
    try:
        faiss.omp_set_num_threads(2)
        with search_threads(1):
            seen["1 query, 2 threads"] = faiss.omp_get_max_threads()
            in_another_thread("other")  # OpenMP's count is per thread: a second server lane keeps its own
        seen["after"] = faiss.omp_get_max_threads()
        with search_threads(2):
            seen["2 queries, 2 threads"] = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(FEW_THREADS + 1)
        with search_threads(1):
            seen["1 query, many threads"] = faiss.omp_get_max_threads()
    finally:
        faiss.omp_set_num_threads(before)
    assert seen["1 query, 2 threads"] == 1 and seen["after"] == 2 and seen["2 queries, 2 threads"] == 2
    assert seen["1 query, many threads"] == FEW_THREADS + 1
    assert seen["other"] == seen["fresh"]


def test_irds_offline_message(tmp_path, monkeypatch):
    monkeypatch.setenv("IR_DATASETS_HOME", str(tmp_path / "irds-home"))
    import ir_datasets.util

    monkeypatch.setattr(ir_datasets.util, "home_path", lambda: tmp_path / "irds-home", raising=False)
    from clir.data.irds import ensure_available

    with pytest.raises(ClirError) as e:
        ensure_available("hc4/fa/test")
    msg = str(e.value)
    assert (
        "hc4/fa/test" in msg and "hc4_docs.jsonl" in msg and "test.qrels" in msg and "IR_DATASETS_HOME" in msg
    )
    from clir.data import load_collection

    with pytest.raises(ClirError, match="unknown ir_datasets id"):
        list(load_collection("irds:no/such/dataset").docs())


def test_pyserini_faiss_searcher_opens_our_index(tiny_bert, tiny_collection, tmp_path):
    home = java21_home()
    if home is None:
        pytest.skip("Pyserini needs Java >= 21")
    pytest.importorskip("jnius_config")
    import subprocess
    import sys

    idx = build_index(_args(tiny_collection, tiny_bert, tmp_path / "idx")).path
    s = Searcher(idx)
    qv = s.encoder.encode_queries(["die katze", "the river flows to the sea", "история"])
    np.save(tmp_path / "q.npy", qv)
    ours = [[s.docids[r] for r in row] for row in s.search_vectors(qv, 5)[1]]
    # a separate process: Pyserini starts a JVM, which must not live inside the test runner
    code = f"""
import json, numpy as np
from pyserini.search.faiss import FaissSearcher
s = FaissSearcher({str(idx)!r}, None)
out = []
for v in np.load({str(tmp_path / "q.npy")!r}):
    out.append([h.docid for h in s.search(v.reshape(1, -1), k=5)])
print(json.dumps(out))
"""
    env = dict(os.environ, JAVA_HOME=home, OPENAI_API_KEY="unused", PATH=f"{home}/bin:{os.environ['PATH']}")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    if res.returncode != 0:
        pytest.fail(res.stderr[-2000:])
    assert json.loads(res.stdout.strip().splitlines()[-1]) == ours


@pytest.mark.shared
def test_e5_xquad_de_reproduces_reference(e5_small, shared_dir, tmp_path, capsys):
    coll = shared_dir / "data/collections/xquad-r/de"
    e5 = [
        "--model",
        e5_small,
        "--pooling",
        "mean",
        "--normalize",
        "--query-prefix",
        "query: ",
        "--passage-prefix",
        "passage: ",
    ]
    assert _cli("index", "--collection", coll, "--out", tmp_path / "de", "--batch-size", "64", *e5) == 0
    assert (
        _cli(
            "search",
            "--index",
            tmp_path / "de",
            "--queries",
            coll / "queries.tsv",
            "--run",
            tmp_path / "r",
            "--k",
            "100",
        )
        == 0
    )
    capsys.readouterr()
    assert (
        _cli("evaluate", "--run", tmp_path / "r", "--qrels", coll, "--metrics", "mrr@100", "recall@10") == 0
    )
    scores = json.loads(capsys.readouterr().out)
    assert scores["mrr@100"] >= 0.762, scores  # plain-transformers reference: 0.767
    assert scores["recall@10"] >= 0.92
    shutil.rmtree(tmp_path / "de")


def test_byte_order_marks_are_dropped(tmp_path):
    """A file saved with a UTF-8 BOM (Windows editors) reads as without one: q1, not \\ufeffq1."""
    from clir.data.collections import read_docs_tsv, read_queries_tsv
    from clir.metrics import evaluate

    bom = "\ufeff"
    (tmp_path / "queries.tsv").write_text(bom + "q1\tdie katze\n", encoding="utf-8")
    (tmp_path / "docs.tsv").write_text(bom + "d1\tdie katze\n", encoding="utf-8")
    (tmp_path / "run.trec").write_text(bom + "q1 Q0 d1 1 2.0 x\nq2 Q0 d2 1 1.0 x\n", encoding="utf-8")
    (tmp_path / "qrels.txt").write_text(bom + "q1 0 d1 1\nq2 0 d2 1\n", encoding="utf-8")
    assert [q.query_id for q in read_queries_tsv(tmp_path / "queries.tsv")] == ["q1"]
    assert [d.doc_id for d in read_docs_tsv(tmp_path / "docs.tsv")] == ["d1"]
    assert evaluate(tmp_path / "run.trec", tmp_path / "qrels.txt", ["mrr@10"]) == {"mrr@10": 1.0}


def test_a_run_written_through_a_symlink_lands_in_its_target(tmp_path):
    from clir.search import Hit, write_trec_run

    (tmp_path / "runs").mkdir()
    link = tmp_path / "latest.trec"
    link.symlink_to(tmp_path / "runs" / "r1.trec")
    write_trec_run(link, {"q1": [Hit(1, "d1", 1.0)]}, tag="t")
    assert link.is_symlink() and (tmp_path / "runs" / "r1.trec").read_text() == "q1 Q0 d1 1 1.000000 t\n"
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(ClirError, match="pipe is not a regular file"):
        write_trec_run(tmp_path / "pipe", {"q1": []})
    assert not (tmp_path / "pipe").is_file()
