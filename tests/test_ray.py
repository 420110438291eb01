"""Distributed index builds on Ray (`clir index --ray`): a local Ray with 2 CPU workers on the tiny model must
give the single-process build's index, survive a worker that dies, and resume after a driver that dies."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from clir.errors import ClirError
from clir.index import IndexArgs, build_index

CHUNK = 5  # 28 tiny documents -> 6 chunks over 2 workers
FP32 = {"precision": "fp32"}


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module (builds use it as the caller's session and leave it running)."""
    ray = pytest.importorskip("ray")
    import logging

    # test workers subclass the encoder actor here: ship this module's classes to Ray by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def single(tiny_bert, tiny_collection, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "idx"
    build_index(
        IndexArgs(
            collection=str(tiny_collection),
            model=str(tiny_bert),
            out=str(out),
            chunk_size=CHUNK,
            overrides=FP32,
        )
    )
    return out


def _args(tiny_bert, tiny_collection, out: Path, **kw) -> IndexArgs:
    kw.setdefault("overrides", FP32)
    return IndexArgs(
        collection=str(tiny_collection),
        model=str(tiny_bert),
        out=str(out),
        chunk_size=CHUNK,
        **kw,
    )


def _vectors(folder: Path) -> np.ndarray:
    import faiss

    index = faiss.read_index(str(folder / "index"))
    return index.reconstruct_n(0, index.ntotal)


def assert_same_index(got: Path, want: Path) -> None:
    assert (got / "docid").read_text() == (want / "docid").read_text()
    assert (got / "docs.jsonl").read_text(encoding="utf-8") == (want / "docs.jsonl").read_text(
        encoding="utf-8"
    )
    np.testing.assert_allclose(_vectors(got), _vectors(want), rtol=1e-4, atol=1e-5)
    mg, mw = (json.loads((f / "manifest.json").read_text()) for f in (got, want))
    for key in ("encoder", "num_docs", "doc_langs", "dim", "factory"):
        assert mg[key] == mw[key], key
    assert not got.with_name(got.name + ".partial").exists()


def test_cli_ray_build_equals_single_process(
    ray_session, tiny_bert, tiny_collection, single, tmp_path, capsys
):
    from clir.cli.main import main

    out = tmp_path / "idx"
    rc = main(
        [
            "index",
            "--collection",
            str(tiny_collection),
            "--model",
            str(tiny_bert),
            "--precision",
            "fp32",
            "--chunk-size",
            str(CHUNK),
            "--out",
            str(out),
            "--ray",
            "--workers",
            "2",
        ]
    )
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["num_docs"] == 28
    assert_same_index(out, single)


class CrashOnce:
    """Mixed into the encoder actor: its process dies (os._exit, as an OOM kill would) the first time it
    is handed chunk ``target``; the marker file makes the restarted actor behave."""

    target = 3
    marker = ""

    def encode(self, no, recs):
        if no == self.target and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)
        return super().encode(no, recs)


def test_worker_killed_mid_run_is_retried(ray_session, tiny_bert, tiny_collection, single, tmp_path):
    from clir.index.distributed import ChunkEncoder, RayArgs, build_index_ray

    worker = type("CrashingEncoder", (CrashOnce, ChunkEncoder), {"marker": str(tmp_path / "crashed")})
    out = tmp_path / "idx"
    res = build_index_ray(_args(tiny_bert, tiny_collection, out), RayArgs(actors=2), worker_cls=worker)
    assert (tmp_path / "crashed").is_file()  # a worker really died on chunk 3 ...
    assert res.num_docs == res.encoded_docs == 28  # ... and its chunk was encoded again on the restarted one
    assert_same_index(out, single)


class Interrupted(Exception):
    pass


def test_driver_interrupted_then_resumed_encodes_only_missing_chunks(
    ray_session, tiny_bert, tiny_collection, single, tmp_path
):
    from clir.index.distributed import RayArgs, build_index_ray

    out = tmp_path / "idx"
    committed: list[int] = []

    def die_after_two(no: int) -> None:
        committed.append(no)
        if len(committed) == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        build_index_ray(_args(tiny_bert, tiny_collection, out), RayArgs(actors=2), on_chunk=die_after_two)
    assert not out.exists()  # nothing under the final name
    chunks = out.with_name("idx.partial") / "chunks"
    on_disk = sorted(int(p.stem) for p in chunks.glob("*.npy"))
    assert on_disk == sorted(committed)

    encoded: list[int] = []
    res = build_index_ray(
        _args(tiny_bert, tiny_collection, out, resume=True), RayArgs(actors=2), on_chunk=encoded.append
    )
    assert sorted(encoded) == sorted(set(range(6)) - set(committed))
    assert res.encoded_docs == 28 - CHUNK * 2  # chunks 0-4 hold 5 documents, chunk 5 holds 3
    assert_same_index(out, single)


def test_ray_build_of_a_split_collection_equals_single_process(ray_session, tiny_bert, tmp_path):
    """Long documents split into passages: chunks cut documents in the middle, yet the Ray build writes
    the single-process index (rows, passage spans, doc store, vectors)."""
    from clir.index import PassageSpec
    from clir.index.distributed import RayArgs, build_index_ray
    from clir.testing import _LINES

    coll = tmp_path / "long"
    coll.mkdir()
    docs = [
        {"doc_id": f"long-{lang}", "text": " ".join(_LINES[lang] * 3), "lang": lang} for lang in ("de", "ru")
    ]
    docs += [{"doc_id": f"de-{i}", "text": t, "lang": "de"} for i, t in enumerate(_LINES["de"])]
    with open(coll / "docs.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
    settings = {**FP32, "pooling": "mean", "normalize": True, "max_passage_length": 32}

    def args(out: Path) -> IndexArgs:
        return _args(tiny_bert, coll, out, overrides=settings, passages=PassageSpec(stride=12))

    one = build_index(args(tmp_path / "one"))
    assert one.num_passages > one.num_docs  # the long documents were split
    res = build_index_ray(args(tmp_path / "ray"), RayArgs(actors=2))
    assert (res.num_docs, res.num_passages) == (one.num_docs, one.num_passages)
    for name in ("docid", "docs.jsonl", "docs.offsets.npy", "passages.npy"):
        assert (res.path / name).read_bytes() == (one.path / name).read_bytes(), name
    np.testing.assert_allclose(_vectors(res.path), _vectors(one.path), rtol=1e-4, atol=1e-5)
    mr, mo = (json.loads((f / "manifest.json").read_text()) for f in (res.path, one.path))
    assert mr["passages"] == mo["passages"]


def test_existing_out_is_refused_before_ray_starts(tiny_bert, tiny_collection, single):
    pytest.importorskip("ray")
    from clir.index.distributed import RayArgs, build_index_ray

    with pytest.raises(ClirError, match="already exists"):
        build_index_ray(_args(tiny_bert, tiny_collection, single), RayArgs(actors=2))


def test_without_ray_the_flag_says_how_to_install(monkeypatch, tiny_bert, tiny_collection, tmp_path, capsys):
    from clir.cli.main import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    argv = [
        "index",
        "--collection",
        str(tiny_collection),
        "--model",
        str(tiny_bert),
        "--out",
        str(tmp_path / "x"),
    ]
    assert main([*argv, "--ray"]) == 1
    assert "pip install 'clir[distributed]'" in capsys.readouterr().err
    assert main([*argv, "--workers", "2"]) == 1
    assert "--workers needs --ray" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
