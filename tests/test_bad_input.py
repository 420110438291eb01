"""Bad input, table-driven: the place where the next bad input gets added.

CLI: every case exits non-zero with one line ``clir VERB: error: ...`` naming the problem, no traceback, and
nothing written at ``--out`` (nor anywhere else in the case's folder). (REST cases live in tests/test_serve.py's
table: a 4xx JSON error, never 500.)

A case names its verb's flags over the defaults (:func:`_flags`), files to write (``files``; ``{tmp}``,
``{out}``, ``{bert}`` are filled in), and may corrupt a copy of a good index (``index``, at ``{tmp}/idx``) or
of the tiny model (``model``, at ``{tmp}/model``)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
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
    #: more files to write into {tmp}: name -> bytes, or text with {tmp} {out} {bert} filled in
    files: dict[str, bytes | str] = field(default_factory=dict)
    #: damages a copy of the good index at {tmp}/idx (searched by default when given)
    index: Callable[[Path], object] | None = None
    #: damages a copy of the tiny model at {tmp}/model (used by default when given)
    model: Callable[[Path], object] | None = None


def _deep(n: int = 100_000) -> bytes:
    """JSON (and YAML) nested ``n`` deep: Python's parsers recurse once per level."""
    return b"[" * n + b"]" * n


def _put(name: str, data: bytes) -> Callable[[Path], object]:
    return lambda folder: (folder / name).write_bytes(data)


def _edit_json(name: str, edit: Callable[[dict], object]) -> Callable[[Path], object]:
    def apply(folder: Path) -> None:
        data = json.loads((folder / name).read_text())
        new = edit(data)
        (folder / name).write_text(new if isinstance(new, str) else json.dumps(data if new is None else new))

    return apply


def _without(key: str) -> Callable[[Path], object]:
    def drop(manifest: dict) -> None:
        del manifest[key]

    return _edit_json("manifest.json", drop)


def _config(**sizes) -> Callable[[Path], object]:
    return _edit_json("config.json", lambda c: c.update(sizes))


def _faiss_index(dim: int) -> Callable[[Path], object]:
    def write(folder: Path) -> None:
        import faiss

        index = faiss.IndexFlatIP(dim)
        index.add(np.zeros((3, dim), dtype=np.float32))
        faiss.write_index(index, str(folder / "index"))

    return write


def _pickled(name: str) -> Callable[[Path], object]:
    return lambda folder: np.save(folder / name, np.array([{"x": 1}] * 3, dtype=object), allow_pickle=True)


