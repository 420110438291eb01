"""Training triples, streamed: a local JSONL file or an ir_datasets docpairs source, never read whole.

JSONL records are ``{"query", "positive", "negative"}`` or ``{"query", "positives": [...], "negatives":
[...]}`` (singular and plural keys may be mixed). ``irds:<id>`` reads the dataset's docpairs (query id,
positive doc id, negative doc id, e.g. ``irds:msmarco-passage/train/triples-small``) and looks texts up in its
queries and document store.

:class:`TripleStream` turns a source into an endless, reproducible sequence of training examples: records are
shuffled within fixed blocks (so memory holds one block, whatever the file size), each epoch reshuffles, and
the position ``(epoch, index)`` fully determines what comes next — which is what lets ``clir train --resume``
continue exactly where a run stopped."""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from clir.data.collections import IRDS_PREFIX
from clir.errors import ClirError
from clir.safe_load import loads_json

log = logging.getLogger(__name__)


@dataclass
class Triple:
    """One training record: a query with its positive passage(s) and hard negative(s)."""

    query: str
    positives: list[str]
    negatives: list[str] = field(default_factory=list)


@dataclass
class Example:
    """What one training example uses: a query, one positive and up to ``negatives`` hard negatives."""

    query: str
    positive: str
    negatives: list[str]
    #: all known positives of the query (in-batch passages equal to one of these are not negatives)
    positives: list[str]


class TripleSource(Protocol):
    name: str

    def records(self, start: int = 0) -> Iterator[Any]:
        """Records from ordinal ``start`` on (skipping is cheap: no parsing of skipped records)."""
        ...


# ---------------------------------------------------------------------- JSONL
def _texts(obj: dict[str, Any], one: str, many: str, where: str) -> list[str]:
    out: list[str] = []
    if one in obj:
        if not isinstance(obj[one], str):
            raise ClirError(f"{where}: '{one}' must be a string")
        out.append(obj[one])
    if many in obj:
        vals = obj[many]
        if not isinstance(vals, list) or not all(isinstance(v, str) for v in vals):
            raise ClirError(f"{where}: '{many}' must be a list of strings")
        out.extend(vals)
    return [t for t in out if t.strip()]


def parse_triple(line: bytes | str, where: str) -> Triple:
    obj = loads_json(line, where)
    if not isinstance(obj, dict):
        raise ClirError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    query = obj.get("query")
    if not isinstance(query, str) or not query.strip():
        raise ClirError(f"{where}: missing or empty 'query'")
    positives = _texts(obj, "positive", "positives", where)
    if not positives:
        raise ClirError(f"{where}: no 'positive' / 'positives' text")
    negatives = _texts(obj, "negative", "negatives", where)
    return Triple(query, positives, negatives)


