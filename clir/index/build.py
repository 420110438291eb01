"""Encode a collection into an index folder: chunked, resumable, shardable, crash safe.

Documents are encoded in fixed chunks of the collection (``chunk_size`` kept documents each) and every chunk
is checkpointed under ``OUT.partial/chunks``: ``--resume`` after a kill re-encodes only missing chunks, and
since chunk boundaries do not depend on where a run stopped, the result equals an uninterrupted build.
Everything is written under ``OUT.partial`` and renamed to ``OUT`` at the end."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clir.atomic import atomic_write_lines, atomic_write_text, swap_into_place
from clir.data import Collection, Document, load_collection
from clir.errors import ClirError
from clir.index import store
from clir.index.faiss_index import check_factory

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
CHUNKS = "chunks"


@dataclass
class IndexArgs:
    collection: str
    model: str
    out: str
    doc_lang: str | None = None
    factory: str = "Flat"
    #: a named recipe (clir.index.presets) instead of ``factory``: sized to the collection, search settings kept
    preset: str | None = None
    batch_size: int = 32
    shard: tuple[int, int] | None = None  # (i, n): keep documents whose ordinal % n == i
    resume: bool = False
    overwrite: bool = False
    chunk_size: int = 8192
    max_train: int = 262_144
    #: encoder setting overrides (pooling, normalize, prefixes, routing ...), Tevatron-style
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class IndexResult:
    path: Path
    num_docs: int
    skipped_empty: int
    encoded_docs: int  # documents encoded by this run (resume skips finished chunks)
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


def _records(docs: Iterator[Document], args: IndexArgs, default_lang: str | None, counters: dict[str, int]):
    """Kept documents as records with their collection ordinal; checks ids across the whole collection."""
    seen: set[str] = set()
    for ordinal, doc in enumerate(docs):
        if doc.doc_id in seen:
            raise ClirError(f"duplicate doc id {doc.doc_id!r} in {args.collection} (document #{ordinal + 1})")
        seen.add(doc.doc_id)
        if args.shard and ordinal % args.shard[1] != args.shard[0]:
            continue
        text = doc.full_text()
        if not text.strip():
            counters["skipped_empty"] += 1
            continue
        lang = args.doc_lang or doc.lang or default_lang
        yield {"pos": ordinal, "doc_id": doc.doc_id, "title": doc.title, "text": doc.text, "lang": lang}


def encode_records(encoder, recs: list[dict[str, Any]], batch_size: int) -> np.ndarray:
    """Encode records with document-side routing: under ``target`` routing each language group gets its own
    adapter; otherwise one pass (the same batches whatever the languages)."""
    texts = [(f"{r['title']} {r['text']}".strip() if r.get("title") else r["text"]) for r in recs]
    cfg = encoder.config
    if cfg.adapter_mode == "madx" and cfg.routing.doc == "target":
        out = np.empty((len(recs), encoder.dim), dtype=np.float32)
        groups: dict[str | None, list[int]] = {}
        for i, r in enumerate(recs):
            groups.setdefault(r["lang"], []).append(i)
        for lang, rows in groups.items():
            out[rows] = encoder.encode_passages([texts[i] for i in rows], lang=lang, batch_size=batch_size)
        return out
    return encoder.encode_passages(texts, lang=recs[0]["lang"] if recs else None, batch_size=batch_size)


def _chunk_paths(folder: Path, no: int) -> tuple[Path, Path]:
    return folder / f"{no:06d}.jsonl", folder / f"{no:06d}.npy"


def write_chunk(folder: Path, no: int, recs: list[dict[str, Any]], vecs: np.ndarray) -> None:
    meta, vec = _chunk_paths(folder, no)
    atomic_write_lines(meta, (json.dumps(r, ensure_ascii=False) for r in recs))
    store.atomic_save_npy(vec, vecs)  # the .npy is the chunk's commit marker: written last


def _read_chunk_meta(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _prepare_partial(partial: Path, state: dict[str, Any], resume: bool) -> None:
    state_path = partial / STATE_FILE
    if partial.exists():
        if resume and state_path.is_file():
            old = json.loads(state_path.read_text(encoding="utf-8"))
            diff = sorted(k for k in set(old) | set(state) if old.get(k) != state.get(k))
            if diff:
                raise ClirError(
                    f"cannot resume {partial}: it was started with different settings ({', '.join(diff)}); "
                    "rerun without --resume to start over"
                )
            done = len(list((partial / CHUNKS).glob("*.npy")))
            log.info("resuming %s: %d chunk(s) already encoded", partial, done)
            return
        if resume:
            log.warning("%s has no resumable state; starting over", partial)
        else:
            log.warning("removing an unfinished build in %s (pass --resume to continue it instead)", partial)
        shutil.rmtree(partial)
    elif resume:
        log.info("nothing to resume at %s; starting a fresh build", partial)
    (partial / CHUNKS).mkdir(parents=True)
    atomic_write_text(state_path, json.dumps(state, indent=2))


def chunk_done(chunks_dir: Path, no: int) -> bool:
    """A chunk is finished once its ``.npy`` (written last) exists."""
    return _chunk_paths(chunks_dir, no)[1].is_file()


def iter_chunks(collection: Collection, args: IndexArgs, counters: dict[str, int]):
    """``(chunk number, records)`` over the kept documents, ``args.chunk_size`` at a time. Boundaries depend
    only on the collection and the settings, so any run (resumed, distributed) numbers chunks alike."""
    buf: list[dict[str, Any]] = []
    no = 0
    for rec in _records(collection.docs(), args, collection.lang, counters):
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
    fingerprint: dict[str, Any]
    total: int | None  # documents the progress bar expects, when cheaply known
    counters: dict[str, int] = field(default_factory=lambda: {"skipped_empty": 0})

    lock: Any = None  # the open lock file while this process owns the build

    @property
    def chunks_dir(self) -> Path:
        return self.partial / CHUNKS

    def release(self, *, failed: bool) -> None:
        """End of the build: a failed one that committed no chunk leaves nothing behind (``--resume`` could
        not use it); then the lock goes."""
        if failed and self.partial.is_dir() and not any(self.chunks_dir.glob("*.npy")):
            shutil.rmtree(self.partial, ignore_errors=True)
        _unlock(self.lock)
        self.lock = None


def _lock(out: Path) -> Any:
    """``OUT.lock``, held (flock) for the whole build: a second build on the same ``--out`` is refused
    instead of deleting the first one's ``OUT.partial``."""
    import fcntl

    path = out.with_name(out.name + ".lock")
    try:
        f = open(path, "a+")  # noqa: SIM115 - held until release()
    except OSError as e:
        raise ClirError(f"cannot write next to --out {out}: {e.strerror} ({path})") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise ClirError(
            f"another build is writing {out} (it holds {path}): wait for it to finish or give another --out"
        ) from None
    return f


