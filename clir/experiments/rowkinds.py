"""The three kinds of grid row, each answering :class:`clir.experiments.grid.RowKind`: what it depends on and
what keys its run (plan), how it runs, how it scores and what its metrics.json record says.

- dense: a grid model's encoder searches an index of the collection (one per model and document routing);
- BM25: Pyserini searches a Lucene index of the collection with document-language queries;
- fusion: nothing to run: the dense row's and the BM25 row's runs are fused when the grid is scored."""

from __future__ import annotations

from typing import Any

from clir.experiments.fusion import RunDict, fuse_runs
from clir.experiments.grid import GridRow, IndexJob, Plan, RowKind, RowRunner, routing_key


class _RunRows(RowKind):
    """A kind whose rows the grid runs itself: a finished run is read back for scoring."""

    def scored_run(self, plan: Plan, row: GridRow, runs: dict[str, RunDict]) -> RunDict | None:
        from clir.search import read_trec_run

        return read_trec_run(plan.run_path(row)) if plan.is_done(row) else None


class DenseRows(_RunRows):
    name = "dense"
    encodes = True

    def variant(self, row: GridRow) -> str:
        assert row.model is not None
        return row.model.name if row.routing is None else f"{row.model.name}/{row.routing.label()}"

    def key(self, plan: Plan, row: GridRow) -> dict[str, Any]:
        assert row.model is not None
        return {
            "kind": self.name,
            "collection": row.collection.key(),
            "model": row.model.stamp(),
            "routing": routing_key(row.routing),
            "k": plan.k,
            "factory": plan.config.factory,
            "seed": plan.fresh_seed(row.model),
        }

    def index_job(self, plan: Plan, row: GridRow) -> IndexJob | None:
        if row.model is None:
            return None
        path = plan.index_path(row.collection, row.model, row.doc_route)
        return IndexJob(row.collection, row.model, row.doc_route, path, row.routing)

    def index_lines(self, plan: Plan, rows: list[GridRow]) -> list[str]:
        lines = []
        for j in plan.index_jobs(rows):
            state = (
                "exists: reused if its manifest matches" if (j.path / "manifest.json").is_file() else "build"
            )
            lines.append(f"  {j.path}  ({j.label}; {state})")
        return lines

    def run(self, plan: Plan, rows: list[GridRow], runner: RowRunner) -> None:
        # model by model, each encoder loaded once (a model without pending rows may still owe its CKA)
        for model in plan.models:
            runner.run_model(model, [r for r in rows if r.model is model])

    def record(self, row: GridRow) -> dict[str, Any]:
        assert row.model is not None
        return {"model": row.model.name, "arm": row.model.arm, "fusion": None}


class Bm25Rows(_RunRows):
    name = "bm25"
    needs_pyserini = True

    def variant(self, row: GridRow) -> str:
        return "bm25"

    def key(self, plan: Plan, row: GridRow) -> dict[str, Any]:
        cfg = plan.config
        return {
            "kind": self.name,
            "collection": row.collection.key(),
            "bm25_lang": row.collection.bm25_lang,
            "k1": cfg.bm25.k1,
            "b": cfg.bm25.b,
            "k": plan.k,
        }

    def index_lines(self, plan: Plan, rows: list[GridRow]) -> list[str]:
        colls = {r.collection.name: r.collection for r in rows}.values()
        return [f"  {plan.bm25_index_path(c)}  ({c.name} BM25, Lucene {c.bm25_lang} analyzer)" for c in colls]

    def run(self, plan: Plan, rows: list[GridRow], runner: RowRunner) -> None:
        for row in rows:
            runner.run_bm25(row)

    def record(self, row: GridRow) -> dict[str, Any]:
        return {"model": "bm25", "arm": "bm25", "fusion": None}


class FusionRows(RowKind):
    name = "fusion"
    computed = False

    def variant(self, row: GridRow) -> str:
        assert row.dense is not None
        return f"{row.dense.variant}+bm25-{row.method}"

    def needs(self, row: GridRow, rows: list[GridRow]) -> list[GridRow]:
        """The dense row, then the collection's BM25 row (the order their runs are fused in)."""
        assert row.dense is not None
        return [row.dense, next(x for x in rows if x.kind is BM25 and x.collection is row.collection)]

    def key(self, plan: Plan, row: GridRow) -> dict[str, Any]:
        raise TypeError(f"{row.id}: a fusion row is made at scoring, it has no run of its own to key")

    def run(self, plan: Plan, rows: list[GridRow], runner: RowRunner) -> None:
        """Nothing to run: :meth:`scored_run` fuses the inputs' runs."""

    def scored_run(self, plan: Plan, row: GridRow, runs: dict[str, RunDict]) -> RunDict | None:
        """The inputs' runs fused (written to the row's run file and read back, as every row's run is
        scored), or None while either input has no run."""
        from clir.search import Hit, read_trec_run, write_trec_run

        inputs = self.needs(row, plan.rows)
        if any(x.variant not in runs for x in inputs):
            return None
        fused = fuse_runs(
            [runs[x.variant] for x in inputs], row.method or "rrf", rrf_k=plan.config.fusion.rrf_k, k=plan.k
        )
        results = {q: [Hit(i + 1, d, s) for i, (d, s) in enumerate(h.items())] for q, h in fused.items()}
        write_trec_run(plan.run_path(row), results, tag=row.variant)
        return read_trec_run(plan.run_path(row))

    def record(self, row: GridRow) -> dict[str, Any]:
        assert row.dense is not None
        return {"model": None, "arm": None, "fusion": {"method": row.method, "dense": row.dense.variant}}


DENSE, BM25, FUSION = DenseRows(), Bm25Rows(), FusionRows()
#: every kind, in the order the grid runs them and the dry run lists their indexes
ROW_KINDS: tuple[RowKind, ...] = (DENSE, BM25, FUSION)


def by_kind(rows: list[GridRow]) -> dict[RowKind, list[GridRow]]:
    """``rows`` grouped by kind, every kind present (maybe with no rows), in :data:`ROW_KINDS` order."""
    return {kind: [r for r in rows if r.kind is kind] for kind in ROW_KINDS}
