"""What a collection string names, decided in one place: a collection folder, a ``.jsonl``/``.tsv`` docs
file, the bundled ``sample``, or an ir_datasets id (``irds:<id>``, or bare where ir_datasets knows it).

:func:`load_collection` (every verb, the server, training) and the experiment grid's planner both resolve
through :func:`resolve_collection`, so the rules and the messages are the same everywhere."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from clir.data.collections import (
    IRDS_PREFIX,
    Collection,
    FileCollection,
    LocalCollection,
    Qrels,
    Query,
    read_qrels,
    read_queries_tsv,
)
from clir.errors import ClirError, NotFoundError

CollectionKind = Literal["folder", "file", "sample", "irds"]
DOC_FILE_SUFFIXES = (".jsonl", ".tsv", ".json")


@dataclass
class CollectionRef:
    kind: CollectionKind
    #: the canonical source: an absolute folder or file, ``sample`` or ``irds:<id>``
    source: str
    #: the folder or file (the sample's folder for ``sample``); None for ir_datasets
    path: Path | None = None
    irds_id: str | None = None

    @property
    def docs_file(self) -> bool:
        """A docs file alone (.jsonl/.tsv): documents without queries or qrels."""
        return self.kind == "file"

    @property
    def default_name(self) -> str:
        """A label for tables and file names: the folder's last two parts, the id with ``-`` for ``/``."""
        if self.irds_id is not None:
            return self.irds_id.replace("/", "-")
        if self.kind == "sample":
            return self.source
        assert self.path is not None
        return "-".join(self.path.parts[-2:]) if self.kind == "folder" else self.path.stem

    def open(self) -> Collection:
        if self.irds_id is not None:
            from clir.data.irds import IrdsCollection

            return IrdsCollection(self.irds_id)
        assert self.path is not None
        return LocalCollection(self.path) if self.kind != "file" else FileCollection(self.path)


def irds_id(src: str | Path) -> str | None:
    """The ir_datasets id an ``irds:<id>`` string names (None for anything else): the one prefix rule, for
    collections, training triples and language-adapter text alike."""
    s = str(src).strip()
    return s[len(IRDS_PREFIX) :] if s.startswith(IRDS_PREFIX) else None


def _irds(s: str, p: Path) -> CollectionRef | None:
    ds_id = irds_id(s)
    return CollectionRef("irds", s, irds_id=ds_id) if ds_id is not None else None


def _folder(s: str, p: Path) -> CollectionRef | None:
    return CollectionRef("folder", str(p.resolve()), path=p.resolve()) if p.is_dir() else None


def _file(s: str, p: Path) -> CollectionRef | None:
    if not p.is_file():
        return None
    if p.suffix not in DOC_FILE_SUFFIXES:
        raise ClirError(f"{p}: unsupported collection file (expected .jsonl or .tsv)")
    return CollectionRef("file", str(p.resolve()), path=p.resolve())


def _sample(s: str, p: Path) -> CollectionRef | None:
    from clir.data.sample import SAMPLE_NAME, sample_path

    return CollectionRef("sample", SAMPLE_NAME, path=sample_path()) if s == SAMPLE_NAME else None


def _bare_irds(s: str, p: Path) -> CollectionRef | None:
    """A bare id ir_datasets' registry knows (checked offline); tried last, so a folder of that name wins."""
    from clir.data.irds import load_dataset

    if s.startswith((".", "/", "~")) or p.is_symlink():
        return None
    try:
        load_dataset(s)
    except ClirError:
        return None
    return CollectionRef("irds", IRDS_PREFIX + s, irds_id=s)


#: the collection sources, tried in this order: the first that recognises a string names it. A new source
#: is one function here (and, if it reads its own format, a :class:`Collection` in ``CollectionRef.open``).
SOURCES: tuple[Callable[[str, Path], CollectionRef | None], ...] = (
    _irds,
    _folder,
    _file,
    _sample,
    _bare_irds,
)


def resolve_collection(src: str | Path, *, what: str | None = None) -> CollectionRef:
    """Resolve a collection string through :data:`SOURCES` (offline: a bare id is checked against
    ir_datasets' registry only); ``what`` names it in errors (default ``unknown collection 'SRC'``)."""
    from clir.data.sample import SAMPLE_NAME

    s = str(src).strip()
    what = what or f"unknown collection {s!r}"
    p = Path(s).expanduser()
    for source in SOURCES:
        ref = source(s, p)
        if ref is not None:
            return ref
    if p.is_symlink():  # a link to nothing: a loop or a missing target (resolving it would raise)
        raise NotFoundError(f"{what}: {p} is a symbolic link that leads to no file or folder (a loop?)")
    where = f"resolved against {Path.cwd()}: {os.path.abspath(p)}"
    if s.startswith((".", "/", "~")):
        raise NotFoundError(f"{what}: folder not found ({where})")
    raise NotFoundError(
        f"{what}: not a folder ({where}), a .jsonl/.tsv file, or an "
        f"ir_datasets id (irds:<id>, e.g. irds:hc4/fa/test; see https://ir-datasets.com); "
        f"'{SAMPLE_NAME}' is the bundled sample"
    )


def names_collection(src: str | Path) -> bool:
    """Whether ``src`` names a collection by its form alone (``irds:<id>``, a folder, a docs file), so that
    other readers (a language adapter's ``--text``) tell it from a plain text file by the same rule."""
    p = Path(str(src)).expanduser()
    return irds_id(src) is not None or p.is_dir() or p.suffix in DOC_FILE_SUFFIXES


def load_collection(src: str | Path) -> Collection:
    """The collection a source names: a folder, a .jsonl/.tsv docs file, ``sample`` or an ir_datasets id."""
    return resolve_collection(src).open()


def load_queries(src: str | Path, *, field: str | None = None, lang: str | None = None) -> list[Query]:
    """Queries from a .tsv file, a collection folder or an ``irds:`` id."""
    p = Path(str(src)).expanduser()
    if p.is_file():
        return read_queries_tsv(p)  # checks ids by line
    queries = load_collection(src).queries(field=field, lang=lang)
    seen: set[str] = set()
    for q in queries:
        if q.query_id in seen:  # a run keys results by query id: one of the two would be dropped
            raise ClirError(f"{src}: query id {q.query_id} appears twice")
        seen.add(q.query_id)
    return queries


def load_qrels(src: str | Path) -> Qrels:
    """Qrels from a TREC qrels file, a collection folder or an ``irds:`` id."""
    p = Path(str(src)).expanduser()
    if p.is_file():
        return read_qrels(p)
    return load_collection(src).qrels()
