"""What a killed or starved build leaves: a kill (SIGKILL, power loss) at any step of finishing an index
either resumes (`clir index ... --resume`) or leaves a complete index, old or new; a full disk is a one-line
error that leaves the old index as it was.

The kill points are every file-system change ``_finalize`` makes (each rename, unlink, rmdir, mkdir, rmtree
step): before each, the test copies the build's folders as they are on disk, which is what a process killed
at that instant leaves (a write not yet flushed from Python's buffers is lost either way). One real
``os._exit`` in a subprocess checks the copies against the real thing at the swap's most fragile point."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from clir.cli.main import main
from clir.errors import ClirError, NotFoundError
from clir.index import IndexArgs, build_index, store
from clir.testing import index_docids, index_vectors

FP32 = {"precision": "fp32", "pooling": "mean", "normalize": True}
REPO = Path(__file__).resolve().parents[1]
#: the operations a kill can fall between (shutil.rmtree and pathlib go through these too)
OPS = ("replace", "rename", "unlink", "remove", "rmdir", "mkdir")


@pytest.fixture(scope="module")
def encoder(tiny_bert):
    from clir.model import load_encoder

    return load_encoder(str(tiny_bert), FP32)


@pytest.fixture(scope="module")
def corpora(tiny_collection, tmp_path_factory) -> tuple[Path, Path]:
    """(all 28 documents, the first 10: what the index being replaced was built from)."""
    root = tmp_path_factory.mktemp("corpora")
    lines = (tiny_collection / "docs.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (root / "old.jsonl").write_text("".join(lines[:10]), encoding="utf-8")
    return tiny_collection / "docs.jsonl", root / "old.jsonl"


def _args(coll: Path, out: Path, **kw) -> IndexArgs:
    return IndexArgs(collection=str(coll), model="unused", out=str(out), chunk_size=8, overrides=FP32, **kw)


@contextlib.contextmanager
def _before_each_op(action) -> Iterator[None]:
    """Call ``action(op, args)`` before every file-system change this process makes in the block."""
    real = {name: getattr(os, name) for name in OPS}
    busy = []

    def hooked(name):
        def op(*args, **kwargs):
            if not busy:
                busy.append(1)
                try:
                    action(name, args)
                finally:
                    busy.pop()
            return real[name](*args, **kwargs)

        return op

    for name in OPS:
        setattr(os, name, hooked(name))
    try:
        yield
    finally:
        for name, fn in real.items():
            setattr(os, name, fn)


def _same_index(folder: Path, ref: Path) -> bool:
    return index_docids(folder) == index_docids(ref) and np.array_equal(
        index_vectors(folder), index_vectors(ref)
    )


@pytest.mark.parametrize("replacing", [False, True], ids=["fresh", "overwrite"])
def test_every_kill_point_of_finalisation_resumes_or_leaves_a_complete_index(
    encoder, corpora, tmp_path, monkeypatch, replacing
):
    docs, old_docs = corpora
    new_ref = build_index(_args(docs, tmp_path / "new-ref"), encoder).path
    old_ref = build_index(_args(old_docs, tmp_path / "old-ref"), encoder).path
    work = tmp_path / "work"
    work.mkdir()
    out = work / "idx"
    if replacing:
        shutil.copytree(old_ref, out)

    import clir.index.build as build

    snaps = tmp_path / "snaps"
    taken: list[tuple[Path, str]] = []

    def snapshot(op, args):
        dest = snaps / f"{len(taken):03d}"
        shutil.copytree(work, dest, symlinks=True)
        taken.append((dest, f"before os.{op}({', '.join(Path(str(a)).name for a in args[:2])})"))

    real_finalize = build._finalize

    def finalize_with_snapshots(*a, **kw):
        with _before_each_op(snapshot):
            return real_finalize(*a, **kw)

    monkeypatch.setattr(build, "_finalize", finalize_with_snapshots)
    build_index(_args(docs, out, overwrite=replacing), encoder)
    monkeypatch.setattr(build, "_finalize", real_finalize)
    assert _same_index(out, new_ref)
    assert len(taken) > 15, [why for _, why in taken]  # every rename, every file of two rmtrees ...

    for snap, why in taken:
        idx, old = snap / "idx", snap / "idx.old"
        # what a reader finds at this instant: a complete index (old or new), or a message that explains
        if idx.exists():
            store.read_manifest(idx)
            assert _same_index(idx, new_ref) or (replacing and _same_index(idx, old_ref)), why
        elif old.exists():
            with pytest.raises(NotFoundError, match=r"idx\.old holds its previous version.*--resume"):
                store.read_manifest(idx)
        complete_before = idx.exists() and _same_index(idx, new_ref)
        # the same command with --resume: finishes without encoding again, or finds the index complete
        try:
            res = build_index(_args(docs, idx, overwrite=replacing, resume=True), encoder)
        except ClirError as e:
            assert complete_before and not replacing and "already exists" in str(e), (why, e)
        else:
            assert res.encoded_docs == 0 or complete_before, why
        assert _same_index(idx, new_ref), why
        leftovers = [p.name for p in snap.iterdir() if p.name != "idx"]
        assert not leftovers or complete_before and not replacing, (why, leftovers)


def test_kill_between_the_two_renames_of_the_swap(tiny_bert, corpora, tmp_path, capsys):
    """A real os._exit just after OUT -> OUT.old: search explains, --resume swaps the new index in."""
    docs, old_docs = corpora
    out = tmp_path / "idx"
    flags = ["--model", str(tiny_bert), "--pooling", "mean", "--normalize", "--precision", "fp32"]
    assert main(["index", "--collection", str(old_docs), "--out", str(out), *flags]) == 0
    old_manifest = (out / "manifest.json").read_bytes()
    script = textwrap.dedent(
        f"""
        import os, sys
        real = os.replace
        def replace(src, dst, *a, **kw):
            real(src, dst, *a, **kw)
            if str(dst).endswith("idx.old"):
                os._exit(137)  # killed: no cleanup, no finally
        os.replace = replace
        from clir.cli.main import main
        sys.exit(main({["index", "--collection", str(docs), "--out", str(out), "--overwrite", *flags]!r}))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "CLIR_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 137, proc.stderr[-2000:]
    assert not out.exists() and (tmp_path / "idx.old/manifest.json").read_bytes() == old_manifest
    assert (tmp_path / "idx.partial/final/manifest.json").is_file()

    assert main(["search", "--index", str(out), "--query", "katze"]) == 1
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("clir search: error: index folder not found")
        and "idx.old" in err
        and "--resume" in err
    )

    argv = ["index", "--collection", str(docs), "--out", str(out), "--overwrite", "--resume", *flags]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["num_docs"] == 28
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]
    assert len(index_docids(out)) == 28


