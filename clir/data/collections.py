"""Collection sources: a local collection folder or a single .jsonl/.tsv file (ir_datasets ids live in
:mod:`clir.data.irds`; :mod:`clir.data.resolve` decides which a source string names).

A local folder holds ``docs.jsonl`` (``doc_id``, ``text``, optional ``title``, ``lang``), ``queries.tsv``
(``query_id<TAB>text``; ``queries.<lang>.tsv`` for translated queries) and ``qrels.txt`` (TREC)."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from clir.errors import ClirError
from clir.safe_load import BOM, loads_json

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


# ---------------------------------------------------------------------- text rules
def check_text(text: str, what: str) -> None:
    """Text entering clir must be encodable Unicode: a lone surrogate (``"\\ud800"`` in JSON) has no UTF-8
    form and would break the tokenizer or the files written later. One rule everywhere: refused, naming
    where (``file:line`` here, a 422 in the REST app)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ClirError(
            f"{what}: invalid Unicode (lone surrogate {text[e.start]!r} at character {e.start + 1})"
        ) from None


def check_doc_id(doc_id: object, where: str) -> str:
    """Doc ids travel through TREC run files and Pyserini's one-id-per-line ``docid`` file: a string (or an
    integer) without whitespace."""
    if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
        raise ClirError(f"{where}: doc id must be a string, got {type(doc_id).__name__} {doc_id!r:.60}")
    doc_id = str(doc_id)
    if not doc_id:
        raise ClirError(f"{where}: empty doc id")
    if any(c.isspace() for c in doc_id):
        raise ClirError(
            f"{where}: doc id {doc_id!r:.60} contains whitespace, which TREC run files and the index's docid "
            "file cannot hold"
        )
    check_text(doc_id, where)
    return doc_id


#: a language code: ISO 639 letters with optional subtags (``de``, ``fas``, ``zh-Hans``, ``pt_BR``)
_LANG = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8}){0,3}")


def check_lang(lang: object, where: str) -> str | None:
    """A document's language: a language code, or None when absent. Anything else (NaN, a mapping, a
    sentence) would route documents to an adapter named after it and be counted in the manifest."""
    if lang is None or lang == "":
        return None
    if not isinstance(lang, str) or not _LANG.fullmatch(lang):
        shown = f"{lang!r:.60}" if isinstance(lang, str) else f"{type(lang).__name__} {lang!r:.60}"
        raise ClirError(f"{where}: lang {shown} is not a language code (e.g. de, fa, zh-Hans)")
    return lang


#: a line longer than this is not a document clir can encode (a file without newlines, a damaged one)
MAX_LINE_BYTES = 256 << 20


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file, a byte-order mark dropped; a line that is not UTF-8, or
    longer than :data:`MAX_LINE_BYTES`, is an error naming it."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), b""), 1):
            if len(raw) > MAX_LINE_BYTES:
                raise ClirError(f"{path}:{lineno}: line longer than {MAX_LINE_BYTES >> 20} MiB")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ClirError(
                    f"{path}:{lineno}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
                ) from None
            yield lineno, text.removeprefix(BOM) if lineno == 1 else text


# ---------------------------------------------------------------------- file readers
def read_docs_jsonl(path: Path) -> Iterator[Document]:
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        obj = loads_json(line, f"{path}:{lineno}")
        if not isinstance(obj, dict):
            raise ClirError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        doc_id = next((obj[k] for k in _ID_KEYS if k in obj), None)
        if doc_id is None or doc_id == "":
            raise ClirError(f"{path}:{lineno}: missing 'doc_id'")
        doc_id = check_doc_id(doc_id, f"{path}:{lineno}")
        text = next((obj[k] for k in _TEXT_KEYS if k in obj), None)
        if text is None:
            raise ClirError(f"{path}:{lineno}: missing 'text' (doc {doc_id})")
        if not isinstance(text, str):
            raise ClirError(f"{path}:{lineno}: 'text' must be a string (doc {doc_id})")
        title = obj.get("title") or ""
        if not isinstance(title, str):
            raise ClirError(f"{path}:{lineno}: 'title' must be a string (doc {doc_id})")
        check_text(title + text, f"{path}:{lineno} (doc {doc_id})")
        lang = obj.get("lang")
        if lang is None or lang == "":
            lang = obj.get("language")
        yield Document(doc_id, text, title, check_lang(lang, f"{path}:{lineno} (doc {doc_id})"))


