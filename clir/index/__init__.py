"""Encode a collection into an index folder (FAISS + docid + manifest + doc store); shards, resume, merge."""

from clir.index.build import IndexArgs, IndexResult, build_index, parse_shard
from clir.index.merge import merge_indexes
from clir.index.passages import PassageSpec

__all__ = ["IndexArgs", "IndexResult", "PassageSpec", "build_index", "merge_indexes", "parse_shard"]
