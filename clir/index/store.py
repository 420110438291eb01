"""The index folder contract: ``index`` + ``docid`` (Pyserini's FaissSearcher layout), ``manifest.json``,
and a document store (``docs.jsonl`` + ``docs.offsets.npy``) so search can return text."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from clir.atomic import atomic_write_lines, atomic_write_text, replacing  # noqa: F401 (store.atomic_write_text)
from clir.errors import ClirError, NotFoundError

FORMAT = "clir-index"
FORMAT_VERSION = 1
INDEX_FILE = "index"
DOCID_FILE = "docid"
MANIFEST_FILE = "manifest.json"
DOCS_FILE = "docs.jsonl"
OFFSETS_FILE = "docs.offsets.npy"
VECTORS_FILE = "vectors.npy"  # shard builds only: raw vectors, so merge can build any factory
POSITIONS_FILE = "positions.npy"  # shard builds only: each row's ordinal in the collection
#: split indexes only: per row (document row in the doc store, passage number, char start, char end)
PASSAGES_FILE = "passages.npy"


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("clir", "torch", "transformers", "adapters", "faiss-cpu", "faiss-gpu", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    with replacing(path, ".tmp.npy") as tmp:
        np.save(tmp, arr)


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(folder / MANIFEST_FILE, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")


def read_manifest(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    partial = folder.with_name(folder.name + ".partial")
    hint = (
        f" (an unfinished build is in {partial}: the same `clir index ...` command with --resume finishes it)"
        if partial.is_dir()
        else ""
    )
    if not folder.is_dir():
        raise NotFoundError(f"index folder not found: {folder}{hint}")
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise ClirError(f"{folder} is not a clir index: no {MANIFEST_FILE}{hint}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ClirError(f"{path}: corrupt manifest ({e.msg})") from None
    if manifest.get("format") != FORMAT:
        raise ClirError(f"{path}: not a clir index manifest")
    for name in (INDEX_FILE, DOCID_FILE):
        if not (folder / name).is_file():
            raise ClirError(f"{folder}: missing {name} (the index folder is incomplete)")
    return manifest


def folder_identity(folder: Path) -> tuple[int, int] | None:
    """Which folder ``folder`` names now (device, inode), None when none does: a rebuild with
    ``--overwrite`` swaps a new folder in under the same name (clir.atomic.swap_into_place)."""
    try:
        st = os.stat(folder)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def write_docids(path: Path, ids: Iterable[str]) -> None:
    atomic_write_lines(path, ids)


def read_docids(folder: Path) -> list[str]:
    with open(folder / DOCID_FILE, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


class DocStoreWriter:
    """Appends documents in index order; offsets let a reader seek to any row."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._f = open(folder / (DOCS_FILE + ".tmp"), "wb")
        self._offsets: list[int] = []

    def add(self, rec: dict[str, Any]) -> None:
        self._offsets.append(self._f.tell())
        doc = {
            "doc_id": rec["doc_id"],
            "title": rec.get("title", ""),
            "text": rec["text"],
            "lang": rec.get("lang"),
        }
        if rec.get("lang_detected"):
            doc["lang_detected"] = True  # the language came from language identification
        self._f.write(json.dumps(doc, ensure_ascii=False).encode("utf-8") + b"\n")

    @property
    def count(self) -> int:
        return len(self._offsets)

    def close(self) -> None:
        self._f.close()
        os.replace(self.folder / (DOCS_FILE + ".tmp"), self.folder / DOCS_FILE)
        atomic_save_npy(self.folder / OFFSETS_FILE, np.asarray(self._offsets, dtype=np.int64))


class PassageMap:
    """Rows of a split index -> their documents: ``doc`` (document number, the doc store's row), ``n``
    (passage number), ``start``/``end`` (character span in the document's text)."""

    def __init__(self, spans: np.ndarray, row_ids: list[str]) -> None:
        self.doc, self.n, self.start, self.end = (np.ascontiguousarray(spans[:, i]) for i in range(4))
        self.num_docs = int(self.doc.max()) + 1 if len(self.doc) else 0
        first = np.flatnonzero(self.n == 0)
        counts = np.bincount(self.doc, minlength=self.num_docs)
        #: each document's id: its first passage's row id without the ``#0`` (whole documents keep theirs)
        self.doc_ids = [
            row_ids[r][: -len("#0")] if counts[self.doc[r]] > 1 else row_ids[r] for r in first.tolist()
        ]
        self.counts = counts

    @classmethod
    def load(cls, folder: Path, row_ids: list[str]) -> PassageMap | None:
        path = folder / PASSAGES_FILE
        if not path.is_file():
            return None
        spans = np.load(path)
        if spans.ndim != 2 or spans.shape != (len(row_ids), 4):
            raise ClirError(f"{path}: expected {len(row_ids)} x 4 passage spans, got {spans.shape}")
        return cls(spans, row_ids)


class DocStore:
    """Random access to stored documents by row or doc id. Rows follow ``docids``: the ``docid`` file, or
    for split indexes the document ids (one per document, :class:`PassageMap`).

    Opened when made, with the rest of the index: memory-mapped, the store stays the one it was opened
    with when a rebuild replaces the folder (an open file outlives its name). Opened lazily, a server
    paired its old ids with a rebuilt index's texts."""

    def __init__(self, folder: Path, docids: list[str]) -> None:
        self.folder = folder
        self.docids = docids
        self._row: dict[str, int] | None = None
        self._offsets: np.ndarray | None = None
        self._data: Any = b""
        self.available = (folder / DOCS_FILE).is_file() and (folder / OFFSETS_FILE).is_file()
        if self.available:
            self._open()

    @property
    def rows(self) -> dict[str, int]:
        if self._row is None:
            self._row = {d: i for i, d in enumerate(self.docids)}
        return self._row

    def get_row(self, row: int) -> dict[str, Any]:
        if not self.available:
            raise ClirError(f"{self.folder}: this index has no document store")
        assert self._offsets is not None  # set by _open
        start = int(self._offsets[row])
        end = self._data.find(b"\n", start)
        return json.loads(self._data[start : end if end >= 0 else len(self._data)])

    def _open(self) -> None:
        """Memory-map the store once: a search returns k documents, and reopening the file for each
        (as before) cost the REST server ~10 opens a request on its event loop."""
        import mmap

        with open(self.folder / DOCS_FILE, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            self._data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        self._offsets = np.load(self.folder / OFFSETS_FILE)
        if len(self._offsets) != len(self.docids):
            raise ClirError(
                f"{self.folder}: the document store holds {len(self._offsets)} documents but the index "
                f"{len(self.docids)} (files of two builds?)"
            )

    def get(self, doc_id: str) -> dict[str, Any]:
        row = self.rows.get(doc_id)
        if row is None:
            raise NotFoundError(f"unknown doc id {doc_id!r}")
        return self.get_row(row)

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self.rows
