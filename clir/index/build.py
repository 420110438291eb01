"""Encode a collection into an index folder: chunked, resumable, shardable, crash safe.

Documents are encoded in fixed chunks of the collection (``chunk_size`` kept documents each) and every chunk
is checkpointed under ``OUT.partial/chunks``: ``--resume`` after a kill re-encodes only missing chunks, and
since chunk boundaries do not depend on where a run stopped, the result equals an uninterrupted build.
Everything is written under ``OUT.partial`` and renamed to ``OUT`` at the end."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clir.atomic import disk_errors
from clir.config.index import IndexRequest
from clir.config.model import Routing
from clir.data import Collection, Document, load_collection
from clir.data.collections import check_lang
from clir.errors import ClirError
from clir.index import store
from clir.index.chunks import (
    CHUNKS,
    FINAL,
    STATE_FILE,
    chunk_done,
    chunk_paths,
    disk_hint,
    lock_build,
    prepare_partial,
    read_chunk_meta,
    recover_swap,
    unlock_build,
    write_chunk,
)
from clir.index.faiss_index import check_factory
from clir.index.passages import Splitter, check_passage_ids, passage_id
from clir.index.recipe import IndexRecipe
from clir.model.protocol import Encoder
from clir.safe_load import read_json
from clir.workdir import WorkDir

log = logging.getLogger(__name__)


#: the verb's request (its home is config); the old name kept for callers
IndexArgs = IndexRequest


LANG_ID_MODES = ("missing", "all", "off")


@dataclass
class IndexResult:
    path: Path
    num_docs: int
    num_passages: int
    skipped_empty: int
    encoded_docs: int  # passages (index rows) encoded by this run (resume skips finished chunks)
    seconds_encoding: float
    seconds_total: float


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ClirError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise ClirError(f"--shard {text!r}: need 0 <= I < N")
    return i, n


def _doc_lang(
    doc: Document, args: IndexArgs, default_lang: str | None, lid, counters
) -> tuple[str | None, bool]:
    """(language, detected?): --doc-lang, else the document's label, else the dataset's, else language id."""
    if args.doc_lang:
        return args.doc_lang, False
    if args.lang_id != "all" and (doc.lang or default_lang):
        return doc.lang or default_lang, False
    if lid is None:
        return None, False
    lang = lid.detect(doc.full_text())
    counters["lang_detected" if lang else "lang_undetermined"] += 1
    return lang, lang is not None


def _records(docs: Iterator[Document], args: IndexArgs, default_lang: str | None, counters, splitter, lid):
    """Kept documents as passage records (one per passage, with the document's collection ordinal ``pos``
    and passage number ``n``); checks ids across the whole collection."""
    seen: set[str] = set()
    numbered: set[str] = set()  # ids of the form BASE#n: their BASEs
    for ordinal, doc in enumerate(docs):
        if doc.doc_id in seen:
            raise ClirError(f"duplicate doc id {doc.doc_id!r} in {args.collection} (document #{ordinal + 1})")
        seen.add(doc.doc_id)
        if splitter is not None:
            check_passage_ids(doc.doc_id, seen, numbered, args.collection, ordinal)
        if args.shard and ordinal % args.shard[1] != args.shard[0]:
            continue
        if not doc.full_text().strip():
            counters["skipped_empty"] += 1
            continue
        lang, detected = _doc_lang(doc, args, default_lang, lid, counters)
        base: dict[str, Any] = {"pos": ordinal, "doc_id": doc.doc_id, "title": doc.title, "lang": lang}
        if detected:
            base["lang_detected"] = True
        spans = splitter.split(doc.title, doc.text) if splitter is not None and doc.text.strip() else None
        if not spans or len(spans) == 1:  # whole: exactly the text a truncating build encodes
            yield {**base, "pid": doc.doc_id, "n": 0, "text": doc.text}
            continue
        counters["split_docs"] += 1
        for n, (start, end) in enumerate(spans):
            rec = {**base, "pid": passage_id(doc.doc_id, n, len(spans)), "n": n, "start": start, "end": end}
            rec["text"] = doc.text[start:end]
            if n == 0:
                rec["doc_text"] = doc.text  # the document store keeps each document once
            yield rec


def encode_records(
    encoder: Encoder, recs: list[dict[str, Any]], batch_size: int, routing: Routing | None = None
) -> np.ndarray:
    """Encode records under ``routing``: where documents of different languages go through different adapters,
    each language group is batched on its own (its language as the fallback rule gives it); otherwise one pass
    (the same batches whatever the languages)."""
    texts = [(f"{r['title']} {r['text']}".strip() if r.get("title") else r["text"]) for r in recs]
    if encoder.routes_docs_by_lang(routing):
        out = np.empty((len(recs), encoder.dim), dtype=np.float32)
        # the fallback rule looks for an adapter's folder: once per language, not per document
        routed = {lang: encoder.doc_lang(lang, routing) for lang in {r["lang"] for r in recs}}
        groups: dict[str | None, list[int]] = {}
        for i, r in enumerate(recs):
            groups.setdefault(routed[r["lang"]], []).append(i)
        for lang, rows in groups.items():
            out[rows] = encoder.encode_passages(
                [texts[i] for i in rows], lang=lang, batch_size=batch_size, routing=routing
            )
        return out
    lang = recs[0]["lang"] if recs else None
    return encoder.encode_passages(texts, lang=lang, batch_size=batch_size, routing=routing)


def iter_chunks(b: BuildState):
    """``(chunk number, records)`` over the kept documents' passages, ``args.chunk_size`` at a time.
    Boundaries depend only on the collection and the settings, so any run (resumed, distributed) numbers
    chunks alike."""
    args = b.args
    buf: list[dict[str, Any]] = []
    no = 0
    lid = None
    if args.lang_id != "off":
        from clir.data.langid import LanguageIdentifier

        lid = LanguageIdentifier()
    for rec in _records(b.collection.docs(), args, b.collection.lang, b.counters, b.splitter, lid):
        buf.append(rec)
        if len(buf) == args.chunk_size:
            yield no, buf
            no += 1
            buf = []
    if buf:
        yield no, buf


@dataclass
class BuildState:
    """A build in progress: its folders, the collection, the encoder identity and the counters."""

    args: IndexArgs
    out: Path
    partial: Path
    collection: Collection
    recipe: IndexRecipe  # what the index is made of, the encoder's fingerprint included
    total: int | None  # documents the progress bar expects, when cheaply known
    splitter: Splitter | None
    counters: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("skipped_empty", "split_docs", "lang_detected", "lang_undetermined"), 0
        )
    )

    #: ``OUT``'s work folder, its lock held while this process owns the build (None once released)
    work: WorkDir | None = None

    @property
    def chunks_dir(self) -> Path:
        return self.partial / CHUNKS

    def release(self, *, failed: bool) -> None:
        """End of the build: a failed one that committed no chunk leaves nothing behind (``--resume`` could
        not use it); then the lock goes."""
        if failed and self.partial.is_dir() and not any(self.chunks_dir.glob("*.npy")):
            shutil.rmtree(self.partial, ignore_errors=True)
        unlock_build(self.work)
        self.work = None


def check_args(args: IndexArgs) -> tuple[Path, Path]:
    """Cheap checks before any model is loaded; returns (out, out.partial)."""
    out = Path(args.out)
    if out.is_symlink() and not out.exists():
        raise ClirError(f"--out {out} is a symbolic link to nothing (a loop, or a missing target)")
    if out.exists() and not args.overwrite:
        raise ClirError(
            f"{out} already exists: pass --overwrite to replace it (it stays intact until the new one is done)"
        )
    if out.exists() and not out.is_dir():
        raise ClirError(f"--out {out} is a file, not an index folder: remove it or give another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / store.MANIFEST_FILE).is_file():
        raise ClirError(
            f"--out {out} is a folder that holds no clir index: --overwrite replaces indexes only"
        )
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ClirError(f"--out {out}: {parent} is a file, so the folder cannot be created")
    if args.chunk_size < 1 or args.batch_size < 1:
        raise ClirError("--chunk-size and --batch-size must be >= 1")
    if args.lang_id not in LANG_ID_MODES:
        raise ClirError(f"--lang-id {args.lang_id!r}: expected one of {', '.join(LANG_ID_MODES)}")
    check_lang(args.doc_lang, "--doc-lang")
    if args.device:
        from clir.model.checks import torch_device

        torch_device(args.device)
    return out, out.with_name(out.name + ".partial")


def start_build(args: IndexArgs, encoder: Encoder) -> BuildState:
    """Open the collection and create (or, with ``args.resume``, reopen) ``OUT.partial``."""
    out, partial = check_args(args)
    collection = load_collection(args.collection)
    total = collection.count_docs()
    if total is not None and args.shard:
        total = (total + args.shard[1] - 1 - args.shard[0]) // args.shard[1]
    # what would fail after encoding fails now: the factory (string, dimension, training points)
    if not args.preset:  # a preset plans its factory for the collection's size
        check_factory(encoder.dim, args.factory, total)
    recipe = IndexRecipe.of(args, encoder.fingerprint(args.routing))
    passages = recipe.resolved_passages(encoder.config.max_passage_length)
    state = recipe.state(encoder.config.max_passage_length)
    splitter = None
    if passages["split"] == "passages":
        splitter = Splitter(encoder.tokenizer, passages, encoder.config.passage_prefix)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ClirError(f"cannot create the folder of --out {out}: {e.strerror}") from None
    work = lock_build(out)
    try:
        recover_swap(work, args.resume)
        check_args(args)  # a restored OUT.old is an existing OUT again
        prepare_partial(work, state, args.resume)
    except OSError as e:
        unlock_build(work)
        raise ClirError(f"cannot create {partial}: {e.strerror}") from None
    except BaseException:
        unlock_build(work)
        raise
    return BuildState(args, out, partial, collection, recipe, total, splitter, work=work)


def finish_build(b: BuildState, encoder: Encoder, n_chunks: int, n_rows: int) -> int:
    """Every chunk is encoded: write the index folder and rename it into place; returns the documents."""
    skipped_empty = b.counters["skipped_empty"]
    if n_rows == 0:
        shutil.rmtree(b.partial, ignore_errors=True)
        skipped = f" ({skipped_empty} empty document(s) skipped)" if skipped_empty else ""
        raise ClirError(f"collection {b.args.collection} has no documents to index{skipped}")
    if skipped_empty:
        log.warning("skipped %d document(s) with empty text", skipped_empty)
    return _finalize(b, encoder, n_chunks, n_rows)


def build_index(args: IndexArgs, encoder: Encoder | None = None) -> IndexResult:
    """Build ``args.out`` from ``args.collection`` with ``encoder`` (or the one ``args.model`` names)."""
    import time

    from clir.model import load_encoder
    from clir.progress import progress

    t0 = time.perf_counter()
    check_args(args)
    if encoder is None:
        encoder = load_encoder(args.model, args.overrides, device=args.device)
    b = start_build(args, encoder)
    bar = progress(total=b.total, desc=f"index {b.out.name}", unit="doc")
    encoded = 0
    t_enc = 0.0
    n_chunks = 0
    n_rows = 0
    failed = True
    try:
        with disk_errors(b.partial, disk_hint(b.out)):
            for no, recs in iter_chunks(b):
                if not chunk_done(b.chunks_dir, no):
                    t = time.perf_counter()
                    vecs = encode_records(encoder, recs, args.batch_size, args.routing)
                    t_enc += time.perf_counter() - t
                    write_chunk(b.chunks_dir, no, recs, vecs)
                    encoded += len(recs)
                n_chunks += 1
                n_rows += len(recs)
                bar.update(sum(r["n"] == 0 for r in recs))
            bar.close()
            n_docs = finish_build(b, encoder, n_chunks, n_rows)
        failed = False
    finally:
        bar.close()
        b.release(failed=failed)
    return IndexResult(
        b.out, n_docs, n_rows, b.counters["skipped_empty"], encoded, t_enc, time.perf_counter() - t0
    )


def _finalize(b: BuildState, encoder: Encoder, n_chunks: int, n_rows: int) -> int:
    """Chunks -> the index folder ``OUT.partial/final`` (unless a killed run already completed it), then its
    swap into place; only then do the chunks go, ``state.json`` first (see clir.index.chunks)."""
    final = b.partial / FINAL
    if (final / store.MANIFEST_FILE).is_file():
        log.info("%s is complete: swapping it in", final)
        n_docs = int(read_json(final / store.MANIFEST_FILE)["num_docs"])
    else:
        if final.exists():  # a finalisation cut short: written again from the chunks
            shutil.rmtree(final)
        final.mkdir()
        n_docs = _write_final(b, encoder, final, n_chunks, n_rows)
    assert b.work is not None  # finishing happens under the build's lock
    b.work.finish(final, record=STATE_FILE)
    return n_docs


def _write_final(b: BuildState, encoder: Encoder, final: Path, n_chunks: int, n_rows: int) -> int:
    """FAISS index + docid + doc store (+ passage map) into ``final``; the manifest, written last, marks it
    complete."""
    from clir.index.presets import write_faiss

    args = b.args
    chunks_dir = b.chunks_dir
    vec_paths = [chunk_paths(chunks_dir, i)[1] for i in range(n_chunks)]

    def load(p: Path, mmap: bool = False) -> np.ndarray:  # a damaged chunk: delete it, --resume encodes it
        return store.load_npy(p, what="chunk (delete it to encode it again)", kinds="f", mmap=mmap)

    sizes = [int(load(p, mmap=True).shape[0]) for p in vec_paths]

    def chunks():
        for p in vec_paths:
            yield load(p)

    def sample(n: int) -> np.ndarray:
        rng = np.random.default_rng(0)
        picks = np.sort(rng.choice(n_rows, size=n, replace=False))
        bounds = np.cumsum([0, *sizes])
        parts = []
        for i, p in enumerate(vec_paths):
            sel = picks[(picks >= bounds[i]) & (picks < bounds[i + 1])] - bounds[i]
            if len(sel):
                parts.append(load(p, mmap=True)[sel])
        return np.concatenate(parts)

    faiss_fields = write_faiss(
        final,
        encoder.dim,
        n_rows,
        chunks,
        sample,
        factory=args.factory,
        preset=args.preset,
        max_train=args.max_train,
    )

    writer = store.DocStoreWriter(final)
    ids: list[str] = []
    positions: list[int] = []
    spans: list[tuple[int, int, int, int]] = []  # per row: document, passage number, char start, end
    langs: dict[str, int] = {}
    for i in range(n_chunks):
        for rec in read_chunk_meta(chunk_paths(chunks_dir, i)[0]):
            if rec["n"] == 0:
                doc = {**rec, "text": rec.get("doc_text", rec["text"])}
                writer.add(doc)
                key = rec.get("lang") or "unknown"
                langs[key] = langs.get(key, 0) + 1
            ids.append(rec["pid"])
            positions.append(rec["pos"])
            spans.append((writer.count - 1, rec["n"], rec.get("start", 0), rec.get("end", len(rec["text"]))))
    writer.close()
    store.write_docids(final / store.DOCID_FILE, ids)
    split = b.counters["split_docs"] > 0
    if split:
        store.atomic_save_npy(final / store.PASSAGES_FILE, np.asarray(spans, dtype=np.int64))
    manifest = {**_manifest(b, encoder, langs, writer.count, n_rows), **faiss_fields}
    if args.shard:
        store.atomic_save_npy(final / store.VECTORS_FILE, np.concatenate(list(chunks())))
        store.atomic_save_npy(final / store.POSITIONS_FILE, np.asarray(positions, dtype=np.int64))
    store.write_manifest(final, manifest)
    return writer.count


def _routing_fallback(b: BuildState, encoder: Encoder, langs: dict[str, int]) -> dict[str, int] | None:
    """Documents per language that went through the source language's adapter for want of their own (None
    where documents are not routed by language). Loads every adapter used (a resumed run may not have), so
    that the fingerprint names them."""
    routing = b.args.routing
    if not encoder.routes_docs_by_lang(routing):
        return None
    fallback = {}
    for lang, count in langs.items():
        routed = encoder.doc_lang(None if lang == "unknown" else lang, routing)
        adapter = encoder.language_adapter_for("passage", routed, routing)
        if adapter is not None:
            encoder.load_language_adapter(adapter)
        if routed != lang:
            fallback[lang] = count
    if fallback:
        log.warning(
            "%d document(s) have no language adapter for their language (%s): encoded with the source "
            "language's (%s) adapter",
            sum(fallback.values()),
            ", ".join(f"{k}: {v}" for k, v in sorted(fallback.items())),
            encoder.config.source_lang,
        )
    return fallback


def _manifest(
    b: BuildState, encoder: Encoder, langs: dict[str, int], n_docs: int, n_rows: int
) -> dict[str, Any]:
    from dataclasses import replace

    from clir.config import to_dict

    args, c = b.args, b.counters
    fallback = _routing_fallback(b, encoder, langs)
    recipe = b.recipe if fallback is None else b.recipe.with_encoder(encoder.fingerprint(args.routing))
    recorded = recipe.to_manifest(encoder.config.max_passage_length)
    lang_id = None
    if args.lang_id != "off":
        from clir.data.langid import LanguageIdentifier

        lang_id = {
            "mode": args.lang_id,
            "library": LanguageIdentifier.describe(),
            "detected": c["lang_detected"],
            "undetermined": c["lang_undetermined"],
        }
    config = encoder.config if args.routing is None else replace(encoder.config, routing=args.routing)
    return {
        "format": store.FORMAT,
        "format_version": store.FORMAT_VERSION,
        "encoder": recorded["encoder"],
        "model": {"source": encoder.source, "config": to_dict(config)},
        "dim": encoder.dim,
        "metric": "inner_product",
        "num_docs": n_docs,
        "num_passages": n_rows,
        "passages": {**recorded["passages"], "split_docs": c["split_docs"]},
        "skipped_empty": c["skipped_empty"],
        "collection": recorded["collection"],
        "doc_lang": recorded["doc_lang"],
        "doc_langs": langs,
        "lang_id": lang_id,
        # target routing: documents whose language has no adapter went through the source language's
        "routing_fallback": fallback,
        "shard": recorded["shard"],
        "versions": store.library_versions(),
        "created": store.now_iso(),
    }
