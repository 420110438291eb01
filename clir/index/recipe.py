"""The index recipe: every setting an index's rows and vectors depend on, as one frozen value.

``clir index`` builds one from its arguments and records it (``state.json`` while a build runs, the manifest
when it is done); ``--resume`` compares the recorded state with the asked one; an experiment grid decides from
:meth:`IndexRecipe.diff` whether an index on disk can be reused; :class:`clir.search.Searcher` checks its
encoder against the recipe of the index it opens."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from clir.config.index import IndexRequest, PassageSpec
from clir.model.fingerprint import fingerprint_diff

#: settings a plan's keys leave out at these values (keys written before a setting existed stay valid)
KEY_DEFAULTS: dict[str, Any] = {
    "split": "passages",
    "passage_length": None,
    "stride": None,
    "lang_id": "missing",
}


@dataclass(frozen=True)
class IndexRecipe:
    """What an index is made of. ``None`` in a recipe read back from a manifest means "not recorded" (an
    index from before the setting existed): :meth:`diff` does not compare it."""

    collection: str
    #: the documents' language when the collection does not say (``--doc-lang``)
    doc_lang: str | None = None
    #: how documents become rows; as asked (``length`` None: the default window)
    passages: PassageSpec | None = field(default_factory=PassageSpec)
    #: language identification mode: ``missing``, ``all`` or ``off``
    lang_id: str | None = "missing"
    #: the encoder's fingerprint under the document routing (None: not known yet, e.g. in a plan)
    encoder: dict[str, Any] | None = None
    #: (i, n): documents whose ordinal % n == i
    shard: tuple[int, int] | None = None
    #: documents per checkpointed chunk (a build's state; manifests do not record it)
    chunk_size: int | None = None

    @classmethod
    def of(cls, request: IndexRequest, fingerprint: dict[str, Any] | None = None) -> IndexRecipe:
        """The recipe of the index ``clir index`` builds for ``request``, with the encoder's fingerprint."""
        r = request
        return cls(r.collection, r.doc_lang, r.passages, r.lang_id, fingerprint, r.shard, r.chunk_size)

    def with_encoder(self, fingerprint: dict[str, Any]) -> IndexRecipe:
        return replace(self, encoder=fingerprint)

    def resolved_passages(self, max_passage_length: int) -> dict[str, Any]:
        """The passage settings as recorded, defaults filled in (:meth:`PassageSpec.resolve`)."""
        return (self.passages or PassageSpec()).resolve(max_passage_length)

    def state(self, max_passage_length: int) -> dict[str, Any]:
        """A build's ``state.json``: ``--resume`` continues only a build of the same state."""
        return {
            "encoder": self.encoder,
            "collection": self.collection,
            "doc_lang": self.doc_lang,
            "shard": list(self.shard) if self.shard else None,
            "chunk_size": self.chunk_size,
            "passages": self.resolved_passages(max_passage_length),
            "lang_id": self.lang_id,
        }

    def to_manifest(self, max_passage_length: int) -> dict[str, Any]:
        """The manifest fields this recipe owns (a build adds counts: ``passages.split_docs``, ``lang_id``'s
        detections)."""
        return {
            "encoder": self.encoder,
            "collection": self.collection,
            "doc_lang": self.doc_lang,
            "passages": self.resolved_passages(max_passage_length),
            "shard": {"index": self.shard[0], "count": self.shard[1]} if self.shard else None,
        }

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> IndexRecipe:
        """The recipe an index records; settings it predates are None."""
        p = manifest.get("passages")
        passages = None
        if isinstance(p, dict):
            split = p.get("split", "passages")
            length = p.get("passage_length") if split == "passages" else None
            passages = PassageSpec(split, length, p.get("stride"))
        lang_id = None
        if "lang_id" in manifest:
            lang_id = (manifest["lang_id"] or {}).get("mode", "off")
        shard = manifest.get("shard")
        return cls(
            collection=str(manifest.get("collection")),
            doc_lang=manifest.get("doc_lang"),
            passages=passages,
            lang_id=lang_id,
            encoder=manifest.get("encoder"),
            shard=(int(shard["index"]), int(shard["count"])) if isinstance(shard, dict) else None,
        )

    def key(self) -> dict[str, Any]:
        """The passage and language-id settings that differ from the defaults (what a grid's index path and
        run markers are keyed by, besides the collection and encoder)."""
        p = self.passages or PassageSpec()
        out = {"split": p.split, "passage_length": p.length, "stride": p.stride, "lang_id": self.lang_id}
        return {k: v for k, v in out.items() if v != KEY_DEFAULTS[k]}

    def diff(self, recorded: IndexRecipe) -> list[str]:
        """The settings on which an index made by ``recorded`` differs from this recipe (empty: reusable).
        A window length left to the default matches any recorded one; settings either side does not know
        are not compared; the encoder is compared on what touches document vectors (:func:`fingerprint_diff`)."""
        out = [k for k in ("collection", "doc_lang", "shard") if getattr(self, k) != getattr(recorded, k)]
        if self.lang_id is not None and recorded.lang_id is not None and self.lang_id != recorded.lang_id:
            out.append("lang_id")
        if self.passages is not None and recorded.passages is not None:
            mine, theirs = self.passages, recorded.passages
            out += [f"passages.{k}" for k in ("split", "stride") if getattr(mine, k) != getattr(theirs, k)]
            if mine.length is not None and mine.length != theirs.length:
                out.append("passages.length")
        if (
            self.chunk_size is not None
            and recorded.chunk_size is not None
            and self.chunk_size != recorded.chunk_size
        ):
            out.append("chunk_size")
        if self.encoder is not None and recorded.encoder is not None:
            out += [f"encoder.{k}" for k in fingerprint_diff(recorded.encoder, self.encoder)]
        return out
