"""Search an index folder with the encoder from its manifest; TREC runs."""

from clir.search.searcher import Hit, Searcher, read_trec_run, write_trec_run

__all__ = ["Hit", "Searcher", "read_trec_run", "write_trec_run"]
