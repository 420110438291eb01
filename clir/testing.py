"""Builders of tiny, random, offline models and collections for tests and examples (no hub access)."""

from __future__ import annotations

import json
from pathlib import Path

# A few hundred short multilingual lines: enough for a WordPiece vocabulary covering every script we test.
_LINES = {
    "en": [
        "the cat sits on the mat",
        "dense retrieval with adapters",
        "where is the train station",
        "the history of the roman empire",
        "how to bake bread at home",
        "climate change and the oceans",
        "football world cup final",
        "quantum computers use qubits",
        "the river flows to the sea",
        "music festival in the summer",
    ],
    "de": [
        "die katze sitzt auf der matte",
        "wo ist der bahnhof",
        "die geschichte des römischen reiches",
        "wie man zu hause brot backt",
        "der klimawandel und die ozeane",
        "das finale der fußballweltmeisterschaft",
        "quantencomputer nutzen qubits",
        "der fluss fließt ins meer",
    ],
    "ru": [
        "кошка сидит на коврике",
        "где находится вокзал",
        "история римской империи",
        "как испечь хлеб дома",
        "изменение климата и океаны",
        "финал чемпионата мира по футболу",
        "квантовые компьютеры используют кубиты",
    ],
    "zh": [
        "猫坐在垫子上",
        "火车站在哪里",
        "罗马帝国的历史",
        "如何在家烤面包",
        "气候变化与海洋",
        "世界杯决赛",
    ],
    "fa": [
        "گربه روی فرش نشسته است",
        "ایستگاه قطار کجاست",
        "تاریخ امپراتوری روم",
        "تغییرات آب و هوا و اقیانوس ها",
    ],
    "fr": ["le chat est assis sur le tapis", "où est la gare", "l'histoire de l'empire romain"],
}


def corpus_lines() -> list[str]:
    return [line for lines in _LINES.values() for line in lines]


_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def wordpiece_vocab(lines: list[str], size: int = 600) -> dict[str, int]:
    """A WordPiece vocabulary learnt from ``lines`` as WordPiece/BPE trainers learn one (the alphabet, with
    ``##`` for non-initial characters, then the most frequent adjacent pair merged, again and again), with
    ties broken by the pair itself: the same vocabulary in every process. (The ``tokenizers`` trainer breaks
    ties in hash-map order, which Rust seeds per process: each test session built a different tiny model.)"""
    from collections import Counter

    from tokenizers import normalizers, pre_tokenizers

    norm, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    counts = Counter(w for line in lines for w, _span in pre.pre_tokenize_str(norm.normalize_str(line)))
    words = {w: [w[0], *(f"##{c}" for c in w[1:])] for w in counts}
    vocab = list(_SPECIAL) + sorted({piece for pieces in words.values() for piece in pieces})
    while len(vocab) < size:
        pairs: Counter[tuple[str, str]] = Counter()
        for w, pieces in words.items():
            for a, b in zip(pieces, pieces[1:], strict=False):
                pairs[(a, b)] += counts[w]
        if not pairs:
            break
        (a, b), _n = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        merged = a + b.removeprefix("##")
        for w, pieces in words.items():
            i, out = 0, []
            while i < len(pieces):
                if i + 1 < len(pieces) and (pieces[i], pieces[i + 1]) == (a, b):
                    out.append(merged)
                    i += 2
                else:
                    out.append(pieces[i])
                    i += 1
            words[w] = out
        if merged not in vocab:
            vocab.append(merged)
    return {t: i for i, t in enumerate(vocab)}


