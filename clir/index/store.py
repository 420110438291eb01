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
from clir.safe_load import loads_json, read_json

FORMAT = "clir-index"
#: the refine vectors' file (clir.index.presets.REFINE_FILE; named here so the manifest check needs no import)
REFINE_NAME = "refine.npy"
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
    arr = np.ascontiguousarray(arr)
    with replacing(path, ".tmp.npy") as tmp, open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(arr))
        # through Python's file object, not numpy's C writer: a full disk is then an OSError that says so
        # (numpy reports only "N requested and M written")
        if arr.size:
            f.write(arr.data)


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(folder / MANIFEST_FILE, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """An index folder's manifest, checked: every field search and serve read has its type and range, so
    a damaged or crafted folder is refused here, naming what is wrong."""
    folder = Path(folder)
    partial = folder.with_name(folder.name + ".partial")
    old = folder.with_name(folder.name + ".old")
    hint = (
        f" (an unfinished build is in {partial}: the same `clir index ...` command with --resume finishes it)"
        if partial.is_dir()
        else ""
    )
    if not folder.is_dir():
        if old.is_dir() and not folder.exists():
            raise NotFoundError(
                f"index folder not found: {folder}, but {old} holds its previous version (a build was stopped "
                f"while swapping its new index in): the same `clir index ... --resume` command finishes the "
                f"swap, or rename {old.name} to {folder.name} to use the previous index"
            )
        raise NotFoundError(f"index folder not found: {folder}{hint}")
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise ClirError(f"{folder} is not a clir index: no {MANIFEST_FILE}{hint}")
    manifest = read_json(path, what="a manifest", max_bytes=MAX_MANIFEST_BYTES)
    check_manifest(manifest, path)
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


#: a manifest is a page of settings and counts
MAX_MANIFEST_BYTES = 16 << 20
#: the widest vectors clir indexes (the largest encoders have 4096-8192 dimensions)
MAX_DIM = 65536


def check_manifest(manifest: Any, path: Path) -> None:
    """The fields that opening an index reads: what it is, its encoder, its dimension and search settings."""

    def bad(what: str) -> ClirError:
        return ClirError(f"{path}: {what} (the index folder is damaged: rebuild it with `clir index`)")

    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ClirError(f"{path}: not a clir index manifest")
    model = manifest.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("source"), str):
        raise bad("no 'model' with the encoder's source")
    if not isinstance(model.get("config"), dict):
        raise bad("'model' has no 'config' mapping")
    encoder = manifest.get("encoder")
    if not isinstance(encoder, dict) or not isinstance(encoder.get("adapters") or {}, dict):
        raise bad("no 'encoder' fingerprint")
    dim = manifest.get("dim")
    if not _int_in(dim, 1, MAX_DIM):
        raise bad(f"'dim' {dim!r:.40} is not a vector dimension (1..{MAX_DIM})")
    search = manifest.get("search")
    if search is None:
        return
    if not isinstance(search, dict):
        raise bad("'search' is not a mapping")
    for key in ("nprobe", "ef_search", "k_factor"):
        if search.get(key) is not None and not _int_in(search[key], 1, 1 << 20):
            raise bad(f"search.{key} {search[key]!r:.40} is not a positive integer")
    refine = search.get("refine")
    if refine is not None and refine != REFINE_NAME:  # a name inside the folder, never a path out of it
        raise bad(f"search.refine {refine!r:.60} is not {REFINE_NAME!r}")


def _int_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def load_npy(path: Path, *, what: str, kinds: str = "iu", mmap: bool = False) -> np.ndarray:
    """An array file of an index or staging folder: plain numbers of ``kinds`` only (``allow_pickle=False``:
    a pickled array could run code), a damaged file a ClirError naming it."""
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError) as e:
        raise ClirError(f"{path}: unreadable {what} ({e})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in kinds:
        raise ClirError(f"{path}: {what} must be an array of {'integers' if kinds == 'iu' else 'numbers'}")
    return arr


def write_docids(path: Path, ids: Iterable[str]) -> None:
    atomic_write_lines(path, ids)


def read_docids(folder: Path) -> list[str]:
    try:
        with open(folder / DOCID_FILE, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f]
    except UnicodeDecodeError as e:
        raise ClirError(
            f"{folder / DOCID_FILE}: not UTF-8 ({e.reason}): the index folder is damaged"
        ) from None


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
        # each document's rows are consecutive and start with its passage 0, in doc store order
        if len(self.doc) and (
            self.doc[0] != 0
            or (np.diff(self.doc) < 0).any()
            or (np.diff(self.doc) > 1).any()
            or len(first) != self.num_docs
            or (self.doc[first] != np.arange(self.num_docs)).any()
            or (self.n < 0).any()
            or (self.start < 0).any()
            or (self.end < self.start).any()
        ):
            raise ValueError("the passage spans are out of order or range")
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
        spans = load_npy(path, what="passage map")
        if spans.ndim != 2 or spans.shape != (len(row_ids), 4):
            raise ClirError(f"{path}: expected {len(row_ids)} x 4 passage spans, got {spans.shape}")
        try:
            return cls(spans.astype(np.int64), row_ids)
        except ValueError as e:
            raise ClirError(f"{path}: {e} (the index folder is damaged)") from None


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
            self.open()

    @property
    def rows(self) -> dict[str, int]:
        if self._row is None:
            self._row = {d: i for i, d in enumerate(self.docids)}
        return self._row

    def get_row(self, row: int) -> dict[str, Any]:
        if not self.available:
            raise ClirError(f"{self.folder}: this index has no document store")
        assert self._offsets is not None  # set by open
        start = int(self._offsets[row])
        end = self._data.find(b"\n", start)
        where = f"{self.folder / DOCS_FILE} (document {row + 1})"
        doc = loads_json(self._data[start : end if end >= 0 else len(self._data)], where)
        if not isinstance(doc, dict) or not isinstance(doc.get("text"), str):
            raise ClirError(f"{where}: not a stored document (the index folder is damaged)")
        return doc

    def open(self) -> None:
        """Memory-map the store once: a search returns k documents, and reopening the file for each
        (as before) cost the REST server ~10 opens a request on its event loop. Offsets that do not fit
        the file (a truncated or replaced store) are refused here, and so is a last document cut short."""
        import mmap

        if not self.available or self._offsets is not None:
            return
        with open(self.folder / DOCS_FILE, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            self._data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        path = self.folder / OFFSETS_FILE
        offsets = load_npy(path, what="document offsets")
        if offsets.shape != (len(self.docids),):
            raise ClirError(
                f"{path}: {offsets.shape} offsets for {len(self.docids)} documents (damaged index)"
            )
        if len(offsets) and (offsets[0] != 0 or (np.diff(offsets) <= 0).any() or offsets[-1] >= size):
            raise ClirError(
                f"{path}: offsets outside {DOCS_FILE} ({size} bytes): the index folder is damaged"
            )
        self._offsets = offsets.astype(np.int64)
        if len(offsets):
            self.get_row(len(offsets) - 1)

    def get(self, doc_id: str) -> dict[str, Any]:
        row = self.rows.get(doc_id)
        if row is None:
            raise NotFoundError(f"unknown doc id {doc_id!r}")
        return self.get_row(row)

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self.rows
