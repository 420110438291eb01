"""Requests of the MLM trainers (``clir train-language-adapter``, ``clir train-mlm-head``) and the held-out dev
slice they share."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import InitVar, dataclass, field, fields, replace
from typing import Any

from clir.config.model import AdapterArch, language_adapter_arch
from clir.errors import ClirError

#: the ``adapters`` configs a language adapter can have: with invertible adapters (MAD-X) or without
INVERTIBLE = {"seq_bn_inv": True, "seq_bn": False}


@dataclass(frozen=True)
class DevSplit:
    """Which texts are held out: a text is dev when a seeded hash of its content falls under ``fraction``.

    Hashing the content (not the line number) keeps duplicates on one side and works on streamed sources
    of any size; ``limit`` caps the dev set (the first dev texts in source order)."""

    fraction: float
    seed: int
    limit: int

    def is_dev(self, text: str) -> bool:
        if self.fraction <= 0:
            return False
        h = hashlib.sha1(f"{self.seed}\x00{text}".encode("utf-8", "surrogatepass")).digest()
        return int.from_bytes(h[:8], "big") / 2**64 < self.fraction

    def dev(self, texts: Iterable[str]) -> list[str]:
        return list(itertools.islice((t for t in texts if self.is_dev(t)), self.limit))

    def train(self, texts: Iterable[str]) -> Iterator[str]:
        return (t for t in texts if not self.is_dev(t))


@dataclass(frozen=True)
class DevSettings:
    """The held-out slice every MLM run of a backbone shares: the shared head and each language adapter hold
    out the same texts and score the same masked tokens, whatever their own training seed."""

    fraction: float = 0.05
    seed: int = 0
    limit: int = 500

    def split(self) -> DevSplit:
        return DevSplit(self.fraction, self.seed, self.limit)

    def check(self) -> None:
        if not 0 < self.fraction < 0.5:
            raise ClirError("--dev-fraction must be in (0, 0.5)")
        if self.limit < 1:
            raise ClirError("--dev-max must be >= 1")


@dataclass(frozen=True)
class LanguageAdapterRequest:
    """What ``clir train-language-adapter`` asks of :func:`clir.train.train_language_adapter`."""

    lang: str
    #: a text file (one text a line), a .jsonl/.tsv docs file, a collection folder, or irds:<id>
    text: str
    #: a Hugging Face backbone folder or hub id, or a registered model name
    backbone: str
    out: str
    #: the shared MLM head's folder (``clir train-mlm-head``); None: the backbone's pretrained head
    head: str | None = None
    max_steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-4
    warmup_ratio: float = 0.05
    #: the adapter: ``seq_bn_inv`` (MAD-X, with invertible adapters) or ``seq_bn``, its reduction factor and
    #: activation (``invertible=``, ``reduction_factor=``, ``non_linearity=`` set them one by one, as the
    #: flags do)
    arch: AdapterArch = field(default_factory=language_adapter_arch)
    max_length: int = 128
    mlm_probability: float = 0.15
    shuffle_block: int = 10000
    #: seeds the adapter's initial weights, the masks and the text order (not the dev slice: ``dev.seed``)
    seed: int = 42
    precision: str = "auto"
    device: str | None = None
    overwrite: bool = False
    log_every: int = 10
    dev: DevSettings = field(default_factory=DevSettings)
    checkpoint_every: int = 50
    resume: bool = False
    #: CPU threads (None: torch's default); a fixed count makes CPU runs repeatable bit for bit
    threads: int | None = None
    #: run batches packed (no padding) where the model's attention allows
    packed: bool = True
    #: dtype of the saved weights; fp16 halves the folder, and the dev loss is scored on the rounded weights
    save_dtype: str = "fp32"
    invertible: InitVar[bool | None] = None
    reduction_factor: InitVar[float | None] = None
    non_linearity: InitVar[str | None] = None

    def __post_init__(
        self, invertible: bool | None, reduction_factor: float | None, non_linearity: str | None
    ) -> None:
        knobs: dict[str, Any] = {}
        if invertible is not None:
            knobs["config"] = "seq_bn_inv" if invertible else "seq_bn"
        if reduction_factor is not None:
            knobs["reduction_factor"] = reduction_factor
        if non_linearity is not None:
            knobs["non_linearity"] = non_linearity
        if knobs:
            object.__setattr__(self, "arch", replace(self.arch, **knobs))  # frozen: set once, here
        if self.arch.config not in INVERTIBLE:
            raise ClirError(
                f"language adapter config {self.arch.config!r}: expected one of {', '.join(INVERTIBLE)}"
            )

    def flat(self) -> dict[str, Any]:
        """The fields with ``arch`` as its three knobs in its place (``invertible``, ``reduction_factor``,
        ``non_linearity``): the layout a run's record (``run.json``) has always had."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "arch":
                out["invertible"] = INVERTIBLE[self.arch.config]
                out["reduction_factor"] = self.arch.reduction_factor
                out["non_linearity"] = self.arch.non_linearity
            else:
                out[f.name] = getattr(self, f.name)
        return out


@dataclass(frozen=True)
class MlmHeadRequest:
    """What ``clir train-mlm-head`` asks of :func:`clir.train.head_training.train_mlm_head`."""

    #: ``lang=source`` (or a bare source) per language: text files, docs files, collection folders, irds ids
    texts: list[str]
    backbone: str
    out: str
    max_steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    warmup_ratio: float = 0.05
    max_length: int = 128
    mlm_probability: float = 0.15
    seed: int = 0
    dev: DevSettings = field(default_factory=DevSettings)
    checkpoint_every: int = 100
    log_every: int = 20
    #: autocast of the training steps: fp32, bf16, or auto (bf16 where the device computes it natively)
    precision: str = "fp32"
    packed: bool = True
    device: str | None = None
    threads: int | None = None
    overwrite: bool = False
    resume: bool = False
    #: the earlier spelling of ``precision``: True is ``bf16``, False ``fp32``
    bf16: InitVar[bool | None] = None

    def __post_init__(self, bf16: bool | None) -> None:
        if bf16 is not None:
            object.__setattr__(self, "precision", "bf16" if bf16 else "fp32")  # frozen: set once, here
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ClirError(f"--precision {self.precision!r}: expected auto, fp32 or bf16")