def read_docs_tsv(path: Path) -> Iterator[Document]:
    """MS MARCO's collection.tsv layout: ``doc_id<TAB>text`` (or ``doc_id<TAB>title<TAB>text``)."""
    for lineno, line in _lines(path):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) not in (2, 3):
            raise ClirError(f"{path}:{lineno}: expected 'doc_id<TAB>text', got {len(parts)} field(s)")
        doc_id = check_doc_id(parts[0], f"{path}:{lineno}")
        if len(parts) == 2:
            yield Document(doc_id, parts[1])
        else:
            yield Document(doc_id, parts[2], parts[1])


def read_queries_tsv(path: Path) -> list[Query]:
    """``query_id<TAB>text`` per line; blank lines are skipped, anything else malformed is refused by line
    (as ``--query`` and the REST app refuse blank queries)."""
    out = []
    first: dict[str, int] = {}  # query id -> its line
    for lineno, line in _lines(path):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise ClirError(f"{path}:{lineno}: expected 'query_id<TAB>text', got {len(parts)} field(s)")
        qid, text = parts[0].strip(), parts[1]
        if not qid or any(c.isspace() for c in qid):
            raise ClirError(f"{path}:{lineno}: query id {parts[0]!r:.60} is empty or contains whitespace")
        if not text.strip():
            raise ClirError(f"{path}:{lineno}: query {qid} is blank")
        check_text(qid + text, f"{path}:{lineno}")
        if qid in first:  # a run keys results by query id: one of the two would be dropped
            raise ClirError(f"{path}:{lineno}: query id {qid} repeats (first on line {first[qid]})")
        first[qid] = lineno
        out.append(Query(qid, text))
    return out


def trec_rows(path: Path, what: str, layout: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank line of a whitespace-separated TREC file whose lines are
    ``layout`` (e.g. ``query_id 0 doc_id relevance``); a line with another number of fields is an error."""
    n = len(layout.split())
    for lineno, line in _lines(path):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != n:
            raise ClirError(f"{path}:{lineno}: expected {what} {layout!r}")
        yield lineno, parts


#: relevance grades a qrels file may hold. TREC's are -2..4; nDCG's gain 2^rel - 1 stays finite in float64
#: (and in ranx's int64 arrays) well past this
MAX_RELEVANCE = 1000


def read_qrels(path: Path) -> Qrels:
    qrels: Qrels = {}
    for lineno, parts in trec_rows(path, "TREC qrels", "query_id 0 doc_id relevance"):
        try:
            rel = int(parts[3])
        except ValueError:
            raise ClirError(f"{path}:{lineno}: relevance {parts[3]!r} is not an integer") from None
        if abs(rel) > MAX_RELEVANCE:
            raise ClirError(
                f"{path}:{lineno}: relevance {parts[3]:.30} is outside -{MAX_RELEVANCE}..{MAX_RELEVANCE}"
            )
        qrels.setdefault(parts[0], {})[parts[2]] = rel
    return qrels


def parse_score(text: str, where: str) -> float:
    """A run's score: a finite number (NaN or infinity has no rank among the others)."""
    try:
        score = float(text)
    except ValueError:
        raise ClirError(f"{where}: score {text!r:.30} is not a number") from None
    if not math.isfinite(score):
        raise ClirError(f"{where}: score {text!r:.30} is not a finite number")
    return score


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
