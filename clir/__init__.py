"""clir: adapter-based cross-language dense retrieval.

The public API is small and lazily imported (nothing heavy happens at ``import clir``)::

    from clir import DualEncoder, build_index, Searcher, evaluate
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clir.version import __version__

_LAZY = {
    "ClirError": "clir.errors",
    "ModelConfig": "clir.config",
    "DualEncoder": "clir.model",
    "load_encoder": "clir.model",
    "build_index": "clir.index",
    "merge_indexes": "clir.index",
    "Searcher": "clir.search",
    "evaluate": "clir.metrics",
    "load_collection": "clir.data",
}

__all__ = [
    "ClirError",
    "DualEncoder",
    "ModelConfig",
    "Searcher",
    "__version__",
    "build_index",
    "evaluate",
    "load_collection",
    "load_encoder",
    "merge_indexes",
]

if TYPE_CHECKING:  # pragma: no cover
    from clir.config import ModelConfig
    from clir.data import load_collection
    from clir.errors import ClirError
    from clir.index import build_index, merge_indexes
    from clir.metrics import evaluate
    from clir.model import DualEncoder, load_encoder
    from clir.search import Searcher


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'clir' has no attribute {name!r}")