class JsonlTriples:
    """A JSONL triples file read line by line (binary reads; skipped lines are not parsed)."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise ClirError(f"triples file not found: {path}")
        self.path = path
        self.name = str(path)

    def records(self, start: int = 0) -> Iterator[Triple]:
        ordinal = 0
        with open(self.path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if ordinal >= start:
                    yield parse_triple(line, f"{self.path}:{lineno}")
                ordinal += 1


# ---------------------------------------------------------------------- ir_datasets
IRDS_PARTS = ("docs", "queries", "docpairs")


class IrdsTriples:
    """Docpairs of an ir_datasets dataset; query texts come from its queries, passages from its doc store."""

    def __init__(self, ds_id: str) -> None:
        from clir.data.irds import load_dataset

        self.ds_id = ds_id
        self.name = f"{IRDS_PREFIX}{ds_id}"
        self.ds = load_dataset(ds_id)
        if not self.ds.has_docpairs():
            raise ClirError(
                f"{self.name} has no docpairs (training triples); e.g. msmarco-passage/train/triples-small"
            )
        self._queries: dict[str, str] | None = None
        self._store: Any = None

    def ensure_available(self) -> None:
        from clir.data.irds import ensure_available

        ensure_available(self.ds_id, IRDS_PARTS)

    def _query(self, qid: str) -> str:
        if self._queries is None:
            # query texts are small (MS MARCO train: 0.8M short queries); documents stay on disk
            self._queries = {q.query_id: q.default_text() for q in self.ds.queries_iter()}
        return self._queries[qid]

    def _doc(self, doc_id: str) -> str:
        if self._store is None:
            self._store = self.ds.docs_store()
        return self._store.get(doc_id).default_text()

    def records(self, start: int = 0) -> Iterator[Triple]:
        self.ensure_available()
        for pair in itertools.islice(self.ds.docpairs_iter(), start, None):
            yield Triple(self._query(pair.query_id), [self._doc(pair.doc_id_a)], [self._doc(pair.doc_id_b)])


def open_triples(src: str | Path) -> TripleSource:
    """Resolve ``data.triples``: a JSONL file or ``irds:<id>``."""
    from clir.data.resolve import irds_id

    s = str(src)
    ds_id = irds_id(s)
    if ds_id is not None:
        return IrdsTriples(ds_id)
    p = Path(s).expanduser()
    if p.is_dir():
        raise ClirError(f"triples source {p} is a folder; give a .jsonl file of triples or irds:<id>")
    if p.suffix not in (".jsonl", ".json") and p.is_file():
        raise ClirError(
            f"{p}: triples must be JSONL (.jsonl), one {{query, positive, negative}} object a line"
        )
    return JsonlTriples(p)


# ---------------------------------------------------------------------- the reproducible stream
def block_shuffled(
    records: Callable[[int], Iterator[Any]], *, block: int, seed: int, epoch: int, start: int = 0
) -> Iterator[Any]:
    """One epoch of ``records`` shuffled within consecutive blocks of ``block`` records, from ``start`` on.

    The order depends only on (seed, epoch, block number), so resuming at ``start`` re-reads just the block
    that holds it."""
    if block <= 1:
        yield from records(start)
        return
    first = (start // block) * block
    skip = start - first
    it = records(first)
    for block_no in itertools.count(first // block):
        chunk = list(itertools.islice(it, block))
        if not chunk:
            return
        random.Random(f"{seed}:{epoch}:{block_no}").shuffle(chunk)
        yield from chunk[skip:]
        skip = 0
        if len(chunk) < block:
            return


class TripleStream:
    """Endless examples over epochs of a source; ``state()`` / ``start`` give the position to resume from."""

    def __init__(
        self,
        source: TripleSource,
        *,
        negatives: int = 1,
        shuffle_block: int = 0,
        seed: int = 0,
        epoch: int = 0,
        index: int = 0,
    ) -> None:
        self.source = source
        self.negatives = negatives
        self.shuffle_block = shuffle_block
        self.seed = seed
        self.epoch = epoch
        self.index = index  # records consumed in the current epoch

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def _example(self, t: Triple) -> Example:
        # Choices among several positives/negatives are seeded by the position, not a global RNG, so they
        # replay identically after a resume.
        rng = random.Random(f"{self.seed}:{self.epoch}:{self.index}:pick")
        pos = t.positives[0] if len(t.positives) == 1 else rng.choice(t.positives)
        negs = t.negatives
        if len(negs) > self.negatives:
            negs = rng.sample(negs, self.negatives)
        return Example(t.query, pos, list(negs), t.positives)

    def __iter__(self) -> Iterator[Example]:
        while True:
            produced = False
            for t in block_shuffled(
                self.source.records,
                block=self.shuffle_block,
                seed=self.seed,
                epoch=self.epoch,
                start=self.index,
            ):
                produced = True
                ex = self._example(t)
                self.index += 1
                yield ex
            if not produced and self.index == 0:
                raise ClirError(f"{self.source.name}: no training triples")
            log.debug("triples: epoch %d done (%d records)", self.epoch, self.index)
            self.epoch += 1
            self.index = 0
