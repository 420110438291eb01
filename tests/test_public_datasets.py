"""The clir/... ir_datasets datasets, built from the upstream files in ../shared/data/raw placed under a
temporary IR_DATASETS_HOME, give exactly the reference collections in ../shared/data/collections, the
language-adapter text in ../shared/data/mono and the training triples in ../shared/data/train."""

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
    commit = "9bc8c7fb6dd8d01d72a05a93c2cb96882b0d299c"  # pinned: the checksums are of that commit's files
    for lang in ("de", "ru", "zh", "en"):
        assert f"{tmp_path}/empty-home/clir/lareqa/xquad-r/{lang}.json" in msg
        assert (
            f"https://raw.githubusercontent.com/google-research-datasets/lareqa/{commit}/xquad-r/{lang}.json"
            in msg
        )
    assert msg.count("de.json (from") == 1  # one line per file, whichever parts read it


def test_missing_training_data_names_its_urls_and_places(tmp_path, monkeypatch):
    monkeypatch.setenv("IR_DATASETS_HOME", str(tmp_path / "empty-home"))
    from clir.data.irds import ensure_available
    from clir.data.triples import IRDS_PARTS

    with pytest.raises(ClirError) as e:
        ensure_available("clir/ud/ru", ("docs",))
    msg = str(e.value)
    home = tmp_path / "empty-home" / "clir"
    for tb, commit, file in (
        ("Russian-GSD", "5400f2fd", "ru_gsd-ud-dev.conllu"),
        ("Russian-Taiga", "3c64a056", "ru_taiga-ud-test.conllu"),
        ("Russian-PUD", "da5b3816", "ru_pud-ud-test.conllu"),
    ):
        assert (
            f"{home}/ud/UD_{tb}/{file} (from https://raw.githubusercontent.com/UniversalDependencies/UD_{tb}/{commit}/{file})"
            in msg
        )
    assert msg.count(".conllu (from") == 5  # GSD and Taiga dev + test, PUD test only
    with pytest.raises(ClirError) as e:
        ensure_available("clir/wikiqa/train-triples", IRDS_PARTS)
    msg = str(e.value)
    for name in ("a.toks", "b.toks", "sim.txt", "id.txt"):
        url = f"https://raw.githubusercontent.com/castorini/data/056cbbcb/WikiQA/train/{name}"
        assert f"docs, queries, docpairs: {home}/castorini-data/WikiQA/train/{name} (from {url})" in msg


def test_files_are_checked_against_md5_and_sha256(tmp_path):
    from ir_datasets.util import HashVerificationError

    from clir.data.public import _verify

    f = tmp_path / "x.txt"
    f.write_bytes(b"hello\n")
    md5, sha = (
        "b1946ac92492d2347c6235b4d2611184",
        "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03",
    )
    _verify(f, md5, sha, "https://example.org/x.txt")
    f.write_bytes(b"hellO\n")
    with pytest.raises(HashVerificationError, match="md5"):
        _verify(f, md5, sha, "https://example.org/x.txt")
    g = tmp_path / "y.txt"
    g.write_bytes(b"hello\n")
    with pytest.raises(HashVerificationError, match=f"sha256 {sha}, expected 0+ "):
        _verify(g, md5, "0" * 64, "https://example.org/y.txt")


@pytest.mark.shared
@pytest.mark.parametrize("lang", ["en", "de", "ru", "zh", "fa"])
def test_ud_sentences_reproduce_the_mono_text(raw_irds_home, shared_dir, lang):
    """irds:clir/ud/<lang> is ../shared/data/mono/<lang>.txt, byte for byte, through the language-adapter reader."""
    from clir.train.mlm import TextSource

    coll = load_collection(f"irds:clir/ud/{lang}")
    docs = list(coll.docs())
    text = "".join(d.text + "\n" for d in docs)
    assert text.encode("utf-8") == (shared_dir / f"data/mono/{lang}.txt").read_bytes()
    assert {d.lang for d in docs} == {lang} and coll.lang == lang and coll.count_docs() == len(docs)
    assert docs[0].doc_id == f"{lang}-ud0" and not coll.has_queries() and not coll.has_qrels()
    assert list(TextSource(f"irds:clir/ud/{lang}").records()) == [d.text for d in docs]


