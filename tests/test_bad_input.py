"""Bad input, table-driven: the place where the next bad input gets added.

CLI: every case exits non-zero with one line ``clir VERB: error: ...`` naming the problem, no traceback, and
nothing written at ``--out``. (REST cases live in tests/test_serve.py's table: a 4xx JSON error, never 500.)"""

from __future__ import annotations

import fcntl
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from clir.cli.main import main

GOOD = [{"doc_id": f"d{i}", "text": t} for i, t in enumerate(["die katze", "der fluss", "das haus"])]


def _jsonl(records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


@dataclass
class Case:
    name: str
    verb: str
    #: flags after the verb (None: a switch), over the defaults; {out} {tmp} {queries} are filled in
    args: dict[str, str | None]
    #: what the one-line message must contain
    message: str
    docs: bytes | None = None  # written to {tmp}/docs.jsonl
    queries: bytes | None = None  # written to {tmp}/queries.tsv
    setup: str | None = None  # a named preparation (see _setup)
    extra: dict = field(default_factory=dict)


CASES = [
    # ------------------------------------------------------------------ clir index: documents
    Case(
        "non-UTF-8 bytes in docs.jsonl",
        "index",
        {},
        "docs.jsonl:2: not UTF-8 (byte 0xff",
        docs=_jsonl(GOOD[:1]) + b'{"doc_id": "x", "text": "caf\xff"}\n',
    ),
    Case(
        "doc id with a newline",
        "index",
        {},
        "docs.jsonl:1: doc id 'a\\nb' contains whitespace",
        docs=_jsonl([{"doc_id": "a\nb", "text": "t"}]),
    ),
    Case(
        "doc id with a space",
        "index",
        {},
        "docs.jsonl:2: doc id 'a b' contains whitespace",
        docs=_jsonl([GOOD[0], {"doc_id": "a b", "text": "t"}]),
    ),
    Case(
        "doc id with a tab",
        "index",
        {},
        "doc id 'a\\tb' contains whitespace",
        docs=_jsonl([{"doc_id": "a\tb", "text": "t"}]),
    ),
    Case(
        "doc id that is a list",
        "index",
        {},
        "docs.jsonl:1: doc id must be a string, got list",
        docs=_jsonl([{"doc_id": ["a", "b"], "text": "t"}]),
    ),
    Case(
        "lone surrogate in a document's text",
        "index",
        {},
        "docs.jsonl:2 (doc x): invalid Unicode (lone surrogate",
        docs=_jsonl(GOOD[:1]) + b'{"doc_id": "x", "text": "\\ud800 Faust"}\n',
    ),
    Case(
        "lone surrogate in a doc id",
        "index",
        {},
        "docs.jsonl:1: invalid Unicode",
        docs=b'{"doc_id": "x\\udc80", "text": "t"}\n',
    ),
    Case("malformed JSON", "index", {}, "docs.jsonl:1: malformed JSON", docs=b'{"doc_id": \n'),
    # ------------------------------------------------------------------ clir index: settings
    Case("unparsable factory", "index", {"--factory": "Bogus99,XY"}, "invalid FAISS factory 'Bogus99,XY'"),
    Case("PQ that does not divide the dimension", "index", {"--factory": "IVF1,PQ7"}, "for dimension 64"),
    Case("IVF with more lists than documents", "index", {"--factory": "IVF4096,Flat"}, "needs at least 4096"),
    Case(
        "PQ with more codewords than documents", "index", {"--factory": "PQ8"}, "needs at least 256 vectors"
    ),
    Case(
        "--max-passage-length above the model's",
        "index",
        {"--max-passage-length": "100000"},
        "outside 1..128",
    ),
    Case("--out that cannot be created", "index", {"--out": "/proc/clir-x"}, "--out /proc/clir-x"),
    Case("--out under a file", "index", {"--out": "{tmp}/docs.jsonl/idx"}, "is a file"),
    Case(
        "--out an existing file, with --overwrite",
        "index",
        {"--overwrite": None},
        "is a file, not an index folder",
        setup="out_is_file",
    ),
    Case(
        "--out a folder that is not an index, with --overwrite",
        "index",
        {"--overwrite": None},
        "holds no clir index",
        setup="out_is_foreign_folder",
    ),
    Case("a second build on the same --out", "index", {}, "another build is writing", setup="out_locked"),
    Case("unknown collection", "index", {"--collection": "{tmp}/nope"}, "unknown collection"),
    # ------------------------------------------------------------------ clir search
    Case("blank --query", "search", {"--query": "   "}, "--query is empty"),
    Case("lone surrogate in --query", "search", {"--query": "\udc80 Faust"}, "--query: invalid Unicode"),
    Case(
        "blank query in queries.tsv",
        "search",
        {"--queries": "{queries}", "--run": "{out}"},
        "queries.tsv:2: query q2 is blank",
        queries=b"q1\tdie katze\nq2\t   \n",
    ),
    Case(
        "3-column line in queries.tsv",
        "search",
        {"--queries": "{queries}", "--run": "{out}"},
        "queries.tsv:1: expected 'query_id<TAB>text', got 3 field(s)",
        queries=b"q1\tdie katze\textra\n",
    ),
    Case(
        "non-UTF-8 queries.tsv",
        "search",
        {"--queries": "{queries}", "--run": "{out}"},
        "queries.tsv:1: not UTF-8",
        queries=b"q1\tcaf\xe9\n",
    ),
    Case(
        "--run that cannot be created",
        "search",
        {"--queries": "{queries}", "--run": "{tmp}/docs.jsonl/run.trec"},
        "is a file, so the run file cannot be created",
        queries=b"q1\tdie katze\n",
    ),
    Case(
        "an index that only exists as OUT.partial",
        "search",
        {"--index": "{tmp}/half", "--query": "katze"},
        "--resume finishes it",
        setup="half_built",
    ),
]


def _setup(case: Case, tmp: Path, out: Path) -> None:
    if case.setup == "out_is_file":
        out.write_text("precious")
    elif case.setup == "out_is_foreign_folder":
        out.mkdir()
        (out / "notes.txt").write_text("precious")
    elif case.setup == "half_built":
        (tmp / "half.partial" / "chunks").mkdir(parents=True)


@pytest.fixture(scope="module")
def index_dir(tiny_bert, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad-input-index")
    (root / "docs.jsonl").write_bytes(_jsonl(GOOD))
    out = root / "idx"
    assert (
        main(
            ["index", "--collection", str(root / "docs.jsonl"), "--model", str(tiny_bert), "--out", str(out)]
        )
        == 0
    )
    return out


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_cli_bad_input(case: Case, tiny_bert, index_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CLIR_PROGRESS", "0")
    docs, queries, out = tmp_path / "docs.jsonl", tmp_path / "queries.tsv", tmp_path / "out"
    docs.write_bytes(case.docs if case.docs is not None else _jsonl(GOOD))
    if case.queries is not None:
        queries.write_bytes(case.queries)
    _setup(case, tmp_path, out)
    fill = {"out": out, "tmp": tmp_path, "queries": queries}
    if case.verb == "index":
        flags = {"--collection": str(docs), "--model": str(tiny_bert), "--out": str(out)}
    else:
        flags = {"--index": str(index_dir)}
    flags.update({k: v if v is None else v.format(**fill) for k, v in case.args.items()})
    argv = [case.verb, *[x for k, v in flags.items() for x in ([k] if v is None else [k, v])]]
    lock = None
    if case.setup == "out_locked":  # what a build in progress holds
        lock = open(out.with_name("out.lock"), "a+")  # noqa: SIM115
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    before = {p: (p.read_bytes() if p.is_file() else None) for p in tmp_path.rglob("*")}
    try:
        code = main(argv)
    finally:
        if lock is not None:
            lock.close()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line]
    assert code != 0
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith(f"clir {case.verb}: error: "), err
    assert case.message in lines[0], lines[0]
    # nothing written: no index, no staging folder, no lock, no .old; what was there is untouched
    after = {p: (p.read_bytes() if p.is_file() else None) for p in tmp_path.rglob("*")}
    assert after == before
    for suffix in ("", ".partial", ".lock", ".old"):
        p = out.with_name(out.name + suffix)
        assert not p.exists() or p in before, p
