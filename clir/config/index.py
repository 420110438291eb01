"""Requests of ``clir index``: what to encode and how (``IndexRequest``), how long documents are cut
(``PassageSpec``) and the Ray actor pool of a distributed build (``RayRequest``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from clir.config.model import Routing
from clir.errors import ClirError

SplitMode = Literal["passages", "none"]
SPLIT_MODES = ("passages", "none")
#: a window keeps at least this many text tokens even when the title takes most of the budget
MIN_WINDOW = 16
#: default window when the encoder reads more: on xquad-r-articles with e5-small, MaxP over 256-token
#: passages beat 512-token ones (eval/results/long-docs), and the field's long-document CLIR runs use
#: 180-256 (ColBERT-X / PLAID-X: 180 tokens, stride 90)
DEFAULT_PASSAGE_LENGTH = 256


@dataclass(frozen=True)
class PassageSpec:
    """How ``clir index`` cuts documents: ``passages`` (split documents longer than one window) or ``none``
    (one vector per document, truncated by the encoder at its ``max_passage_length``)."""

    split: SplitMode = "passages"
    #: encoder tokens per passage (default: DEFAULT_PASSAGE_LENGTH, or the encoder's max_passage_length if
    #: smaller)
    length: int | None = None
    #: text tokens between window starts (default: half the window)
    stride: int | None = None

    def resolve(self, max_passage_length: int) -> dict[str, Any]:
        """The settings an index records (manifest, resume state), defaults filled in."""
        if self.split not in SPLIT_MODES:
            raise ClirError(f"--split {self.split!r}: expected one of {', '.join(SPLIT_MODES)}")
        if self.split == "none":
            if self.length is not None or self.stride is not None:
                raise ClirError("--passage-length/--stride need --split passages (--split none truncates)")
            return {"split": "none", "passage_length": max_passage_length}
        length = self.length or min(DEFAULT_PASSAGE_LENGTH, max_passage_length)
        if length > max_passage_length:
            raise ClirError(
                f"--passage-length {length} exceeds the encoder's max_passage_length {max_passage_length}: "
                "lower it, or raise --max-passage-length"
            )
        if length < MIN_WINDOW + 4:
            raise ClirError(f"--passage-length {length} is too short (at least {MIN_WINDOW + 4} tokens)")
        if self.stride is not None and self.stride < 1:
            raise ClirError("--stride must be >= 1")
        return {"split": "passages", "passage_length": length, "stride": self.stride, "title": "repeated"}


@dataclass(frozen=True)
class RayRequest:
    """The Ray actor pool of ``clir index --ray`` (:func:`clir.index.distributed.build_index_ray`)."""

    #: None or "local": start a private local Ray for this build; "auto", "ray://HEAD:10001" or "HOST:6379": join
    address: str | None = None
    #: encoder actors (``--ray-actors``); default: one per ``gpus_per_actor`` GPUs of the cluster, else one
    #: per node
    actors: int | None = None
    gpus_per_actor: float = 0.0
    #: default: 1 for GPU actors, else each node's CPUs shared among the actors placed on it
    cpus_per_actor: float | None = None
    #: restarts of a dead actor (and retries of its chunk) before the build stops
    max_retries: int = 3
    #: chunks queued per actor, so that no actor waits for the driver between chunks
    in_flight: int = 2


@dataclass(frozen=True)
class IndexRequest:
    """What ``clir index`` asks of :func:`clir.index.build_index` (or, with ``ray``, of
    :func:`clir.index.distributed.build_index_ray`)."""

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
    #: how long documents are cut into passages (default: split those longer than the encoder's window)
    passages: PassageSpec = field(default_factory=PassageSpec)
    #: language identification: ``missing`` detects documents without a language, ``all`` ignores the
    #: collection's labels, ``off`` never detects (see clir.data.langid)
    lang_id: str = "missing"
    #: encoder setting overrides (pooling, normalize, prefixes, routing ...), Tevatron-style
    overrides: dict[str, Any] = field(default_factory=dict)
    #: torch device of the encoder (default: cuda when available, else cpu)
    device: str | None = None
    #: encode on a Ray actor pool (None: in this process)
    ray: RayRequest | None = None
    #: the language-adapter routing documents are encoded under (default: the model's)
    routing: Routing | None = None