@pytest.mark.shared
def test_wikiqa_triples_reproduce_the_training_file(raw_irds_home, shared_dir):
    from clir.data.irds import load_dataset
    from clir.data.triples import open_triples

    ref = (shared_dir / "data/train/wikiqa-triples.jsonl").read_bytes()
    src = open_triples("irds:clir/wikiqa/train-triples")
    lines = [
        json.dumps({"query": t.query, "positive": p, "negative": n}, ensure_ascii=False) + "\n"
        for t in src.records()
        for p, n in zip(t.positives, t.negatives, strict=True)
    ]
    assert "".join(lines).encode("utf-8") == ref  # 8,995 triples, in the file's order
    assert [t.query for t in src.records(8990)] == [json.loads(x)["query"] for x in ref.splitlines()[8990:]]
    ds = load_dataset("clir/wikiqa/train-triples")
    assert ds.has_docpairs() and ds.has_queries() and ds.queries_lang() == "en"
    qrels = list(ds.qrels_iter())
    assert {q.relevance for q in qrels} == {0, 1} and len(qrels) == ds.docs_count() == 8672
    assert ds.docs_store().get("1-0").text == "a partly submerged glacier cave on perito moreno glacier ."


@pytest.mark.shared
def test_xquad_r_english_control(raw_irds_home):
    """English questions against the English sentences, answers placed by the end-exclusive rule."""
    import ir_datasets

    coll = load_collection("irds:clir/xquad-r/en")
    docs = {d.doc_id: d.text for d in coll.docs()}
    queries = coll.queries()
    qrels = coll.qrels()
    assert len(docs) == coll.count_docs() == 1180 and coll.lang == "en"
    assert len(queries) == 1190 and set(qrels) == {q.query_id for q in queries}
    assert all(len(rel) == 1 and next(iter(rel)).startswith("en-s") for rel in qrels.values())
    # the questions are those of every other language's collection, judged against English sentences
    assert [q.query_id for q in queries] == [
        q.query_id for q in load_collection("irds:clir/xquad-r/de").queries()
    ]
    english = json.loads((raw_irds_home / "clir/lareqa/xquad-r/en.json").read_text(encoding="utf-8"))["data"]
    answers = {
        qa["id"]: qa["answers"][0]["text"] for a in english for p in a["paragraphs"] for qa in p["qas"]
    }
    inside = sum(answers[qid].strip() in docs[next(iter(rel))] for qid, rel in qrels.items())
    assert inside >= 1185  # the answer text lies in its sentence (a few answers span a sentence break)
    assert "clir/xquad-r/en" in ir_datasets.registry


@pytest.mark.shared
def test_an_id_works_wherever_a_collection_does(
    raw_irds_home, shared_dir, tiny_bert, tiny_head, tmp_path, capsys
):
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
    args += ["--head", str(tiny_head())]
    assert (
        main([*args, "--out", str(out), "--max-steps", "2", "--batch-size", "4", "--max-length", "64"]) == 0
    )
    assert (out / "adapter_config.json").is_file()


@pytest.mark.shared
def test_training_verbs_take_the_ids(raw_irds_home, tiny_bert, tiny_head, tmp_path, one_torch_thread):
    """`clir train` reads irds:clir/wikiqa/train-triples, `clir train-language-adapter` irds:clir/ud/<lang>."""
    from clir.cli.main import main

    cfg = tmp_path / "train.yaml"
    cfg.write_text(
        f"model: {{backbone: {tiny_bert}, adapter_mode: task, pooling: mean}}\n"
        "data: {triples: irds:clir/wikiqa/train-triples, max_query_length: 16, max_passage_length: 32}\n"
        "optim: {batch_size: 4, max_steps: 2, threads: 1}\n",
        encoding="utf-8",
    )
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "model"), "--dry-run"]) == 0
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "model")]) == 0
    assert (tmp_path / "model" / "adapters" / "task" / "adapter_config.json").is_file()
    out = tmp_path / "lang-fa"
    args = ["--lang", "fa", "--text", "irds:clir/ud/fa", "--backbone", str(tiny_bert), "--out", str(out)]
    args += ["--head", str(tiny_head())]
    assert main(["train-language-adapter", *args, "--max-steps", "2", "--batch-size", "4"]) == 0
    assert (out / "adapter_config.json").is_file()
    # the model cards name the data and its licence
    card = (tmp_path / "model" / "README.md").read_text(encoding="utf-8")
    assert "irds:clir/wikiqa/train-triples" in card and "Microsoft Research Data License" in card
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "irds:clir/ud/fa" in card and "CC BY-SA 4.0" in card and "- fa" in card


@pytest.mark.shared
def test_a_grid_finds_the_languages_of_a_multilingual_irds_collection(raw_irds_home):
    """Target routing on an ir_datasets collection of several languages (no doc_lang): the grid reads each
    document's own language, as the index build does, instead of refusing to route."""
    from clir.config.experiment import CollectionSpec
    from clir.experiments.grid import GridCollection

    def grid(source: str) -> GridCollection:
        return GridCollection(CollectionSpec(source), "c", source, source[5:], None, None, "en")

    assert grid("irds:clir/xquad-r-mlir/de-ru-zh").doc_langs() == ["de", "ru", "zh"]
    assert grid("irds:clir/xquad-r/de").doc_langs() == ["de"]  # the dataset's one language
