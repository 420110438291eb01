"""`make demo` (clir.demo) with a language-adapter model: the sample indexed once per document routing, both
evaluated and printed side by side, the server's page address naming both; without the model, the plain
encoder's demo, saying so. On a tiny stand-in of `shipped/paper-small-v2/e5-madx`, the CLI verbs run in this
process (the demo runs them as subprocesses; the arguments and outputs are the same)."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest

import clir.demo as demo


@pytest.fixture
def verbs_in_process(monkeypatch):
    """`clir VERB ...` as the demo calls it, run by clir's CLI entry point in this process; the commands are
    recorded."""
    from clir.cli.main import main

    calls: list[list[str]] = []

    def run(*args: str) -> str:
        calls.append(list(args))
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = main(list(args))
        if rc != 0:
            raise demo.DemoError(f"`clir {' '.join(args)}` failed (exit {rc})")
        return buf.getvalue()

    monkeypatch.setattr(demo, "clir", run)
    return calls


def _row(out: str, label: str) -> list[float]:
    (line,) = [x for x in out.splitlines() if x.startswith(f"| {label} |")]
    return [float(c) for c in re.findall(r"[+-]?\d\.\d{4}", line)]


def test_two_document_routings_indexed_evaluated_and_printed_side_by_side(
    tiny_bert, tmp_path, monkeypatch, capsys, verbs_in_process
):
    from clir.testing import build_tiny_madx

    model = build_tiny_madx(tiny_bert, tmp_path / "shipped/paper-small-v2/e5-madx")
    monkeypatch.setattr(demo, "pull_model", lambda: Path(tiny_bert))
    indexes, results = tmp_path / "indexes", tmp_path / "results"
    args = ["--madx-model", str(model), "--index", str(indexes / "demo-sample"), "--results", str(results)]
    assert demo.main([*args, "--no-serve"]) == 0
    out = capsys.readouterr().out

    verbs = [c[0] for c in verbs_in_process]
    assert verbs == ["index", "index", "search", "evaluate", "search", "evaluate"]
    assert [c[c.index("--doc-routing") + 1] for c in verbs_in_process if c[0] == "index"] == [
        "source",
        "target",
    ]
    assert "No language-adapter model" not in out and not (indexes / "demo-sample").exists()
    # one table: a row per document routing, then their difference
    head = next(x for x in out.splitlines() if x.startswith("| documents through |"))
    assert head == "| documents through | index | " + " | ".join(demo.METRICS) + " |"
    source = _row(out, "source: the en adapter | madx-d-source")
    target = _row(out, "target: their own language's (fr: 16 fell back to en) | madx-d-target")
    delta = _row(out, "target - source")
    assert len(source) == len(target) == len(delta) == len(demo.METRICS)
    assert all(0 <= x <= 1 for x in source + target)
    assert delta == pytest.approx([t - s for s, t in zip(source, target, strict=True)], abs=1.5e-4)
    assert all((results / "runs" / f"madx-d-{r}.trec").is_file() for r in ("source", "target"))
    # the indexes: documents through the en adapter, then through their own (fr, without one, falls back)
    manifests = {
        r: json.loads((indexes / f"demo-madx-d-{r}/manifest.json").read_text()) for r in ("source", "target")
    }
    assert {r: m["encoder"]["routing"]["doc"] for r, m in manifests.items()} == {
        "source": "source",
        "target": "target",
    }
    assert manifests["target"]["routing_fallback"] == {"fr": 16}
    assert manifests["source"]["collection"] == manifests["target"]["collection"] == "sample"

    # a second run reuses both indexes and both runs: only the evaluations run again
    verbs_in_process.clear()
    assert demo.main([*args, "--no-serve"]) == 0
    assert [c[0] for c in verbs_in_process] == ["evaluate", "evaluate"]
    assert _row(capsys.readouterr().out, "source: the en adapter | madx-d-source") == source
    # an index of the other routing, or of another model, is not reused
    assert "doc routing source" in demo.madx_index_staleness(indexes / "demo-madx-d-source", model, "target")
    assert "built with" in demo.madx_index_staleness(indexes / "demo-madx-d-source", tmp_path, "source")


def test_without_the_shipped_model_the_plain_demo_runs_and_says_so(tmp_path, monkeypatch, capsys):
    done: list[str] = []
    monkeypatch.setattr(demo, "pull_model", lambda: tmp_path)
    monkeypatch.setattr(demo, "build_index", lambda index, model_dir: done.append(f"index {index}"))
    monkeypatch.setattr(demo, "evaluate_with_experiment", lambda results: done.append("experiment"))
    monkeypatch.setattr(demo, "build_madx_indexes", lambda *a: pytest.fail("no madx model to index with"))
    absent = tmp_path / "shipped/paper-small-v2/e5-madx"
    index = tmp_path / "indexes/demo-sample"
    assert demo.main(["--madx-model", str(absent), "--index", str(index), "--no-serve"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        f"No language-adapter model at {absent}: showing the plain encoder (multilingual-e5-small) instead."
    ]
    assert done == [f"index {index}", "experiment"]


def test_page_address_shows_two_indexes_side_by_side():
    from urllib.parse import parse_qs, urlsplit

    one = parse_qs(urlsplit(demo.page_address("http://h")).fragment)
    assert one["index"] == [demo.INDEX_NAME] and "index_b" not in one
    two = parse_qs(urlsplit(demo.page_address("http://h", names=["madx-d-source", "madx-d-target"])).fragment)
    assert two["index"] == ["madx-d-source"] and two["index_b"] == ["madx-d-target"]
    assert two["lang"] == two["lang_b"] == ["en"]
    assert two["q"] == [demo.PAGE_QUERY] and two["k"] == [str(demo.PAGE_K)]