# 10 levels of 9 aliases each: 563 bytes naming 9^9 ~ 4e8 leaves (the "billion laughs")
ALIAS_BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{b}: &{b} [{','.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)
TRAIN_YAML = """model:
  backbone: {bert}
  pooling: mean
data:
  triples: {tmp}/triples.jsonl
optim:
  batch_size: 2
  max_steps: 2
  threads: 1
checkpoint:
  every: 1
"""
TRIPLE = _jsonl([{"query": "die katze", "positive": "der fluss", "negative": "das haus"}] * 4)
TASK_MODEL = "backbone: {bert}\nadapter_mode: task\n"
ADAPTER_CONFIG = {"config": {"architecture": "bottleneck", "reduction_factor": 1e-9, "non_linearity": "relu"}}

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
    # ------------------------------------------------------------------ clir index: crafted documents
    Case(
        "JSON nested 100k deep in docs.jsonl",
        "index",
        {},
        "docs.jsonl:2: JSON nested deeper than 64 levels",
        docs=_jsonl(GOOD[:1]) + _deep() + b"\n",
    ),
    Case(
        '"lang": NaN in docs.jsonl',
        "index",
        {},
        "docs.jsonl:1: malformed JSON (NaN is not a JSON number)",
        docs=b'{"doc_id": "x", "text": "t", "lang": NaN}\n',
    ),
    Case(
        "lang that is a mapping",
        "index",
        {},
        "docs.jsonl:2 (doc x): lang dict {'de': 1} is not a language code",
        docs=_jsonl([GOOD[0], {"doc_id": "x", "text": "t", "lang": {"de": 1}}]),
    ),
    Case(
        "lang that is a sentence",
        "index",
        {},
        "lang 'the language is German' is not a language code",
        docs=_jsonl([{"doc_id": "x", "text": "t", "lang": "the language is German"}]),
    ),
    Case(
        "--doc-lang that is not a language", "index", {"--doc-lang": "de/../x"}, "--doc-lang: lang 'de/../x'"
    ),
    Case(
        "doc ids x (split into passages) and x#1",
        "index",
        {},
        "doc id 'x#1' in ",
        docs=_jsonl([{"doc_id": "x", "text": "die katze " * 200}, {"doc_id": "x#1", "text": "der fluss"}]),
    ),
    Case(
        "doc id x#0 before a document x",
        "index",
        {"--passage-length": "32"},
        "clashes with the passage ids of document 'x'",
        docs=_jsonl([{"doc_id": "x#0", "text": "der fluss"}, {"doc_id": "x", "text": "die katze"}]),
    ),
    Case(
        "--collection a symbolic link loop",
        "index",
        {"--collection": "{tmp}/loop"},
        "symbolic link that leads to no file or folder",
        setup="symlink_loop",
    ),
    # ------------------------------------------------------------------ clir index: devices and models
    Case("--device banana", "index", {"--device": "banana"}, "--device 'banana': not a torch device"),
    Case("--device cuda:7", "index", {"--device": "cuda:7"}, "--device cuda:7: "),
    Case(
        "model config hidden 1e6",
        "index",
        {},
        "hidden_size 1000000 is outside 1..32768",
        model=_config(hidden_size=10**6),
    ),
    Case(
        "model config 1e5 layers",
        "index",
        {},
        "num_hidden_layers 100000 is outside",
        model=_config(num_hidden_layers=10**5),
    ),
    Case(
        "model config vocab 1e10",
        "index",
        {},
        "vocab_size 10000000000 is outside",
        model=_config(vocab_size=10**10),
    ),
    Case(
        "model config positions 1e9",
        "index",
        {},
        "max_position_embeddings 1000000000 is outside",
        model=_config(max_position_embeddings=10**9),
    ),
    Case(
        "model config 0 heads",
        "index",
        {},
        "num_attention_heads 0 is outside",
        model=_config(num_attention_heads=0),
    ),
    Case(
        "model config negative size",
        "index",
        {},
        "intermediate_size -128 is outside",
        model=_config(intermediate_size=-128),
    ),
    Case(
        "model config float size", "index", {}, "hidden_size 64.5 is outside", model=_config(hidden_size=64.5)
    ),
    Case(
        "model config unknown hidden_act",
        "index",
        {},
        "hidden_act 'banana' is not an activation",
        model=_config(hidden_act="banana"),
    ),
    Case(
        "model config.json nested 100k deep",
        "index",
        {},
        "config.json: JSON nested deeper than 64 levels",
        model=_put("config.json", _deep()),
    ),
    Case(
        "model config hidden_act a number",
        "index",
        {},
        "hidden_act 5 is not an activation",
        model=_config(hidden_act=5),
    ),
    Case(
        "model config layer_norm_eps a string",
        "index",
        {},
        "layer_norm_eps 'x' is not a number",
        model=_config(layer_norm_eps="x"),
    ),
    Case(
        "model tokenizer_config.json nested 100k deep",
        "index",
        {},
        "could not load the tokenizer",
        model=_put("tokenizer_config.json", _deep()),
    ),
    Case(
        "truncated model.safetensors",
        "index",
        {},
        "could not load the backbone",
        model=lambda d: os.truncate(d / "model.safetensors", 5000),
    ),
    Case(
        "--out a symbolic link loop",
        "index",
        {"--out": "{tmp}/loop"},
        "is a symbolic link to nothing",
        setup="symlink_loop",
    ),
    Case(
        "model YAML with a task adapter reduction_factor of 1e-9",
        "index",
        {"--model": "{tmp}/m.yaml"},
        "reduction_factor 1e-09 is below 0.125",
        files={
            "m.yaml": "model:\n  backbone: {bert}\n  adapter_mode: task\n  task_adapter:\n    reduction_factor: 1.0e-9\n"
        },
    ),
    Case(
        "saved adapter with a reduction_factor of 1e-9",
        "index",
        {"--model": "{tmp}/tm"},
        "adapter_config.json: reduction_factor 1e-09 is below 0.125",
        files={
            "tm/clir_model.yaml": TASK_MODEL,
            "tm/adapters/task/adapter_config.json": json.dumps(ADAPTER_CONFIG),
        },
    ),
    Case(
        "task-mode model folder without adapters/task",
        "index",
        {"--model": "{tmp}/tm"},
        "is in task mode but has no adapters/task/",
        files={"tm/clir_model.yaml": TASK_MODEL},
    ),
    Case(
        "full-mode model folder without backbone/",
        "index",
        {"--model": "{tmp}/fm"},
        "is in full mode but has no backbone/",
        files={"fm/clir_model.yaml": "backbone: {bert}\nadapter_mode: full\n"},
    ),
    # ------------------------------------------------------------------ clir search: queries and runs
    Case(
        "the same query id twice in queries.tsv",
        "search",
        {"--queries": "{queries}", "--run": "{out}"},
        "queries.tsv:3: query id q1 repeats (first on line 1)",
        queries=b"q1\tdie katze\nq2\tder fluss\nq1\tdas haus\n",
    ),
    Case(
        "--tag with a space",
        "search",
        {"--query": "katze", "--tag": "my tag"},
        "--tag 'my tag': a run tag is one word",
    ),
    Case("empty --tag", "search", {"--query": "katze", "--tag": ""}, "--tag '': a run tag is one word"),
    Case(
        "--tag that injects a run line",
        "search",
        {"--queries": "{queries}", "--run": "{out}", "--tag": "x\nq1 Q0 FAKE 1 999 x"},
        "a run tag is one word",
        queries=b"q1\tdie katze\n",
    ),
    Case(
        "--run onto a named pipe",
        "search",
        {"--queries": "{queries}", "--run": "{tmp}/fifo"},
        "is not a regular file",
        queries=b"q1\tdie katze\n",
        setup="fifo",
    ),
    Case(
        "--device banana (search)", "search", {"--query": "katze", "--device": "banana"}, "not a torch device"
    ),
    # ------------------------------------------------------------------ clir search: a damaged index folder
    Case(
        "truncated index file",
        "search",
        {},
        "idx/index: not a readable FAISS index",
        index=lambda d: os.truncate(d / "index", 100),
    ),
    Case("empty index file", "search", {}, "idx/index: not a readable FAISS index", index=_put("index", b"")),
    Case(
        "random index file",
        "search",
        {},
        "idx/index: not a readable FAISS index",
        index=_put("index", os.urandom(4096)),
    ),
    Case("wrong-dimension index", "search", {}, "a 32-dimensional index", index=_faiss_index(32)),
    Case(
        "pickled docs.offsets.npy",
        "search",
        {},
        "unreadable document offsets (Object arrays",
        index=_pickled("docs.offsets.npy"),
    ),
    Case(
        "out-of-range docs.offsets.npy",
        "search",
        {},
        "offsets outside docs.jsonl",
        index=lambda d: np.save(d / "docs.offsets.npy", np.array([0, 10**12, 10**13])),
    ),
    Case("pickled passages.npy", "search", {}, "unreadable passage map", index=_pickled("passages.npy")),
    Case(
        "truncated docs.jsonl",
        "search",
        {},
        "idx/docs.jsonl (document 3): malformed JSON",
        index=lambda d: os.truncate(d / "docs.jsonl", (d / "docs.jsonl").stat().st_size - 5),
    ),
    Case(
        "binary docid file", "search", {}, "idx/docid: not UTF-8", index=_put("docid", b"\xff\xfe\x00" * 10)
    ),
    Case(
        "manifest without model",
        "search",
        {},
        "no 'model' with the encoder's source",
        index=_without("model"),
    ),
    Case("manifest without encoder", "search", {}, "no 'encoder' fingerprint", index=_without("encoder")),
    Case(
        "manifest that is a list",
        "search",
        {},
        "manifest.json: not a clir index manifest",
        index=_put("manifest.json", b"[1, 2]"),
    ),
    Case(
        "manifest with a 5000-digit integer",
        "search",
        {},
        "manifest.json: malformed JSON (integer 99999",
        index=_edit_json("manifest.json", lambda m: json.dumps(m)[:-1] + ', "n": ' + "9" * 5000 + "}"),
    ),
    Case(
        "manifest nested 100k deep",
        "search",
        {},
        "manifest.json: JSON nested deeper",
        index=_put("manifest.json", _deep()),
    ),
    Case(
        "manifest refine path out of the folder",
        "search",
        {},
        "search.refine '../../x.npy' is not 'refine.npy'",
        index=_edit_json("manifest.json", lambda m: m.update(search={"refine": "../../x.npy"})),
    ),
    # ------------------------------------------------------------------ clir evaluate
    Case(
        "qrels relevance 99999999999999999999",
        "evaluate",
        {},
        "qrels.txt:1: relevance 99999999999999999999 is outside -1000..1000",
        files={"qrels.txt": b"q1 0 d0 99999999999999999999\n"},
    ),
    Case(
        "--metrics recall@99999999999999999999",
        "evaluate",
        {"--metrics": "recall@99999999999999999999"},
        "the cutoff after @ must be an integer",
    ),
    Case("--metrics with a non-ASCII digit", "evaluate", {"--metrics": "ndcg@\u0663"}, "unknown metric"),
    Case("--metrics ndcg@0", "evaluate", {"--metrics": "ndcg@0"}, "metric 'ndcg@0': the cutoff after @"),
    Case(
        "NaN score in a run",
        "evaluate",
        {},
        "run.trec:2: score 'nan' is not a finite number",
        files={"run.trec": b"q1 Q0 d0 1 1.0 x\nq1 Q0 d1 2 nan x\n"},
    ),
    Case(
        "infinite score in a run",
        "evaluate",
        {},
        "score '-inf' is not a finite",
        files={"run.trec": b"q1 Q0 d0 1 -inf x\n"},
    ),
    # ------------------------------------------------------------------ clir train
    Case(
        "non-UTF-8 YAML config",
        "train",
        {},
        "train.yaml: not UTF-8 (byte 0xff",
        files={"train.yaml": b"model:\n  backbone: caf\xff\n"},
    ),
    Case(
        "YAML alias bomb (train)",
        "train",
        {},
        "train.yaml: the YAML expands to more than",
        files={"train.yaml": ALIAS_BOMB},
    ),
    Case(
        "YAML nested 100k deep",
        "train",
        {},
        "train.yaml: YAML nested deeper than 64",
        files={"train.yaml": b"a: " + _deep()},
    ),
    Case(
        "triples nested 100k deep",
        "train",
        {},
        "triples.jsonl:2: JSON nested deeper",
        files={"triples.jsonl": TRIPLE.splitlines(keepends=True)[0] + _deep()},
    ),
    Case(
        "checkpoint step -5",
        "train",
        {"--resume": None},
        "step -5 is not a step number",
        setup="checkpoint:-5",
    ),
    Case(
        "checkpoint step 1e30",
        "train",
        {"--resume": None},
        "step 1e+30 is not a step number",
        setup="checkpoint:1e30",
    ),
    Case(
        "checkpoint state.json nested deep",
        "train",
        {"--resume": None},
        "state.json is unreadable (JSON nested deeper",
        setup="checkpoint:deep",
    ),
    Case("--device banana (train)", "train", {"--device": "banana"}, "not a torch device"),
    # ------------------------------------------------------------------ clir train-language-adapter
    Case(
        "--non-linearity x",
        "train-language-adapter",
        {"--non-linearity": "x"},
        "non_linearity 'x' is unknown",
    ),
    Case(
        "--reduction-factor 1e-9",
        "train-language-adapter",
        {"--reduction-factor": "1e-9"},
        "reduction_factor 1e-09 is below",
    ),
    Case(
        "--device cuda:7 (language adapter)",
        "train-language-adapter",
        {"--device": "cuda:7"},
        "--device cuda:7: ",
    ),
    Case(
        "--lang that is not a language", "train-language-adapter", {"--lang": "../x"}, "--lang: lang '../x'"
    ),
    Case(
        "backbone config hidden 1e6 (language adapter)",
        "train-language-adapter",
        {"--backbone": "{tmp}/model"},
        "hidden_size 1000000 is outside",
        model=_config(hidden_size=10**6),
    ),
    Case(
        "truncated weights (language adapter)",
        "train-language-adapter",
        {"--backbone": "{tmp}/model"},
        "model.safetensors: not readable weights",
        model=lambda d: os.truncate(d / "model.safetensors", 5000),
    ),
    Case(
        "--resume with its run record nested 100k deep",
        "train-language-adapter",
        {"--resume": None},
        "out.partial/run.json: JSON nested deeper",
        files={"out.partial/run.json": _deep()},
    ),
    # ------------------------------------------------------------------ clir experiment, clir serve
    Case(
        "YAML alias bomb (experiment)",
        "experiment",
        {},
        "exp.yaml: the YAML expands to more than",
        files={"exp.yaml": ALIAS_BOMB},
    ),
    Case(
        "YAML alias bomb (serve --config)",
        "serve",
        {},
        "serve.yaml: the YAML expands to more than",
        files={"serve.yaml": ALIAS_BOMB},
    ),
    Case(
        "serve a truncated index",
        "serve",
        {"--index": "{tmp}/idx"},
        "idx/index: not a readable FAISS index",
        index=lambda d: os.truncate(d / "index", 100),
    ),
    Case(
        "serve a manifest without model",
        "serve",
        {"--index": "{tmp}/idx"},
        "no 'model' with the encoder's source",
        index=_without("model"),
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
    elif case.setup == "symlink_loop":
        (tmp / "loop").symlink_to(tmp / "loop")
    elif case.setup == "fifo":
        os.mkfifo(tmp / "fifo")
    elif case.setup and case.setup.startswith("checkpoint:"):  # a crafted checkpoint of a run at --out
        import torch
        from safetensors.torch import save_file

        ckpt = out / "checkpoints" / "step-00000001"
        ckpt.mkdir(parents=True)
        save_file({"x": torch.zeros(1)}, str(ckpt / "tensors.safetensors"))
        step = case.setup.partition(":")[2]
        state = b'{"step": %s, "data": {}, "model": {}, "optimizer": {}, "rng": {}}' % step.encode()
        (ckpt / "state.json").write_bytes(_deep() if step == "deep" else state)


def _flags(verb: str, tiny_bert: Path, index_dir: Path, tmp: Path, out: Path) -> dict[str, str | None]:
    return {
        "index": {"--collection": str(tmp / "docs.jsonl"), "--model": str(tiny_bert), "--out": str(out)},
        "search": {"--index": str(index_dir), "--query": "katze"},
        "evaluate": {"--run": str(tmp / "run.trec"), "--qrels": str(tmp / "qrels.txt")},
        "train": {"--config": str(tmp / "train.yaml"), "--out": str(out)},
        "train-language-adapter": {
            **{"--lang": "de", "--text": str(tmp / "docs.jsonl"), "--backbone": str(tiny_bert)},
            **{"--out": str(out), "--max-steps": "1"},
        },
        "experiment": {"--config": str(tmp / "exp.yaml"), "--out": str(out)},
        "serve": {"--config": str(tmp / "serve.yaml")},
    }[verb]


#: what every case's folder holds unless the case says otherwise
DEFAULT_FILES: dict[str, bytes | str] = {
    "run.trec": b"q1 Q0 d0 1 1.0 clir\n",
    "qrels.txt": b"q1 0 d0 1\n",
    "train.yaml": TRAIN_YAML,
    "triples.jsonl": TRIPLE,
}


def _fill(text: str, fill: dict[str, Path]) -> str:
    for key, value in fill.items():
        text = text.replace("{" + key + "}", str(value))
    return text


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
    monkeypatch.setattr("uvicorn.run", _no_server)
    docs, queries, out = tmp_path / "docs.jsonl", tmp_path / "queries.tsv", tmp_path / "out"
    fill = {"out": out, "tmp": tmp_path, "queries": queries, "bert": tiny_bert}
    docs.write_bytes(case.docs if case.docs is not None else _jsonl(GOOD))
    if case.queries is not None:
        queries.write_bytes(case.queries)
    for name, data in {**DEFAULT_FILES, **case.files}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data if isinstance(data, bytes) else _fill(data, fill).encode())
    flags = _flags(case.verb, tiny_bert, index_dir, tmp_path, out)
    if case.index is not None:
        shutil.copytree(index_dir, tmp_path / "idx")
        case.index(tmp_path / "idx")
        flags["--index"] = str(tmp_path / "idx")
    if case.model is not None:
        shutil.copytree(tiny_bert, tmp_path / "model")
        case.model(tmp_path / "model")
        flags["--backbone" if case.verb == "train-language-adapter" else "--model"] = str(tmp_path / "model")
    _setup(case, tmp_path, out)
    flags.update({k: v if v is None else _fill(v, fill) for k, v in case.args.items()})
    if case.verb == "serve" and "--index" in flags:
        flags.pop("--config")
    if "--queries" in flags:  # instead of the default --query
        flags.pop("--query", None)
    argv = [case.verb, *[x for k, v in flags.items() for x in ([k] if v is None else [k, v])]]
    lock = None
    if case.setup == "out_locked":  # what a build in progress holds
        lock = open(out.with_name("out.lock"), "a+")  # noqa: SIM115
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    before = _tree(tmp_path)
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
    assert _tree(tmp_path) == before
    for suffix in ("", ".partial", ".lock", ".old"):
        p = out.with_name(out.name + suffix)
        assert not p.exists() or p in before, p


def _tree(root: Path) -> dict[Path, bytes | None]:
    """Every path under ``root`` with a file's bytes (links and pipes as themselves, never followed)."""
    out: dict[Path, bytes | None] = {}
    for p in root.rglob("*"):
        out[p] = p.read_bytes() if p.is_file() and not p.is_symlink() else None
    return out


def _no_server(*args, **kwargs):
    raise AssertionError("clir serve started a server on a bad input")
