"""Encoder settings: backbone, pooling, prefixes, lengths, adapter mode, language adapters and routing."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from clir.errors import ClirError

_LANG = re.compile(r"^[a-z]{2,3}(?:[-_][A-Za-z0-9]+)?$")

Pooling = Literal["cls", "mean"]
AdapterMode = Literal["full", "task", "madx"]
Route = Literal["source", "target", "none", "random"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]

#: activation names ``adapters`` builds (transformers' ACT2FN, plus its own ``leakyrelu``)
ADAPTER_ACTIVATIONS = frozenset(
    (
        "gelu gelu_10 gelu_accurate gelu_fast gelu_new gelu_python gelu_python_tanh gelu_pytorch_tanh laplace "
        "leaky_relu leakyrelu linear mish prelu quick_gelu relu relu2 relu6 sigmoid silu swish tanh"
    ).split()
)
#: the bottleneck of an adapter is hidden / reduction_factor units: at most 8x the hidden size
MIN_REDUCTION = 0.125


def check_reduction(factor: Any, hidden: int | None, where: str) -> None:
    """A bottleneck adapter's reduction factor (or ``adapters``' per-layer mapping of them): a finite number
    >= :data:`MIN_REDUCTION` that leaves the bottleneck at least one unit wide (1e-9 asks for terabytes)."""
    if isinstance(factor, dict):
        for v in factor.values():
            check_reduction(v, hidden, where)
        return
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not math.isfinite(factor):
        raise ClirError(f"{where}: reduction_factor {factor!r:.40} is not a number")
    if factor < MIN_REDUCTION:
        raise ClirError(
            f"{where}: reduction_factor {factor} is below {MIN_REDUCTION} (the bottleneck would be hidden / "
            f"{factor} units wide)"
        )
    if hidden is not None and hidden / factor < 1:
        raise ClirError(f"{where}: reduction_factor {factor} leaves no unit of the hidden size {hidden}")


def check_activation(name: Any, where: str) -> None:
    if name is not None and (not isinstance(name, str) or name.lower() not in ADAPTER_ACTIVATIONS):
        raise ClirError(
            f"{where}: non_linearity {name!r:.40} is unknown (known: {', '.join(sorted(ADAPTER_ACTIVATIONS))})"
        )


#: the language a model's task adapter is trained in unless its settings say otherwise (MS MARCO's)
DEFAULT_SOURCE_LANG = "en"


@dataclass
class AdapterArch:
    """A bottleneck adapter architecture, as an ``adapters`` config name plus its main knobs.

    ``seq_bn`` is Pfeiffer (the MAD-X default), ``double_seq_bn`` Houlsby, ``seq_bn_inv`` Pfeiffer with
    invertible adapters (MAD-X language adapters)."""

    config: str = "seq_bn"
    reduction_factor: float = 16
    non_linearity: str = "relu"

    def validate(self, where: str = "adapter") -> None:
        check_reduction(self.reduction_factor, None, where)
        check_activation(self.non_linearity, where)

    def to_adapters_config(self):
        import adapters

        known = {
            "seq_bn": adapters.SeqBnConfig,
            "pfeiffer": adapters.SeqBnConfig,
            "double_seq_bn": adapters.DoubleSeqBnConfig,
            "houlsby": adapters.DoubleSeqBnConfig,
            "seq_bn_inv": adapters.SeqBnInvConfig,
            "pfeiffer+inv": adapters.SeqBnInvConfig,
        }
        if self.config not in known:
            raise ClirError(f"adapter config {self.config!r} unknown (known: {', '.join(known)})")
        return known[self.config](reduction_factor=self.reduction_factor, non_linearity=self.non_linearity)


def language_adapter_arch() -> AdapterArch:
    """MAD-X's language adapter: Pfeiffer with invertible adapters, reduction factor 2 (the default of
    ``clir train-language-adapter`` and of the language adapters a model creates)."""
    return AdapterArch(config="seq_bn_inv", reduction_factor=2)


@dataclass
class Routing:
    """Which language adapter sits under the task adapter at inference, per side.

    ``source``: the training language's adapter (e.g. ``en``) whatever the text's language;
    ``target``: the adapter of the text's own language (the MAD-X advice);
    ``none``: no language adapter, the task adapter alone;
    ``random``: a fresh, untrained language adapter (a control: what any adapter's noise costs).

    ``doc_map`` (with ``doc: target``) sends a document language through another language's adapter, a
    wrong-language control: ``{de: ru}`` encodes German documents with the Russian adapter."""

    query: Route = "source"
    doc: Route = "source"
    doc_map: dict[str, str] = field(default_factory=dict)

    def label(self) -> str:
        mapped = "".join(f".{k}-as-{v}" for k, v in sorted(self.doc_map.items()))
        return f"q-{self.query}_d-{self.doc}{mapped}"

    def doc_label(self) -> str:
        """The document side alone (what an index depends on): ``target``, ``target.de-as-ru``, ..."""
        return self.label().split("_d-", 1)[1]

    def validate(self) -> None:
        if self.doc_map and self.doc != "target":
            raise ClirError(f"routing.doc_map needs doc: target (doc is {self.doc!r})")
        for k, v in self.doc_map.items():
            if not k or not v or not _LANG.match(k) or not _LANG.match(v):
                raise ClirError(f"routing.doc_map {k!r}: {v!r}: give language codes (e.g. de: ru)")
            if k == v:
                raise ClirError(f"routing.doc_map maps {k!r} to itself: that is plain target routing")


@dataclass
class ModelConfig:
    backbone: str = "bert-base-multilingual-cased"
    pooling: Pooling = "cls"
    normalize: bool = False
    query_prefix: str = ""
    passage_prefix: str = ""
    max_query_length: int = 64
    max_passage_length: int = 256
    tied: bool = True
    adapter_mode: AdapterMode = "full"
    task_adapter: AdapterArch = field(default_factory=AdapterArch)
    #: language -> source: an AdapterHub id (``en/wiki@ukp``), a Hugging Face repo id or a local folder
    language_adapters: dict[str, str] = field(default_factory=dict)
    #: architecture of language adapters this model creates or loads without a config of their own
    language_adapter: AdapterArch = field(default_factory=language_adapter_arch)
    #: the language the task adapter is trained in (its adapter is the ``source`` route)
    source_lang: str = DEFAULT_SOURCE_LANG
    routing: Routing = field(default_factory=Routing)
    precision: Precision = "auto"

    def validate(self) -> None:
        if self.max_query_length < 2 or self.max_passage_length < 2:
            raise ClirError("max_query_length and max_passage_length must be >= 2")
        if self.adapter_mode == "madx" and self.source_lang not in self.language_adapters:
            raise ClirError(
                f"adapter_mode madx stacks the task adapter on the {self.source_lang!r} language adapter, "
                f"but language_adapters has no {self.source_lang!r} entry (give e.g. {self.source_lang}: "
                f"{self.source_lang}/wiki@ukp or a local folder)"
            )
        if self.adapter_mode != "madx":
            for side in ("query", "doc"):
                if getattr(self.routing, side) in ("target", "random"):
                    raise ClirError(
                        f"routing.{side}={getattr(self.routing, side)} needs adapter_mode madx (mode is {self.adapter_mode}: "
                        "there is no language adapter to swap)"
                    )
