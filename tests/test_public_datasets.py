"""The clir/... ir_datasets datasets, built from the upstream files in ../shared/data/raw placed under a
temporary IR_DATASETS_HOME, give exactly the reference collections in ../shared/data/collections."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from clir.data import load_collection
from clir.data.collections import read_qrels, read_queries_tsv
from clir.errors import ClirError

CASES = [
    ("xquad-r", "de"),
    ("xquad-r", "ru"),
    ("xquad-r", "zh"),
    ("xquad-r", "hi"),
    ("xquad-r", "th"),
    ("xquad-r-articles", "de"),
    ("xquad-r-articles", "ru"),
    ("xquad-r-articles", "zh"),
    ("xquad-r-mlir", "de-ru-zh"),
    ("tatoeba", "deu"),
    ("tatoeba", "cmn"),
    ("tatoeba", "pes"),
]


def _reference(shared_dir: Path, kind: str, lang: str):
    root = shared_dir / "data/collections" / kind / lang
    with open(root / "docs.jsonl", encoding="utf-8") as f:
        docs = [tuple(json.loads(line)[k] for k in ("doc_id", "text", "lang")) for line in f]
    queries = [(q.query_id, q.text) for q in read_queries_tsv(root / "queries.tsv")]
    return docs, queries, read_qrels(root / "qrels.txt")


@pytest.mark.shared
@pytest.mark.parametrize(("kind", "lang"), CASES)
def test_registered_datasets_equal_the_reference_collections(raw_irds_home, shared_dir, kind, lang):
    docs, queries, qrels = _reference(shared_dir, kind, lang)
    coll = load_collection(f"irds:clir/{kind}/{lang}")
    assert [(d.doc_id, d.text, d.lang) for d in coll.docs()] == docs
    assert [(q.query_id, q.text) for q in coll.queries()] == queries
    assert coll.qrels() == qrels
    assert coll.count_docs() == len(docs)


@pytest.mark.shared
def test_raw_ir_datasets_api_and_languages(raw_irds_home):
    import ir_datasets

    from clir.data.irds import load_dataset

    ds = load_dataset("clir/xquad-r-mlir/de-ru-zh")
    assert ds is ir_datasets.load("clir/xquad-r-mlir/de-ru-zh")  # in ir_datasets' own registry
    assert ds.docs_cls()._fields == ("doc_id", "text", "lang")
    assert {d.lang for d in ds.docs_iter()} == {"de", "ru", "zh"}
    assert ds.docs_lang() is None and ds.queries_lang() == "en"
    assert load_dataset("clir/tatoeba/pes").docs_lang() == "fa"
    assert load_dataset("clir/xquad-r/de").docs_lang() == "de"
    # another language combination resolves on first use through the registry pattern
    es_vi = load_dataset("clir/xquad-r-mlir/es-vi")
    assert {d.doc_id.split("-")[0] for d in es_vi.docs_iter()} == {"es", "vi"}
    assert sum(1 for _ in es_vi.qrels_iter()) == 2 * 1190


@pytest.mark.shared
def test_corrupted_file_is_refused_with_both_checksums(raw_irds_home, shared_dir):
    target = raw_irds_home / "clir/laser"
    target.unlink()
    src = shared_dir / "data/raw/laser/tatoeba/v1"
    (target / "tatoeba/v1").mkdir(parents=True)
    for name in ("tatoeba.deu-eng.deu", "tatoeba.deu-eng.eng"):
        shutil.copyfile(src / name, target / "tatoeba/v1" / name)
    bad = target / "tatoeba/v1/tatoeba.deu-eng.deu"
    bad.write_bytes(bad.read_bytes().replace(b"Tom", b"Tim", 1))
    coll = load_collection("irds:clir/tatoeba/deu")
    with pytest.raises(ClirError) as e:
        list(coll.docs())
    msg = str(e.value)
    assert "e5b09638252fc545e3e57711f1177234" in msg  # expected (LASER's file)
    assert hashlib.md5(bad.read_bytes()).hexdigest() in msg  # found
    assert str(bad) in msg and "\n" not in msg
    assert [q.text for q in coll.queries()][:1] == [
        "Mary said she didn't know where Tom was."
    ]  # .eng is fine


def test_missing_file_names_its_url_and_place(tmp_path, monkeypatch):
    monkeypatch.setenv("IR_DATASETS_HOME", str(tmp_path / "empty-home"))
    from clir.data.irds import ensure_available

    with pytest.raises(ClirError) as e:
        ensure_available("clir/xquad-r-mlir/de-ru-zh")
    msg = str(e.value)
    for lang in ("de", "ru", "zh", "en"):
        assert f"{tmp_path}/empty-home/clir/lareqa/xquad-r/{lang}.json" in msg
        assert (
            f"https://raw.githubusercontent.com/google-research-datasets/lareqa/master/xquad-r/{lang}.json"
            in msg
        )
    assert msg.count("de.json (from") == 1  # one line per file, whichever parts read it


@pytest.mark.shared
def test_an_id_works_wherever_a_collection_does(raw_irds_home, shared_dir, tiny_bert, tmp_path, capsys):
    """index, search, evaluate and language-adapter training text take ``irds:clir/...`` like a folder."""
    from clir.cli.main import main

    ds = "irds:clir/tatoeba/deu"
    model = ["--model", str(tiny_bert), "--pooling", "mean", "--normalize", "--max-passage-length", "64"]
    assert main(["index", "--collection", ds, "--out", str(tmp_path / "idx"), *model]) == 0
    run = tmp_path / "run.trec"
    assert (
        main(["search", "--index", str(tmp_path / "idx"), "--queries", ds, "--run", str(run), "--k", "10"])
        == 0
    )
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--qrels", ds, "--metrics", "mrr@10", "recall@10"]) == 0
    ours = json.loads(capsys.readouterr().out)
    folder = shared_dir / "data/collections/tatoeba/deu"
    assert (
        main(["evaluate", "--run", str(run), "--qrels", str(folder), "--metrics", "mrr@10", "recall@10"]) == 0
    )
    assert json.loads(capsys.readouterr().out) == ours  # same judgements as the reference folder
    with open(run) as f:
        assert len({line.split()[0] for line in f}) == 1000  # every query searched

    out = tmp_path / "adapter-de"
    args = ["train-language-adapter", "--lang", "de", "--text", ds, "--backbone", str(tiny_bert)]
    assert (
        main([*args, "--out", str(out), "--max-steps", "2", "--batch-size", "4", "--max-length", "64"]) == 0
    )
    assert (out / "adapter_config.json").is_file()
