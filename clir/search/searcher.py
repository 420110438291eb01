"""Open an index folder, check the encoder against its manifest, search one or many queries, write runs."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clir.atomic import atomic_write_text
from clir.config.model import Routing
from clir.errors import ClirError
from clir.index import store
from clir.index.recipe import IndexRecipe

log = logging.getLogger(__name__)

#: how a split index (documents cut into passages) ranks: documents by their best passage (MaxP, default),
#: by their first passage (FirstP), or the passages themselves (``docid#n`` ids)
MODES = ("maxp", "firstp", "passages")
#: the first passage search reads, as a multiple of k distinct documents wanted, then x4 until filled
_DEEPEN = 4
#: how often an index folder is opened before giving up when rebuilds keep replacing it meanwhile
_SNAPSHOT_TRIES = 3


@dataclass
class Hit:
    rank: int
    doc_id: str
    score: float
    text: str | None = None
    title: str | None = None
    #: split documents: the best passage (MaxP) or the hit passage, and where it sits in the document
    passage: dict[str, Any] | None = None
    lang: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"rank": self.rank, "doc_id": self.doc_id, "score": self.score}
        if self.text is not None:
            d["text"] = self.text
        if self.title:
            d["title"] = self.title
        if self.passage is not None:
            d["passage"] = self.passage
        if self.lang:
            d["lang"] = self.lang
        return d


class Searcher:
    """Dense retrieval over one index folder.

    ``model`` overrides the manifest's encoder; a model whose fingerprint differs (dimension, backbone,
    pooling, adapters, ...) is refused unless ``force``. On split indexes ``doc_score`` picks documents by their
    best passage (``maxp``), their first (``firstp``), or returns ``passages``; k distinct documents are
    filled by reading deeper into the passage ranking as needed."""

    def __init__(
        self,
        index_dir: str | Path,
        *,
        model: str | None = None,
        overrides: dict[str, Any] | None = None,
        force: bool = False,
        encoder=None,
        device: str | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
        manifest: dict[str, Any] | None = None,
        doc_score: str = "maxp",
        mode: str | None = None,
    ) -> None:
        from clir.index.faiss_index import set_search_params

        if mode is not None:  # the keyword's earlier name
            log.warning("Searcher(mode=...) is deprecated: use doc_score=")
            doc_score = mode
        if doc_score not in MODES:
            raise ClirError(f"doc_score {doc_score!r}: expected one of {', '.join(MODES)}")
        self.mode = doc_score
        self.path = Path(index_dir)
        if device:
            from clir.model.checks import torch_device

            torch_device(device)  # before the index opens; and not reported as the manifest's encoder failing
        # a caller that already read the manifest (the server, to group indexes by encoder) passes it on
        self._open_snapshot(manifest)
        # search settings recorded by a preset (`clir index --preset`) apply unless the caller names others
        preset_search = self.manifest.get("search") or {}
        set_search_params(
            self.index,
            nprobe=nprobe if nprobe is not None else preset_search.get("nprobe"),
            ef_search=ef_search if ef_search is not None else preset_search.get("ef_search"),
        )
        self.encoder = encoder if encoder is not None else self._load_encoder(model, overrides or {}, device)
        self._check(force)

    def _open_snapshot(self, manifest: dict[str, Any] | None) -> None:
        """Open the folder's manifest, FAISS index, ids, passage map and doc store as one snapshot.

        `clir index --overwrite` swaps a rebuilt folder in under the same name. What is open here stays the
        old one's (the index and ids are read into memory, the doc store and refine vectors memory-mapped:
        an open file outlives its name), so a server answers from the index it loaded until it is
        restarted, never from parts of two. The folder must be the same one after opening as before,
        else (a rebuild landed meanwhile) everything is opened again."""
        from clir.index.presets import open_index

        for attempt in range(_SNAPSHOT_TRIES):
            before = store.folder_identity(self.path)
            try:
                self.manifest = manifest if manifest is not None else store.read_manifest(self.path)
                self.index = open_index(self.path, self.manifest)
                self.docids = store.read_docids(self.path)
                if len(self.docids) != self.index.ntotal:
                    raise ClirError(
                        f"{self.path}: docid has {len(self.docids)} lines but the index {self.index.ntotal} "
                        "vectors"
                    )
                self.passages = store.PassageMap.load(self.path, self.docids)
                doc_ids = self.passages.doc_ids if self.passages is not None else self.docids
                self.docstore = store.DocStore(self.path, doc_ids)
                # the caller's manifest may be older than `before`: it must still be the folder's
                same = (
                    store.folder_identity(self.path) == before
                    and store.read_manifest(self.path) == self.manifest
                )
            except Exception:
                if attempt == _SNAPSHOT_TRIES - 1 or store.folder_identity(self.path) == before:
                    raise  # a broken index, not one being replaced
                same = False
            if same:
                return
            log.info("%s was replaced while it was being opened: opening it again", self.path)
            manifest = None
            time.sleep(0.1)  # past the instant between swap_into_place's two renames
        raise ClirError(
            f"{self.path} kept being replaced while it was opened; try again once its build is done"
        )

    # ------------------------------------------------------------------ encoder
    def _load_encoder(self, model: str | None, overrides: dict[str, Any], device: str | None):
        from clir.model import load_encoder

        if model is not None:
            return load_encoder(model, overrides, device=device)
        spec = self.manifest["model"]
        cfg = dict(spec["config"])
        try:
            return load_encoder(spec["source"], {**cfg, **overrides}, device=device)
        except ClirError as e:
            raise ClirError(
                f"cannot load the encoder this index was built with ({spec['source']}): {e}; pass --model"
            ) from None

    def _check(self, force: bool) -> None:
        enc = self.encoder
        index = IndexRecipe.from_manifest(self.manifest)
        enc.load_recorded_adapters((index.encoder or {}).get("adapters") or {})
        # the index's recipe with this encoder against the index's own: only the encoder can differ
        diff = [d.removeprefix("encoder.") for d in index.with_encoder(enc.fingerprint()).diff(index)]
        if diff:
            msg = (
                f"the encoder does not match index {self.path} (differs in: {', '.join(diff)}); its vectors would "
                "not be comparable. Use the index's own encoder (omit --model) or pass --force"
            )
            if not force:
                raise ClirError(msg)
            log.warning("%s -- continuing because of --force", msg)

    @property
    def num_docs(self) -> int:
        return self.passages.num_docs if self.passages is not None else int(self.index.ntotal)

    @property
    def num_rows(self) -> int:
        """Vectors in the index: passages of a split index, else documents."""
        return int(self.index.ntotal)

    # ------------------------------------------------------------------ search
    def _search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        from clir.index.faiss_index import search_threads

        k = max(1, min(int(k), self.num_rows))
        # no lock: FAISS searches are thread-safe, and search parameters are only set in __init__ (the
        # server's lanes search one index at the same time)
        with search_threads(len(vectors)):
            return self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)

    def search_vectors(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), best first, ``-1`` rows where fewer results. On a split index in a document mode
        each row is a distinct document's best (MaxP) or first (FirstP) passage."""
        if self.passages is None or self.mode == "passages":
            return self._search(vectors, k)
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
        k = max(1, min(int(k), self.num_docs))
        out_s = np.full((len(vectors), k), -np.inf, dtype=np.float32)
        out_r = np.full((len(vectors), k), -1, dtype=np.int64)
        need = np.arange(len(vectors))
        depth = min(self.num_rows, k * max(2, -(-self.num_rows // max(1, self.num_docs))))
        while len(need):
            scores, rows = self._search(vectors[need], depth)
            left = []
            for qi, s_row, r_row in zip(need.tolist(), scores, rows, strict=True):
                picked = self._pick(r_row)
                if len(picked) < k and depth < self.num_rows and (r_row >= 0).all():
                    left.append(qi)  # not yet k distinct documents: read deeper
                    continue
                picked = picked[:k]
                out_s[qi, : len(picked)] = s_row[picked]
                out_r[qi, : len(picked)] = r_row[picked]
            need = np.asarray(left, dtype=np.int64)
            depth = min(self.num_rows, depth * _DEEPEN)
        return out_s, out_r

    def _pick(self, rows: np.ndarray) -> np.ndarray:
        """Positions in a passage ranking of each document's first appearance (FirstP: passage 0 only)."""
        pm = self.passages
        assert pm is not None  # only split indexes pick documents
        ok = np.flatnonzero(rows >= 0)
        if self.mode == "firstp":
            ok = ok[pm.n[rows[ok]] == 0]
        _, first = np.unique(np.asarray(pm.doc[rows[ok]]), return_index=True)
        return ok[np.sort(first)]

    def hit_id(self, row: int) -> str:
        """The id a result row is reported under: its document's, or the passage's in ``passages`` mode."""
        if self.passages is None or self.mode == "passages":
            return self.docids[row]
        return self.passages.doc_ids[self.passages.doc[row]]

    def encode(
        self,
        queries: list[str],
        *,
        query_lang: str | None = None,
        batch_size: int = 64,
        routing: Routing | None = None,
    ) -> np.ndarray:
        """Query vectors for this index (the first half of :meth:`batch_search`); ``routing``: the query
        side's language-adapter routing (default: the model's)."""
        return self.encoder.encode_queries(queries, lang=query_lang, batch_size=batch_size, routing=routing)

    def hits(self, scores: np.ndarray, rows: np.ndarray, *, return_text: bool = False) -> list[Hit]:
        """One query's FAISS result (a row of :meth:`search_vectors`' output) as ranked hits; the one place
        that turns index rows into documents."""
        hits: list[Hit] = []
        pm = self.passages
        for s, r in zip(scores, rows, strict=True):
            if r < 0:  # fewer results than k (IVF with a small nprobe)
                continue
            r = int(r)
            hit = Hit(len(hits) + 1, self.hit_id(r), float(s))
            doc = None
            if return_text and self.docstore.available:
                doc = self.docstore.get_row(int(pm.doc[r]) if pm is not None else r)
                hit.text, hit.title, hit.lang = doc.get("text"), doc.get("title") or None, doc.get("lang")
            if pm is not None and pm.counts[pm.doc[r]] > 1:
                start, end = int(pm.start[r]), int(pm.end[r])
                hit.passage = {"id": self.docids[r], "index": int(pm.n[r]), "start": start, "end": end}
                if doc is not None:
                    hit.passage["text"] = doc["text"][start:end]
            hits.append(hit)
        return hits

    def search(
        self,
        query: str,
        k: int = 10,
        *,
        query_lang: str | None = None,
        return_text: bool = False,
        routing: Routing | None = None,
    ) -> list[Hit]:
        return self.batch_search([query], k, query_lang=query_lang, return_text=return_text, routing=routing)[
            0
        ]

    def batch_search(
        self,
        queries: list[str],
        k: int = 10,
        *,
        query_lang: str | None = None,
        return_text: bool = False,
        batch_size: int = 64,
        routing: Routing | None = None,
    ) -> list[list[Hit]]:
        """Encode ``queries`` (under ``routing``, default: the model's), search, and turn rows into hits."""
        if not queries:
            return []
        scores, rows = self.search_vectors(
            self.encode(queries, query_lang=query_lang, batch_size=batch_size, routing=routing), k
        )
        return [self.hits(scores[i], rows[i], return_text=return_text) for i in range(len(queries))]


def check_run_tag(tag: str) -> str:
    """A run tag is the last field of each TREC line: one word (whitespace would add fields, or lines)."""
    from clir.data.collections import check_text

    if not tag or any(c.isspace() for c in tag) or not tag.isprintable():
        raise ClirError(f"--tag {tag!r:.60}: a run tag is one word of printable characters, without spaces")
    check_text(tag, "--tag")
    return tag


def write_trec_run(path: str | Path, results: dict[str, list[Hit]], tag: str = "clir") -> Path:
    """TREC run file ``qid Q0 docid rank score tag``, written atomically."""
    check_run_tag(tag)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for qid, hits in results.items():
        for h in hits:
            lines.append(f"{qid} Q0 {h.doc_id} {h.rank} {h.score:.6f} {tag}\n")
    atomic_write_text(path, "".join(lines))
    return path


def read_trec_run(path: str | Path) -> dict[str, dict[str, float]]:
    path = Path(path)
    if not path.is_file():
        raise ClirError(f"run file not found: {path}")
    from clir.data.collections import parse_score, trec_rows

    run: dict[str, dict[str, float]] = {}
    for lineno, parts in trec_rows(path, "a TREC run", "qid Q0 docid rank score tag"):
        run.setdefault(parts[0], {})[parts[2]] = parse_score(parts[4], f"{path}:{lineno}")
    return run
