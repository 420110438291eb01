"""The embedded default model (registered at first registry lookup)."""

from __future__ import annotations

from clir.model.registry import RegisteredModel, register

E5_SETTINGS = {
    "pooling": "mean",
    "normalize": True,
    "query_prefix": "query: ",
    "passage_prefix": "passage: ",
    "max_query_length": 64,
    "max_passage_length": 512,
}

register(
    RegisteredModel(
        name="multilingual-e5-small",
        description="intfloat/multilingual-e5-small (BERT, 12 layers, hidden 384), from PyPI wheels, offline",
        settings=dict(E5_SETTINGS),
        pull=None,
    )
)
