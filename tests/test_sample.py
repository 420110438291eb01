"""The bundled sample collection: parses through the public loader, consistent qrels, ships in the wheel."""

from __future__ import annotations

import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest

from clir.data import load_collection, load_qrels, load_queries
from clir.data.sample import sample_path

LANGS = {"de", "fr", "ru", "zh", "fa"}


def test_sample_parses_with_languages_and_unique_ids():
    coll = load_collection("sample")
    docs = list(coll.docs())
    assert 60 <= len(docs) <= 100
    assert coll.count_docs() == len(docs)
    ids = [d.doc_id for d in docs]
    assert len(set(ids)) == len(ids)
    assert {d.lang for d in docs} == LANGS
    for lang in LANGS:  # every language carries a real share of the collection
        assert sum(d.lang == lang for d in docs) >= 10
    assert all(d.text.strip() and d.title.strip() for d in docs)


def test_queries_and_graded_qrels_are_consistent():
    coll = load_collection("sample")
    doc_ids = {d.doc_id for d in coll.docs()}
    queries = coll.queries()
    assert 10 <= len(queries) <= 15
    assert all(q.text.strip() for q in queries)
    qrels = coll.qrels()
    query_ids = {q.query_id for q in queries}
    assert set(qrels) == query_ids  # every query is judged, no judgment lacks its query
    for qid, judged in qrels.items():
        assert set(judged) <= doc_ids, f"{qid} judges unknown documents {set(judged) - doc_ids}"
        assert set(judged.values()) <= {1, 2}
        assert 2 in judged.values(), f"{qid} has no answering document"
    # answers are spread over the languages, so the sample is cross-language for each of them
    answer_langs = {did.split("-")[0] for judged in qrels.values() for did, g in judged.items() if g == 2}
    assert answer_langs == LANGS


def test_sample_resolves_through_query_and_qrels_loaders():
    assert len(load_queries("sample")) == len(load_collection("sample").queries())
    assert load_qrels("sample") == load_collection("sample").qrels()


def test_sample_files_are_package_data():
    """pyproject's package-data must cover every data file of the sample, or `pip install` drops them."""
    root = Path(__file__).resolve().parents[1]
    data = tomllib.loads((root / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["package-data"]["clir.data.sample"]
    files = [p.name for p in sample_path().iterdir() if p.is_file() and p.suffix != ".py"]
    assert {"docs.jsonl", "queries.tsv", "qrels.txt"} <= set(files)
    for name in files:
        assert any(fnmatch(name, pat) for pat in patterns), f"{name} is not shipped in the wheel"


def test_collection_sources_are_tried_in_one_order(tmp_path, monkeypatch):
    """One registry of collection sources (clir.data.resolve.SOURCES): the first that recognises a string
    names it, and the irds: prefix rule is the same for collections, triples and language-adapter text."""
    from clir.data.resolve import SOURCES, irds_id, names_collection, resolve_collection
    from clir.errors import NotFoundError

    assert irds_id("irds:clir/xquad-r/de") == "clir/xquad-r/de" and irds_id("docs.jsonl") is None
    assert resolve_collection("irds:clir/xquad-r/de").irds_id == "clir/xquad-r/de"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sample").mkdir()  # a folder named like the bundled sample: the folder wins (tried first)
    assert resolve_collection("sample").kind == "folder"
    (tmp_path / "docs.jsonl").write_text('{"id": "d1", "text": "x"}\n', encoding="utf-8")
    assert resolve_collection("docs.jsonl").kind == "file" and names_collection("docs.jsonl")
    assert [s.__name__ for s in SOURCES][-1] == "_bare_irds"  # a bare id last: any local name wins
    with pytest.raises(NotFoundError, match="folder not found"):
        resolve_collection("./nowhere")
