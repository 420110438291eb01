"""The BM25 baseline through Pyserini: a Lucene index with the document language's analyzer, searched with
document-language queries (HC4/NeuCLIR human translations, a local collection's ``queries.<lang>.tsv``).

Pyserini needs Java >= 21 and is optional (``pip install 'clir[bm25]'``); it is imported lazily, and the Java
side's logging is sent to stderr so that stdout keeps only what a command prints."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from clir.data import Document, Query
from clir.errors import ClirError
from clir.safe_load import read_json

log = logging.getLogger(__name__)

#: where the project's machines keep a Java new enough for Pyserini 1.x (used when JAVA_HOME is unset)
DEFAULT_JAVA_HOME = "/usr/lib/jvm/temurin-25-jdk-amd64"
MARKER = "clir_bm25.json"

#: languages with a Lucene analyzer in Anserini (zh/ko share the CJK analyzer; en is Anserini's default)
ANALYZERS = {
    "ar", "bn", "da", "de", "en", "es", "fa", "fi", "fr", "hi", "hu", "id", "it", "ja", "ko",
    "nl", "no", "pl", "pt", "ru", "sv", "te", "th", "tr", "uk", "zh",
}  # fmt: skip

# ISO 639-2/3 codes (Tatoeba uses them) -> the 639-1 codes Lucene analyzers go by
_ISO3 = {
    "ara": "ar", "ben": "bn", "dan": "da", "deu": "de", "ger": "de", "eng": "en", "spa": "es", "fas": "fa",
    "per": "fa", "pes": "fa", "fin": "fi", "fra": "fr", "fre": "fr", "hin": "hi", "hun": "hu", "ind": "id",
    "ita": "it", "jpn": "ja", "kor": "ko", "nld": "nl", "dut": "nl", "nor": "no", "nob": "no", "pol": "pl",
    "por": "pt", "rus": "ru", "swe": "sv", "tel": "te", "tha": "th", "tur": "tr", "ukr": "uk", "zho": "zh",
    "chi": "zh", "cmn": "zh", "ell": "el", "gre": "el", "vie": "vi",
}  # fmt: skip


def normalize_lang(lang: str) -> str:
    """``deu`` -> ``de``, ``zh-CN`` -> ``zh``: the two-letter code analyzers and adapters go by."""
    code = lang.strip().lower().replace("_", "-").split("-")[0]
    return _ISO3.get(code, code)


def analyzer_lang(lang: str | None) -> str:
    if not lang:
        raise ClirError("BM25 needs the documents' language (set doc_lang on the collection)")
    code = normalize_lang(lang)
    if code not in ANALYZERS:
        raise ClirError(
            f"BM25: no Lucene analyzer for language {lang!r} (Anserini has: {', '.join(sorted(ANALYZERS))})"
        )
    return code


def _java_env() -> None:
    if not os.environ.get("JAVA_HOME") and Path(DEFAULT_JAVA_HOME).is_dir():
        os.environ["JAVA_HOME"] = DEFAULT_JAVA_HOME
    # pyserini's package import touches an OpenAI client that insists on a key, even for BM25
    os.environ.setdefault("OPENAI_API_KEY", "x")


def unavailable_reason() -> str | None:
    """Why BM25 cannot run here (None when Pyserini and a Java home are present); cheap, imports nothing."""
    if importlib.util.find_spec("pyserini") is None:
        return "Pyserini is not installed (pip install 'clir[bm25]', which needs Java >= 21)"
    _java_env()
    home = os.environ.get("JAVA_HOME")
    if not home or not (Path(home) / "bin" / "java").exists():
        return (
            f"no Java for Pyserini: set JAVA_HOME to a JDK >= 21 (JAVA_HOME={home or 'unset'}; "
            f"the project's machines have {DEFAULT_JAVA_HOME})"
        )
    return None


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Lucene/Anserini log to the process's stdout: point fd 1 at stderr meanwhile."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _import_pyserini():
    reason = unavailable_reason()
    if reason:
        raise ClirError(f"BM25 rows cannot run: {reason}")
    try:
        with _stdout_to_stderr():
            from pyserini.index.lucene import LuceneIndexer
            from pyserini.search.lucene import LuceneSearcher
    except Exception as e:  # the JVM bridge fails in many ways (wrong Java, missing jars)
        raise ClirError(f"BM25 rows cannot run: importing Pyserini failed: {e}") from None
    return LuceneIndexer, LuceneSearcher


def index_matches(folder: Path, collection: str, lang: str) -> bool:
    marker = folder / MARKER
    if not marker.is_file():
        return False
    try:
        info = read_json(marker)
    except (OSError, ClirError):
        return False
    return isinstance(info, dict) and info.get("collection") == collection and info.get("lang") == lang


def build_bm25_index(
    docs: Iterable[Document], out: str | Path, *, lang: str, collection: str, threads: int = 2
) -> Path:
    """A Lucene index of ``docs`` with ``lang``'s analyzer at ``out`` (built in ``OUT.partial``, renamed)."""
    from clir.progress import progress

    LuceneIndexer, _ = _import_pyserini()
    code = analyzer_lang(lang)
    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with _stdout_to_stderr():
        indexer = LuceneIndexer(args=["-index", str(tmp), "-language", code], threads=max(1, threads))
        batch: list[dict[str, str]] = []
        for doc in progress(docs, desc=f"bm25 index {out.name}", unit="doc"):
            batch.append({"id": doc.doc_id, "contents": doc.full_text()})
            if len(batch) == 1000:
                indexer.add_batch_dict(batch)
                n += len(batch)
                batch = []
        if batch:
            indexer.add_batch_dict(batch)
            n += len(batch)
        indexer.close()
    if n == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ClirError(f"BM25: collection {collection} has no documents")
    info = {"collection": collection, "lang": lang, "analyzer": code, "num_docs": n}
    (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def bm25_search(
    index: str | Path,
    queries: list[Query],
    *,
    lang: str,
    k: int = 1000,
    k1: float = 0.9,
    b: float = 0.4,
    threads: int = 2,
) -> dict[str, dict[str, float]]:
    """BM25 run ``{qid: {doc_id: score}}`` of ``queries`` (analysed like the documents)."""
    _, LuceneSearcher = _import_pyserini()
    code = analyzer_lang(lang)
    with _stdout_to_stderr():
        searcher = LuceneSearcher(str(index))
        searcher.set_language(code)
        searcher.set_bm25(k1, b)
        qids = [q.query_id for q in queries]
        hits = searcher.batch_search([q.text for q in queries], qids, k=k, threads=max(1, threads))
        searcher.close()
    return {qid: {h.docid: float(h.score) for h in hits.get(qid, [])} for qid in qids}