def build_tiny_bert(
    out: str | Path, *, hidden: int = 64, layers: int = 2, heads: int = 2, seed: int = 0
) -> Path:
    """A random BERT (2 layers, hidden 64) with a WordPiece tokenizer learnt from multilingual lines: the
    same files, bit for bit, in every process (:func:`wordpiece_vocab`)."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordPiece(wordpiece_vocab(corpus_lines()), unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )
    fast.save_pretrained(out)
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 2,
        max_position_embeddings=128,
    )
    BertModel(cfg, add_pooling_layer=False).save_pretrained(out)
    return out


#: the languages the paper experiment trains language adapters for (no fr: French documents fall back)
MADX_LANGS = ("en", "de", "ru", "zh", "fa")


def build_tiny_madx(
    backbone: str | Path,
    out: str | Path,
    *,
    langs: tuple[str, ...] = MADX_LANGS,
    query_routing: str = "source",
    seed: int = 0,
) -> Path:
    """A madx model folder on ``backbone`` (e.g. :func:`build_tiny_bert`'s): a fresh task adapter on fresh
    language adapters for ``langs``, bundled as ``adapters/lang_<lang>`` (the layout of a trained one), fp32,
    mean pooling, L2-normalised. Seeded, so two builds are alike."""
    import torch

    from clir.model import load_encoder

    torch.manual_seed(seed)
    enc = load_encoder(
        str(backbone),
        {
            "adapter_mode": "madx",
            "source_lang": "en",
            "language_adapters": {lang: "new" for lang in langs},
            "routing": {"query": query_routing, "doc": "source"},
            "pooling": "mean",
            "normalize": True,
            "precision": "fp32",
        },
    )
    return enc.save(out, save_lang=langs)


def write_tiny_collection(out: str | Path, *, n_docs: int | None = None) -> Path:
    """A local collection folder (docs.jsonl, queries.tsv, qrels.txt): English queries, foreign documents.

    Each English line's translations are its relevant documents."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    en = _LINES["en"]
    docs, qrels = [], []
    for lang, lines in _LINES.items():
        if lang == "en":
            continue
        for i, text in enumerate(lines):
            doc_id = f"{lang}-{i}"
            docs.append({"doc_id": doc_id, "text": text, "lang": lang})
            qrels.append(f"q{i} 0 {doc_id} 1")
    if n_docs is not None:
        docs = docs[:n_docs]
    with open(out / "docs.jsonl", "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    with open(out / "queries.tsv", "w", encoding="utf-8") as f:
        for i, q in enumerate(en[:8]):
            f.write(f"q{i}\t{q}\n")
    (out / "qrels.txt").write_text("\n".join(qrels) + "\n", encoding="utf-8")
    return out


def provision_e5_small(shared: str | Path, out: str | Path) -> str | None:
    """Build multilingual-e5-small into ``out`` with the shared folder's offline tool, unless it is already
    there (the test suite's e5_small fixture and the benchmarks use it). Returns None on success, else why not."""
    import os
    import subprocess
    import sys

    out = Path(out)
    if (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file():
        return None
    tool = Path(shared) / "tools" / "provision-multilingual-e5-small"
    if not tool.is_file():
        return f"no {tool} to build it"
    # the tool runs `python`: make it this interpreter (the one with transformers installed)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    res = subprocess.run(["bash", str(tool), str(out)], capture_output=True, text=True, env=env)
    if res.returncode != 0 or not (out / "model.safetensors").is_file():
        return res.stderr[-500:] or f"{tool} exited with {res.returncode}"
    return None


def index_vectors(folder: str | Path):
    """Every vector of an index folder's FAISS index, in docid order (for tests comparing builds)."""
    import faiss

    index = faiss.read_index(str(Path(folder) / "index"))
    return index.reconstruct_n(0, index.ntotal)


def index_docids(folder: str | Path) -> list[str]:
    """An index folder's ``docid`` file, one id a line."""
    return (Path(folder) / "docid").read_text().split()


def server_url(proc, timeout: float) -> str:
    """The address a ``clir serve`` subprocess (stderr piped, text mode) says it listens on, read from its log;
    AssertionError with the log's tail when it exits or stays silent for ``timeout`` seconds."""
    import re
    import time

    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        m = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line)
        if m:
            return m.group(1)
    raise AssertionError("server did not start:\n" + "".join(seen[-30:]))


def stop_server(proc) -> None:
    """End a ``clir serve`` subprocess: terminate it, and kill it when it has not exited after 20 s."""
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def java21_home() -> str | None:
    """A Java >= 21 installation (``JAVA_HOME``, else the image's Temurin) for the Pyserini checks, or None."""
    import os
    import subprocess

    for home in (os.environ.get("JAVA_HOME"), "/usr/lib/jvm/temurin-25-jdk-amd64"):
        if home and (Path(home) / "bin/java").is_file():
            out = subprocess.run([f"{home}/bin/java", "-version"], capture_output=True, text=True).stderr
            if any(f'version "{v}' in out for v in range(21, 40)):
                return home
    return None
