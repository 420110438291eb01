"""Training settings: the encoder to train (a ModelConfig), its data, optimisation and checkpoints.

A training config file is YAML with the sections below; ``${VAR}`` / ``${VAR:-default}`` are expanded::

    model: {backbone: bert-base-multilingual-cased, adapter_mode: task}
    data: {triples: irds:msmarco-passage/train/triples-small, negatives: 1}
    optim: {batch_size: 32, max_steps: 100000, lr: null, temperature: null}
    checkpoint: {every: 1000, keep: 2}
    out: runs/mbert-task-msmarco

``lr: null`` means the mode's default (1e-4 for adapters, 2e-5 for full fine-tuning); ``temperature: null``
means 0.05 for L2-normalised encoders (cosine scores) and 1.0 for raw dot products (DPR)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from clir.config.base import from_dict, load_yaml
from clir.config.model import ModelConfig
from clir.errors import ClirError

TrainPrecision = Literal["auto", "fp32", "bf16", "fp16"]

#: learning rates of the paper's arms when ``optim.lr`` is null
DEFAULT_LR = {"full": 2e-5, "task": 1e-4, "madx": 1e-4}


@dataclass
class DataConfig:
    #: a local JSONL file of triples or ``irds:<id>`` with docpairs (e.g. irds:msmarco-passage/train/triples-small)
    triples: str = ""
    #: hard negatives per query (records with more are sampled, with fewer use what they have)
    negatives: int = 1
    #: records shuffled together while streaming (0: file order); memory holds one block
    shuffle_block: int = 10000
    #: language of the training texts (default: the model's source_lang)
    lang: str | None = None
    #: token limits while training (default: the model's; the saved model keeps the model's own limits)
    max_query_length: int | None = None
    max_passage_length: int | None = None


@dataclass
class OptimConfig:
    #: triples per micro-batch in each process: under torchrun the global batch (the pool of in-batch
    #: negatives with cross_device_negatives) is batch_size x processes
    batch_size: int = 32
    #: micro-batches per optimiser step (the effective batch is batch_size x grad_accum)
    grad_accum: int = 1
    #: optimiser steps in the whole run (the length of the linear decay)
    max_steps: int = 1000
    #: peak learning rate; null: 1e-4 in adapter modes, 2e-5 for full fine-tuning
    lr: float | None = None
    weight_decay: float = 0.01
    #: linear warm-up steps; null: warmup_ratio x max_steps
    warmup_steps: int | None = None
    warmup_ratio: float = 0.1
    #: softmax temperature of the contrastive loss; null: 0.05 when vectors are normalised, else 1.0
    temperature: float | None = None
    #: gradient clipping (null: none)
    max_grad_norm: float | None = 1.0
    seed: int = 42
    #: autocast: auto is bf16 on GPUs that support it (fp16 with loss scaling otherwise) and on CPUs that
    #: compute it natively (AVX512-BF16, AMX), fp32 elsewhere
    precision: TrainPrecision = "auto"
    #: torch.compile the backbone(s)
    compile: bool = False
    #: CPU threads (null: torch's default). Floating-point sums depend on how work is split across
    #: threads, so a fixed count makes a CPU run repeatable bit for bit on machines with other core counts
    threads: int | None = None
    #: fresh task adapters start as the identity (zero up-projection) or with the library's random init
    adapter_init: Literal["identity", "library"] = "identity"
    #: under torchrun: score every query against every passage of the global batch (batch_size x processes),
    #: as one process at that batch would; false: each process's queries against its own passages only
    cross_device_negatives: bool = True
    #: texts of a step laid end to end in one row, no padding (where the model's attention allows it,
    #: probed once; otherwise padded batches)
    packing: bool = True
    #: cached gradients (GradCache, Gao et al. 2021): encode the batch without a graph, then again in chunks
    #: of ``grad_cache_chunk`` texts with one, so a batch larger than memory holds trains exactly
    grad_cache: bool = False
    grad_cache_chunk: int = 64

    def validate(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ClirError(f"optim.threads must be >= 1, got {self.threads}")
        for key in ("batch_size", "grad_accum", "max_steps", "grad_cache_chunk"):
            if getattr(self, key) < 1:
                raise ClirError(f"optim.{key} must be >= 1, got {getattr(self, key)}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise ClirError(f"optim.lr must be > 0, got {self.lr}")
        if self.temperature is not None and not self.temperature > 0:
            raise ClirError(f"optim.temperature must be > 0, got {self.temperature}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ClirError("optim.warmup_steps must be >= 0")
        if not 0 <= self.warmup_ratio < 1:
            raise ClirError("optim.warmup_ratio must be in [0, 1)")
        if self.weight_decay < 0:
            raise ClirError("optim.weight_decay must be >= 0")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ClirError("optim.max_grad_norm must be > 0 (or null for no clipping)")


@dataclass
class CheckpointConfig:
    #: optimiser steps between checkpoints
    every: int = 500
    #: checkpoints kept (older ones are deleted)
    keep: int = 2
    #: keep checkpoints once the final model is written (they are removed by default)
    keep_after_training: bool = False

    def validate(self) -> None:
        if self.every < 1 or self.keep < 1:
            raise ClirError("checkpoint.every and checkpoint.keep must be >= 1")


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    #: output model folder (``--out`` overrides)
    out: str | None = None
    #: optimiser steps between train_log.jsonl records
    log_every: int = 10

    def validate(self) -> None:
        if not self.data.triples:
            raise ClirError("data.triples is required (a JSONL file of triples or irds:<id>)")
        if self.data.negatives < 0:
            raise ClirError("data.negatives must be >= 0")
        for key in ("max_query_length", "max_passage_length"):
            v = getattr(self.data, key)
            if v is not None and v < 2:
                raise ClirError(f"data.{key} must be >= 2")
        if self.data.shuffle_block < 0:
            raise ClirError("data.shuffle_block must be >= 0 (0: stream order)")
        if self.log_every < 1:
            raise ClirError("log_every must be >= 1")

    # resolved defaults ------------------------------------------------------------
    @property
    def lr(self) -> float:
        return self.optim.lr if self.optim.lr is not None else DEFAULT_LR[self.model.adapter_mode]

    @property
    def temperature(self) -> float:
        if self.optim.temperature is not None:
            return self.optim.temperature
        return 0.05 if self.model.normalize else 1.0

    @property
    def warmup_steps(self) -> int:
        if self.optim.warmup_steps is not None:
            return min(self.optim.warmup_steps, self.optim.max_steps)
        return int(self.optim.warmup_ratio * self.optim.max_steps)

    @property
    def train_lang(self) -> str:
        return self.data.lang or self.model.source_lang


def load_train_config(path: str | Path) -> TrainConfig:
    """Read and validate a training config YAML (unknown keys and bad values name the key)."""
    data = load_yaml(path)
    try:
        return from_dict(TrainConfig, data)
    except ClirError as e:
        raise ClirError(f"{path}: {e}") from None
