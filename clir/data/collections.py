"""Collection sources: a local collection folder or a single .jsonl/.tsv file (ir_datasets ids live in
:mod:`clir.data.irds`; :mod:`clir.data.resolve` decides which a source string names).

A local folder holds ``docs.jsonl`` (``doc_id``, ``text``, optional ``title``, ``lang``), ``queries.tsv``
(``query_id<TAB>text``; ``queries.<lang>.tsv`` for translated queries) and ``qrels.txt`` (TREC)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from clir.errors import ClirError

log = logging.getLogger(__name__)

IRDS_PREFIX = "irds:"
_ID_KEYS = ("doc_id", "docid", "id", "_id", "pid")
_TEXT_KEYS = ("text", "contents", "body", "passage")


@dataclass
class Document:
    doc_id: str
    text: str
    title: str = ""
    lang: str | None = None

    def full_text(self) -> str:
        """Title + text, the way documents are encoded when a title exists."""
        return f"{self.title} {self.text}".strip() if self.title else self.text


@dataclass
class Query:
    query_id: str
    text: str


Qrels = dict[str, dict[str, int]]


class Collection:
    """Documents and, where the source has them, queries and qrels. Iteration is lazy and streamed."""

    name: str = ""
    lang: str | None = None  # the documents' language when the source knows it

    def docs(self) -> Iterator[Document]:
        raise NotImplementedError

    def count_docs(self) -> int | None:
        """Number of documents when cheaply known (for progress bars), else None."""
        return None

    def has_queries(self) -> bool:
        return False

    def queries(self, field: str | None = None, lang: str | None = None) -> list[Query]:
        raise ClirError(f"{self.name}: this source has no queries")

    def has_qrels(self) -> bool:
        return False

    def qrels(self) -> Qrels:
        raise ClirError(f"{self.name}: this source has no qrels")

    def query_langs(self) -> list[str]:
        """Languages with document-language query text (``queries.<lang>.tsv`` / translated topics)."""
        return []


# ---------------------------------------------------------------------- file readers
def read_docs_jsonl(path: Path) -> Iterator[Document]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ClirError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise ClirError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            doc_id = next((obj[k] for k in _ID_KEYS if k in obj), None)
            if doc_id is None or str(doc_id) == "":
                raise ClirError(f"{path}:{lineno}: missing 'doc_id'")
            text = next((obj[k] for k in _TEXT_KEYS if k in obj), None)
            if text is None:
                raise ClirError(f"{path}:{lineno}: missing 'text' (doc {doc_id})")
            if not isinstance(text, str):
                raise ClirError(f"{path}:{lineno}: 'text' must be a string (doc {doc_id})")
            title = obj.get("title") or ""
            lang = obj.get("lang") or obj.get("language")
            yield Document(str(doc_id), text, str(title), str(lang) if lang else None)


def _tsv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, tab-separated fields) of each non-blank line."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if line.strip():
                yield lineno, line.split("\t")


def read_docs_tsv(path: Path) -> Iterator[Document]:
    """MS MARCO's collection.tsv layout: ``doc_id<TAB>text`` (or ``doc_id<TAB>title<TAB>text``)."""
    for lineno, parts in _tsv_rows(path):
        if len(parts) == 2:
            yield Document(parts[0], parts[1])
        elif len(parts) == 3:
            yield Document(parts[0], parts[2], parts[1])
        else:
            raise ClirError(f"{path}:{lineno}: expected 'doc_id<TAB>text', got {len(parts)} field(s)")


def read_queries_tsv(path: Path) -> list[Query]:
    out = []
    for lineno, parts in _tsv_rows(path):
        if len(parts) < 2:
            raise ClirError(f"{path}:{lineno}: expected 'query_id<TAB>text'")
        out.append(Query(parts[0], parts[1]))
    return out


def trec_rows(path: Path, what: str, layout: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank line of a whitespace-separated TREC file whose lines are
    ``layout`` (e.g. ``query_id 0 doc_id relevance``); a line with another number of fields is an error."""
    n = len(layout.split())
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != n:
                raise ClirError(f"{path}:{lineno}: expected {what} {layout!r}")
            yield lineno, parts


def read_qrels(path: Path) -> Qrels:
    qrels: Qrels = {}
    for lineno, parts in trec_rows(path, "TREC qrels", "query_id 0 doc_id relevance"):
        try:
            rel = int(parts[3])
        except ValueError:
            raise ClirError(f"{path}:{lineno}: relevance {parts[3]!r} is not an integer") from None
        qrels.setdefault(parts[0], {})[parts[2]] = rel
    return qrels


# ---------------------------------------------------------------------- local sources
def _count_lines(path: Path | None) -> int | None:
    if path is None or not path.is_file():
        return None
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


class LocalCollection(Collection):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.name = str(root)
        docs = [root / "docs.jsonl", root / "collection.tsv", root / "docs.tsv"]
        self._docs = next((p for p in docs if p.is_file()), None)

    def docs(self) -> Iterator[Document]:
        if self._docs is None:
            raise ClirError(f"{self.root}: no docs.jsonl in this collection folder")
        yield from (read_docs_tsv if self._docs.suffix == ".tsv" else read_docs_jsonl)(self._docs)

    def count_docs(self) -> int | None:
        return _count_lines(self._docs)

    def has_queries(self) -> bool:
        return (self.root / "queries.tsv").is_file()

    def queries(self, field: str | None = None, lang: str | None = None) -> list[Query]:
        path = self.root / (f"queries.{lang}.tsv" if lang else "queries.tsv")
        if not path.is_file():
            raise ClirError(f"{self.root}: no {path.name}")
        return read_queries_tsv(path)

    def query_langs(self) -> list[str]:
        return sorted(p.name.split(".")[1] for p in self.root.glob("queries.*.tsv"))

    def has_qrels(self) -> bool:
        return (self.root / "qrels.txt").is_file()

    def qrels(self) -> Qrels:
        path = self.root / "qrels.txt"
        if not path.is_file():
            raise ClirError(f"{self.root}: no qrels.txt")
        return read_qrels(path)


class FileCollection(Collection):
    """A single docs file (.jsonl or .tsv)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)

    def docs(self) -> Iterator[Document]:
        yield from (read_docs_tsv if self.path.suffix == ".tsv" else read_docs_jsonl)(self.path)

    def count_docs(self) -> int | None:
        return _count_lines(self.path)