def _unlock(f: Any) -> None:
    if f is None:
        return
    with contextlib.suppress(OSError):
        os.unlink(f.name)
    f.close()


def check_args(args: IndexArgs) -> tuple[Path, Path]:
    """Cheap checks before any model is loaded; returns (out, out.partial)."""
    out = Path(args.out)
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
    return out, out.with_name(out.name + ".partial")


def start_build(args: IndexArgs, encoder) -> BuildState:
    """Open the collection and create (or, with ``args.resume``, reopen) ``OUT.partial``."""
    out, partial = check_args(args)
    collection = load_collection(args.collection)
    total = collection.count_docs()
    if total is not None and args.shard:
        total = (total + args.shard[1] - 1 - args.shard[0]) // args.shard[1]
    # what would fail after encoding fails now: the factory (string, dimension, training points)
    if not args.preset:  # a preset plans its factory for the collection's size
        check_factory(encoder.dim, args.factory, total)
    # language adapters that document routing will use, loaded now so the fingerprint names them
    fingerprint = encoder.fingerprint()
    state = {
        "encoder": fingerprint,
        "collection": args.collection,
        "doc_lang": args.doc_lang,
        "shard": list(args.shard) if args.shard else None,
        "chunk_size": args.chunk_size,
    }
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ClirError(f"cannot create the folder of --out {out}: {e.strerror}") from None
    lock = _lock(out)
    try:
        _prepare_partial(partial, state, args.resume)
    except OSError as e:
        _unlock(lock)
        raise ClirError(f"cannot create {partial}: {e.strerror}") from None
    except BaseException:
        _unlock(lock)
        raise
    return BuildState(args, out, partial, collection, fingerprint, total, lock=lock)


def finish_build(b: BuildState, encoder, n_chunks: int, n_docs: int) -> None:
    """Every chunk is encoded: write the index folder and rename it into place."""
    skipped_empty = b.counters["skipped_empty"]
    if n_docs == 0:
        shutil.rmtree(b.partial, ignore_errors=True)
        skipped = f" ({skipped_empty} empty document(s) skipped)" if skipped_empty else ""
        raise ClirError(f"collection {b.args.collection} has no documents to index{skipped}")
    if skipped_empty:
        log.warning("skipped %d document(s) with empty text", skipped_empty)
    _finalize(b.partial, b.out, b.args, encoder, b.fingerprint, n_chunks, n_docs, skipped_empty)


