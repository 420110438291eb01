"""``irds:<id>`` sources through ir_datasets' own loaders, with offline failures turned into one message
naming the files to place under IR_DATASETS_HOME."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from clir.data.collections import Collection, Document, Qrels, Query
from clir.errors import ClirError, NotFoundError

log = logging.getLogger(__name__)

PARTS = ("docs", "queries", "qrels")


def load_dataset(ds_id: str):
    import ir_datasets

    from clir.data import public, public_train

    # the clir/... datasets (XQuAD-R, Tatoeba; UD sentences, WikiQA triples), registered on first use
    public.register()
    public_train.register()
    try:
        return ir_datasets.load(ds_id)
    except KeyError:
        raise NotFoundError(
            f"unknown ir_datasets id {ds_id!r} (see https://ir-datasets.com for the catalogue)"
        ) from None


def _walk_files(obj: Any, seen: set[int], depth: int = 0) -> Iterator[tuple[Path, list[str]]]:
    """Files behind an ir_datasets handler: Download/Cache objects found by walking its attributes."""
    if depth > 6 or id(obj) in seen or obj is None or isinstance(obj, str | int | float | bytes | Path):
        return
    seen.add(id(obj))
    path = getattr(obj, "_path", None) or getattr(obj, "_cache_path", None)
    if _is_file_source(obj) and path:
        urls = [getattr(m, "url", None) for m in getattr(obj, "mirrors", []) or []]
        yield Path(str(path)), [u for u in urls if u]
        return
    if isinstance(obj, list | tuple):
        children = list(obj)
    elif isinstance(obj, dict):
        children = list(obj.values())
    elif hasattr(obj, "__dict__"):
        children = list(vars(obj).values())
    else:
        return
    for child in children:
        yield from _walk_files(child, seen, depth + 1)


def _is_file_source(obj: Any) -> bool:
    from ir_datasets.util import Cache, Download

    return isinstance(obj, Download | Cache)


def required_files(ds_id: str, parts: tuple[str, ...] = PARTS) -> list[tuple[str, Path, list[str]]]:
    """(part, local path, source urls) for each file the parts of ``ds_id`` read."""
    ds = load_dataset(ds_id)
    out = []
    for part in parts:
        if not getattr(ds, f"has_{part}")():
            continue
        handler = getattr(ds, f"{part}_handler")()
        for path, urls in _walk_files(handler, set()):
            out.append((part, path, urls))
    return out


def missing_files(ds_id: str, parts: tuple[str, ...] = PARTS) -> list[tuple[str, Path, list[str]]]:
    return [(part, p, urls) for part, p, urls in required_files(ds_id, parts) if not p.exists()]


def by_file(missing: list[tuple[str, Path, list[str]]]) -> list[tuple[str, Path, list[str]]]:
    """(the parts that read it, joined by ", "; path; urls) once per file of ``missing``."""
    by_path: dict[Path, tuple[list[str], list[str]]] = {}
    for part, path, urls in missing:
        parts, _ = by_path.setdefault(path, ([], urls))
        if part not in parts:
            parts.append(part)
    return [(", ".join(parts), path, urls) for path, (parts, urls) in by_path.items()]


def offline_message(ds_id: str, missing: list[tuple[str, Path, list[str]]]) -> str:
    home = os.environ.get("IR_DATASETS_HOME", str(Path.home() / ".ir_datasets"))
    lines = [f"ir_datasets {ds_id!r} needs files that are not on this machine (IR_DATASETS_HOME={home}):"]
    for parts, path, urls in by_file(missing):  # one line per file, whichever parts read it
        src = f" (from {urls[0]})" if urls else ""
        lines.append(f"  - {parts}: {path}{src}")
    lines.append("Download them on a machine with internet access and place them at those paths.")
    return "\n".join(lines)


def ensure_available(ds_id: str, parts: tuple[str, ...] = PARTS) -> None:
    """Raise one ClirError listing every missing file, before any work starts."""
    missing = missing_files(ds_id, parts)
    if missing:
        raise ClirError(offline_message(ds_id, missing))


class IrdsCollection(Collection):
    def __init__(self, ds_id: str) -> None:
        self.ds_id = ds_id
        self.name = f"irds:{ds_id}"
        self._ds = None

    @property
    def ds(self):
        if self._ds is None:
            self._ds = load_dataset(self.ds_id)
        return self._ds

    @property
    def lang(self) -> str | None:  # type: ignore[override]
        try:
            return self.ds.docs_lang() if self.ds.has_docs() else None
        except Exception:  # some datasets have no language metadata
            return None

    def _guard(self, part: str, fn):
        from ir_datasets.util import HashVerificationError

        try:
            return fn()
        except HashVerificationError as e:  # a corrupt or changed file: its message names both checksums
            raise ClirError(f"{self.name}: refused {part} file: {e}") from None
        except (FileNotFoundError, OSError, ConnectionError) as e:
            missing = missing_files(self.ds_id, (part,))
            if missing:
                raise ClirError(offline_message(self.ds_id, missing)) from None
            raise ClirError(f"{self.name}: could not read {part}: {e}") from None
        except Exception as e:  # ir_datasets wraps download errors in assorted types
            if "download" in type(e).__name__.lower() or "download" in str(e).lower():
                raise ClirError(offline_message(self.ds_id, missing_files(self.ds_id, (part,)))) from None
            raise

    def docs_labelled(self) -> bool:
        """Whether each document names its own language (a ``lang`` field: clir's multilingual datasets)."""
        try:
            return self.ds.has_docs() and "lang" in getattr(self.ds.docs_cls(), "_fields", ())
        except Exception:  # a dataset without a documents class
            return False

    def docs(self) -> Iterator[Document]:
        if not self.ds.has_docs():
            raise ClirError(f"{self.name} has no documents")
        lang = self.lang
        it = self._guard("docs", lambda: iter(self.ds.docs_iter()))
        while True:
            try:
                doc = self._guard("docs", lambda: next(it))
            except StopIteration:
                return
            text = getattr(doc, "text", None)
            if text is None:
                text = doc.default_text()
            title = getattr(doc, "title", "") or ""
            yield Document(str(doc.doc_id), str(text), str(title), getattr(doc, "lang", None) or lang)

    def count_docs(self) -> int | None:
        try:
            return int(self.ds.docs_count()) if self.ds.has_docs() else None
        except Exception:  # count metadata may need a download
            return None

    def has_queries(self) -> bool:
        return self.ds.has_queries()

    def query_fields(self) -> list[str]:
        return [f for f in self.ds.queries_cls()._fields if f != "query_id"]

    def queries(self, field: str | None = None, lang: str | None = None) -> list[Query]:
        if not self.ds.has_queries():
            raise ClirError(f"{self.name} has no queries")
        fields = self.query_fields()
        names = (field or ("title" if "title" in fields else "text" if "text" in fields else "")).split("+")
        if lang:  # document-language query text: HC4/NeuCLIR topics carry human translations as ht_*
            names = [f"ht_{n}" for n in names]
        for n in names:
            if n and n not in fields:
                raise ClirError(f"{self.name}: queries have no field {n!r} (fields: {', '.join(fields)})")
        out = []
        for q in self._guard("queries", lambda: list(self.ds.queries_iter())):
            text = " ".join(str(getattr(q, n) or "") for n in names).strip() if names[0] else q.default_text()
            out.append(Query(str(q.query_id), text))
        return out

    def query_langs(self) -> list[str]:
        fields = self.query_fields() if self.ds.has_queries() else []
        lang = self.lang
        return [lang] if lang and any(f.startswith("ht_") for f in fields) else []

    def has_qrels(self) -> bool:
        return self.ds.has_qrels()

    def qrels(self) -> Qrels:
        if not self.ds.has_qrels():
            raise ClirError(f"{self.name} has no qrels")
        out: Qrels = {}
        for qr in self._guard("qrels", lambda: list(self.ds.qrels_iter())):
            out.setdefault(str(qr.query_id), {})[str(qr.doc_id)] = int(qr.relevance)
        return out
