"""Collection sources (local folders/files, ir_datasets) behind one resolver; training triples, streamed."""

from clir.data.collections import Collection, Document, Query
from clir.data.resolve import load_collection, load_qrels, load_queries

__all__ = ["Collection", "Document", "Query", "load_collection", "load_qrels", "load_queries"]
