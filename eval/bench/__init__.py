"""Speed benchmarks against peers (sentence-transformers, Pyserini), measured side by side in one run.

Each module runs with one command (``python -m eval.bench.<name>``) and rewrites its own section of
``eval/bench/RESULTS.md``; ``python -m eval.bench.run_all`` (``make bench``) runs the CPU ones."""
