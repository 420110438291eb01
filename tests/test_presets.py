"""`clir index --preset large`: recall against exact search, memory-mapped refine vectors, and the preset's
search settings recorded in the manifest and used by `clir search` / `clir serve`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clir.cli.main import main
from clir.errors import ClirError
from clir.index import presets
from clir.index.faiss_index import FLAT_SEQ_QUERIES
from clir.search import Searcher

FP32 = ["--pooling", "mean", "--normalize", "--precision", "fp32"]


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """Embedding-like unit vectors: 64 cluster centres plus noise (neighbourhoods exist, as in real data)."""
    centres = np.random.default_rng(0).standard_normal((64, dim)).astype(np.float32)  # shared by all draws
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, 64, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def preset_folder(tmp_path_factory) -> tuple[Path, np.ndarray, dict]:
    folder = tmp_path_factory.mktemp("preset")
    vecs = _clustered(4000, 64, seed=1)
    fields = presets.write_faiss(
        folder,
        64,
        len(vecs),
        lambda: (vecs[s : s + 1000] for s in range(0, len(vecs), 1000)),
        lambda n: vecs[np.random.default_rng(1).choice(len(vecs), n, replace=False)],
        preset="large",
    )
    return folder, vecs, fields


def test_plan_sizes_lists_to_the_collection():
    assert presets.plan("large", 10_000_000, 384) == (
        "IVF4096,PQ96x4fs",
        {"nprobe": 1024, "refine": "refine.npy", "k_factor": 40},
    )
    factory, search = presets.plan("large", 4000, 768)
    assert factory == "IVF64,PQ192x4fs" and search["nprobe"] == 32  # 64 lists: at least 39 vectors each
    assert presets.plan("large", 30, 64)[0] == "IVF1,PQ16x4fs"
    assert presets.plan("large", 15, 64) == ("Flat", {})  # too few vectors to train 4-bit PQ
    with pytest.raises(ClirError, match="unknown index preset"):
        presets.plan("huge", 10, 64)


def test_preset_recall_against_flat(preset_folder):
    import faiss

    folder, vecs, fields = preset_folder
    assert fields["factory"] == "IVF64,PQ16x4fs" and fields["search"]["nprobe"] == 32
    index = presets.open_index(folder, fields)
    faiss.extract_index_ivf(index.base).nprobe = fields["search"]["nprobe"]
    queries = _clustered(200, 64, seed=2)
    flat = faiss.IndexFlatIP(64)
    flat.add(vecs)
    exact_scores, exact = flat.search(queries, 10)
    scores, rows = index.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, rows, strict=True)])
    assert recall >= 0.95
    # the re-ranked scores are exact inner products (of fp16-stored vectors)
    same = rows == exact
    assert np.abs(scores[same] - exact_scores[same]).max() < 2e-3
    # the compressed index alone loses answers: the re-ranking is what brings the recall back
    _, pq_rows = index.base.search(queries, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, pq_rows, strict=True)]) < recall


def test_refine_vectors_are_memory_mapped(preset_folder):
    folder, vecs, fields = preset_folder
    index = presets.open_index(folder, fields)
    assert isinstance(index.vectors, np.memmap) and index.vectors.mode == "r"
    assert Path(index.vectors.filename) == folder / "refine.npy"
    assert index.vectors.dtype == np.float16 and index.vectors.shape == vecs.shape
    assert np.abs(np.asarray(index.vectors[:100], dtype=np.float32) - vecs[:100]).max() < 1e-3


def test_missing_refine_file_is_a_clear_error(preset_folder, tmp_path):
    import shutil

    folder, _, fields = preset_folder
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    (copy / "refine.npy").unlink()
    with pytest.raises(ClirError, match="missing refine.npy"):
        presets.open_index(copy, fields)


def test_cli_preset_recorded_and_honoured(tiny_bert, tiny_collection, tmp_path, capsys):
    import faiss

    out, flat = tmp_path / "large", tmp_path / "flat"
    base = ["index", "--collection", str(tiny_collection), "--model", str(tiny_bert), *FP32]
    assert main([*base, "--out", str(out), "--preset", "large"]) == 0
    assert main([*base, "--out", str(flat)]) == 0
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "x"), "--preset", "large", "--factory", "Flat"]) != 0
    assert "pass --factory or --preset, not both" in capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["preset"] == "large" and manifest["factory"] == "IVF1,PQ16x4fs"
    assert manifest["search"] == {"nprobe": 1, "refine": "refine.npy", "k_factor": 40}
    assert (out / "refine.npy").is_file()

    faiss.cvar.distance_compute_blas_threshold = 128_000  # FAISS 1.15's own value
    s = Searcher(out)
    assert isinstance(s.index, presets.RefinedIndex)
    # set when an index is opened; FAISS compares queries x dimension with it
    assert faiss.cvar.distance_compute_blas_threshold == FLAT_SEQ_QUERIES * s.index.d
    assert faiss.extract_index_ivf(s.index.base).nprobe == 1  # from the manifest
    ref = Searcher(flat, encoder=s.encoder)
    for q in ("die katze sitzt auf der matte", "the weather is nice today"):
        # the whole tiny shortlist is re-ranked against fp16 vectors: Flat's top 10 up to fp16 rounding
        # (random tiny-model vectors hold near-ties 1e-5 apart, which fp16 may swap)
        got, want = s.search(q, 10), ref.search(q, 10)
        exact = {h.doc_id: h.score for h in ref.search(q, 28)}
        assert np.allclose([h.score for h in got], [h.score for h in want], atol=2e-3)
        assert all(abs(exact[h.doc_id] - h.score) <= 2e-3 for h in got)
    capsys.readouterr()
    assert main(["search", "--index", str(out), "--query", "die katze", "--k", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"][0]["doc_id"] == ref.search("die katze", 1)[0].doc_id


def test_serve_uses_the_preset(tiny_bert, tiny_collection, tmp_path):
    from fastapi.testclient import TestClient

    from clir.serve import create_app

    out = tmp_path / "large"
    args = ["index", "--collection", str(tiny_collection), "--model", str(tiny_bert), *FP32]
    assert main([*args, "--out", str(out), "--preset", "large"]) == 0
    ref = Searcher(out)
    with TestClient(create_app({"large": str(out)})) as c:
        assert isinstance(c.app.state.clir.searchers["large"].index, presets.RefinedIndex)
        hits = c.post("/search", json={"query": "die katze", "k": 5}).json()["hits"]
    want = ref.search("die katze", 5)
    assert [h["doc_id"] for h in hits] == [h.doc_id for h in want]
    assert np.allclose([h["score"] for h in hits], [h.score for h in want], atol=1e-5)


def test_merge_replans_the_preset_for_the_merged_size(tiny_bert, tiny_collection, tmp_path):
    from clir.index import merge_indexes

    base = ["index", "--collection", str(tiny_collection), "--model", str(tiny_bert), *FP32]
    base += ["--preset", "large"]
    for i in (0, 1):
        assert main([*base, "--out", str(tmp_path / f"s{i}"), "--shard", f"{i}/2"]) == 0
    out = merge_indexes([tmp_path / "s0", tmp_path / "s1"], tmp_path / "all")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["preset"] == "large" and manifest["num_docs"] == 28
    assert manifest["search"]["refine"] == "refine.npy" and (out / "refine.npy").is_file()
    assert np.load(out / "refine.npy", mmap_mode="r").shape == (28, 64)
    assert len(Searcher(out).search("die katze", 28)) == 28