def test_kill_between_the_renames_without_resume_restores_the_old_index(encoder, corpora, tmp_path):
    """Rerun without --resume: the previous index comes back at OUT (it is served while the build runs)."""
    docs, old_docs = corpora
    old_ref = build_index(_args(old_docs, tmp_path / "old-ref"), encoder).path
    out = tmp_path / "idx"
    shutil.copytree(old_ref, tmp_path / "idx.old")  # what the kill left: no OUT, the old one beside it
    with pytest.raises(ClirError, match="already exists: pass --overwrite"):
        build_index(_args(docs, out), encoder)
    assert _same_index(out, old_ref) and not (tmp_path / "idx.old").exists()


def _limited(argv: list[str], limit: int) -> subprocess.CompletedProcess:
    """``python -m clir ARGV`` allowed files of at most ``limit`` bytes: writes past it fail with EFBIG,
    as they would with ENOSPC on a full disk (which a test cannot make without root)."""
    import resource
    import signal

    def limit_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "PYTHONPATH": str(REPO), "CLIR_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "clir", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit_files,
    )


def test_a_full_disk_is_one_line_and_the_old_index_stays(tiny_bert, corpora, tmp_path):
    docs, old_docs = corpora
    out = tmp_path / "idx"
    flags = ["--model", str(tiny_bert), "--pooling", "mean", "--normalize", "--precision", "fp32"]
    assert main(["index", "--collection", str(old_docs), "--out", str(out), *flags]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # chunks of 3 documents fit; the FAISS index of 28 vectors (7 KB) does not
    proc = _limited(
        ["index", "--collection", str(docs), "--out", str(out), "--overwrite", "--chunk-size", "3", *flags],
        4096,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and lines[0].startswith("clir index: error: cannot write"), proc.stderr
    assert "File too large" in lines[0] and "is intact" in lines[0] and "--resume" in lines[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # what was encoded is kept: --resume finishes once there is room
    assert (
        main(
            [
                "index",
                "--collection",
                str(docs),
                "--out",
                str(out),
                "--overwrite",
                "--resume",
                "--chunk-size",
                "3",
                *flags,
            ]
        )
        == 0
    )
    assert len(index_docids(out)) == 28


def test_a_full_disk_while_training_is_one_line_and_leaves_nothing(tiny_bert, tmp_path):
    triples = tmp_path / "triples.jsonl"
    triples.write_text(
        "".join(
            json.dumps({"query": f"q{i}", "positive": "der fluss", "negative": "das haus"}) + "\n"
            for i in range(4)
        )
    )
    config = tmp_path / "train.yaml"
    config.write_text(
        f"model: {{backbone: {tiny_bert}}}\ndata: {{triples: {triples}}}\n"
        "optim: {batch_size: 2, max_steps: 2, threads: 1}\ncheckpoint: {every: 1}\n"
    )
    out = tmp_path / "model"
    proc = _limited(["train", "--config", str(config), "--out", str(out)], 16384)  # the checkpoint is ~1 MB
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and lines[0].startswith("clir train: error: cannot write"), proc.stderr
    assert "File too large" in lines[0]
    assert not out.exists()