def build_index(args: IndexArgs, encoder=None) -> IndexResult:
    """Build ``args.out`` from ``args.collection`` with ``encoder`` (or the one ``args.model`` names)."""
    import time

    from clir.model import load_encoder
    from clir.progress import progress

    t0 = time.perf_counter()
    check_args(args)
    if encoder is None:
        encoder = load_encoder(args.model, args.overrides)
    b = start_build(args, encoder)
    bar = progress(total=b.total, desc=f"index {b.out.name}", unit="doc")
    encoded = 0
    t_enc = 0.0
    n_chunks = 0
    n_docs = 0
    failed = True
    try:
        for no, recs in iter_chunks(b.collection, args, b.counters):
            if not chunk_done(b.chunks_dir, no):
                t = time.perf_counter()
                vecs = encode_records(encoder, recs, args.batch_size)
                t_enc += time.perf_counter() - t
                write_chunk(b.chunks_dir, no, recs, vecs)
                encoded += len(recs)
            n_chunks += 1
            n_docs += len(recs)
            bar.update(len(recs))
        bar.close()
        finish_build(b, encoder, n_chunks, n_docs)
        failed = False
    finally:
        bar.close()
        b.release(failed=failed)
    return IndexResult(b.out, n_docs, b.counters["skipped_empty"], encoded, t_enc, time.perf_counter() - t0)


def _finalize(partial, out, args, encoder, fingerprint, n_chunks, n_docs, skipped) -> None:
    """Chunks -> FAISS index + docid + doc store + manifest, then the atomic rename."""
    from clir.config import to_dict
    from clir.index.presets import write_faiss

    chunks_dir = partial / CHUNKS
    vec_paths = [_chunk_paths(chunks_dir, i)[1] for i in range(n_chunks)]
    sizes = [int(np.load(p, mmap_mode="r").shape[0]) for p in vec_paths]

    def chunks():
        for p in vec_paths:
            yield np.load(p)

    def sample(n: int) -> np.ndarray:
        rng = np.random.default_rng(0)
        picks = np.sort(rng.choice(n_docs, size=n, replace=False))
        bounds = np.cumsum([0, *sizes])
        parts = []
        for i, p in enumerate(vec_paths):
            sel = picks[(picks >= bounds[i]) & (picks < bounds[i + 1])] - bounds[i]
            if len(sel):
                parts.append(np.load(p, mmap_mode="r")[sel])
        return np.concatenate(parts)

    faiss_fields = write_faiss(
        partial,
        encoder.dim,
        n_docs,
        chunks,
        sample,
        factory=args.factory,
        preset=args.preset,
        max_train=args.max_train,
    )

    writer = store.DocStoreWriter(partial)
    ids: list[str] = []
    positions: list[int] = []
    langs: dict[str, int] = {}
    for i in range(n_chunks):
        for rec in _read_chunk_meta(_chunk_paths(chunks_dir, i)[0]):
            writer.add(rec)
            ids.append(rec["doc_id"])
            positions.append(rec["pos"])
            key = rec.get("lang") or "unknown"
            langs[key] = langs.get(key, 0) + 1
    writer.close()
    store.write_docids(partial / store.DOCID_FILE, ids)
    if encoder.config.adapter_mode == "madx" and encoder.config.routing.doc == "target":
        for lang in langs:  # a resumed run may not have loaded them: the manifest must name every one used
            if lang != "unknown":
                encoder.load_language_adapter(lang)
        fingerprint = encoder.fingerprint()
    if args.shard:
        store.atomic_save_npy(partial / store.VECTORS_FILE, np.concatenate(list(chunks())))
        store.atomic_save_npy(partial / store.POSITIONS_FILE, np.asarray(positions, dtype=np.int64))
    manifest = {
        "format": store.FORMAT,
        "format_version": store.FORMAT_VERSION,
        "encoder": fingerprint,
        "model": {"source": encoder.source, "config": to_dict(encoder.config)},
        "dim": encoder.dim,
        "metric": "inner_product",
        **faiss_fields,
        "num_docs": n_docs,
        "skipped_empty": skipped,
        "collection": args.collection,
        "doc_lang": args.doc_lang,
        "doc_langs": langs,
        "shard": {"index": args.shard[0], "count": args.shard[1]} if args.shard else None,
        "versions": store.library_versions(),
        "created": store.now_iso(),
    }
    store.write_manifest(partial, manifest)
    shutil.rmtree(chunks_dir)
    (partial / STATE_FILE).unlink()
    swap_into_place(partial, out)
