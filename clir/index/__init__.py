"""Encode a collection into an index folder (FAISS + docid + manifest + doc store); shards, resume, merge."""

from clir.index.build import IndexArgs, IndexResult, build_index, parse_shard
from clir.index.merge import merge_indexes

__all__ = ["IndexArgs", "IndexResult", "build_index", "merge_indexes", "parse_shard"]
