"""`clir train` / `clir train-language-adapter` on a tiny random BERT: learning, what trains, exact resume,
streamed data, language adapters that load and route."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
import torch

from clir.config import (
    AdapterArch,
    CheckpointConfig,
    DataConfig,
    ModelConfig,
    OptimConfig,
    Routing,
    TrainConfig,
    load_train_config,
)
from clir.data.triples import JsonlTriples, TripleStream, open_triples
from clir.errors import ClirError
from clir.testing import _LINES
from clir.train import list_checkpoints, train, train_language_adapter
from clir.train.language_adapter import LanguageAdapterArgs
from clir.train.loss import contrastive_loss, false_negative_mask

REPO = Path(__file__).resolve().parents[1]
EN, DE = _LINES["en"], _LINES["de"]
N = len(DE)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    """English line i -> its German translation, a wrong translation as hard negative: separable, learnable."""
    path = tmp_path_factory.mktemp("triples") / "pairs.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(N):
            f.write(json.dumps({"query": EN[i], "positive": DE[i], "negative": DE[(i + 1) % N]}) + "\n")
    return path


def model_config(tiny_bert: Path, mode: str, **kw) -> ModelConfig:
    return ModelConfig(
        backbone=str(tiny_bert),
        adapter_mode=mode,
        pooling="mean",
        normalize=True,
        language_adapters={"en": "new"} if mode == "madx" else {},
        task_adapter=AdapterArch(reduction_factor=2),
        **kw,
    )


def train_config(tiny_bert, triples, mode, *, steps=20, lr=None, every=1000, **optim) -> TrainConfig:
    return TrainConfig(
        model=model_config(tiny_bert, mode),
        data=DataConfig(triples=str(triples), shuffle_block=5),
        optim=OptimConfig(
            batch_size=4,
            max_steps=steps,
            lr=lr if lr is not None else (1e-3 if mode == "full" else 1e-2),
            warmup_steps=0,
            temperature=0.05,
            **optim,
        ),
        checkpoint=CheckpointConfig(every=every, keep=2),
        log_every=5,
    )


def pair_loss(encoder) -> float:
    """In-batch loss of all 8 English->German pairs, the held-fixed yardstick of learning."""
    q = torch.from_numpy(encoder.encode_queries(EN[:N]))
    p = torch.from_numpy(encoder.encode_passages(DE))
    return float(contrastive_loss(q, p, torch.arange(N), 0.05))


def snapshot(encoder) -> dict[str, torch.Tensor]:
    return {
        f"{i}.{n}": p.detach().clone()
        for i, m in enumerate(encoder.models())
        for n, p in m.named_parameters()
    }


# ---------------------------------------------------------------------- learning and what trains
@pytest.mark.parametrize("mode", ["full", "task", "madx"])
def test_loss_falls_and_only_intended_weights_change(tiny_bert, pairs_file, tmp_path, mode):
    from clir.model.encoder import DualEncoder, load_encoder

    cfg = train_config(tiny_bert, pairs_file, mode)
    torch.manual_seed(0)
    enc = DualEncoder(cfg.model)
    before = snapshot(enc)
    loss_before = pair_loss(enc)
    res = train(cfg, out=tmp_path / "m", encoder=enc, show_progress=False)
    assert res.finished and res.step == 20
    after = snapshot(enc)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    if mode == "full":
        assert changed == set(before)  # every weight trains
    else:
        task = {k for k in before if ".adapters.task." in k}
        assert task and changed == task  # the backbone (embeddings too) and the en adapter stay frozen
        if mode == "madx":
            assert any(".adapters.en." in k for k in before)
            assert any("invertible_adapters.en" in k for k in before)

    # the written folder is a model folder that reproduces the trained encoder
    loaded = load_encoder(tmp_path / "m")
    loss_after = pair_loss(loaded)
    assert loss_after < 0.5 * loss_before, (loss_before, loss_after)
    assert abs(pair_loss(enc) - loss_after) < 1e-4
    log = [json.loads(line) for line in (tmp_path / "m" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [5, 10, 15, 20]
    assert all(r["triples_per_s"] > 0 for r in log)
    if mode != "full":
        files = [p for p in (tmp_path / "m").rglob("*") if p.is_file()]
        assert sum(p.stat().st_size for p in files) < 2_000_000  # adapters + settings, no backbone
        assert not (tmp_path / "m" / "backbone").exists()
    assert not (tmp_path / "m" / "checkpoints").exists()


def test_madx_model_keeps_its_language_adapter_and_routing(tiny_bert, pairs_file, tmp_path):
    from clir.model.encoder import load_encoder

    cfg = train_config(tiny_bert, pairs_file, "madx", steps=4)
    cfg.model.language_adapters["de"] = "new"
    cfg.model.routing.doc = "target"
    train(cfg, out=tmp_path / "m", show_progress=False)
    enc = load_encoder(tmp_path / "m")
    assert enc.config.routing.doc == "target"  # inference routing survives training on Stack(en, task)
    assert (tmp_path / "m" / "adapters" / "lang_en" / "adapter_config.json").is_file()


def test_false_negatives_are_masked():
    mask = false_negative_mask([["a"], ["b"], ["a"]], ["a", "b", "a", "x"], [0, 1, 2])
    assert mask.tolist() == [
        [False, False, True, False],
        [False, False, False, False],
        [True, False, False, False],
    ]


# ---------------------------------------------------------------------- exact resume
def weights_of(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.rglob("*")):
        if f.suffix == ".bin":
            out.update({f"{f.parent.name}/{k}": v for k, v in torch.load(f, map_location="cpu").items()})
        elif f.suffix == ".safetensors":
            from safetensors.torch import load_file

            out.update({f"{f.parent.name}/{k}": v for k, v in load_file(f).items()})
    assert out
    return out


@pytest.mark.parametrize("mode", ["task", "full"])
def test_resume_is_bit_identical(tiny_bert, pairs_file, tmp_path, mode):
    cfg = train_config(tiny_bert, pairs_file, mode, steps=10, every=3, grad_accum=2)
    whole = train(cfg, out=tmp_path / "whole", show_progress=False)
    assert whole.finished

    # a time-limited job: stop after 5 steps with a checkpoint, then resume to the end
    part = train(cfg, out=tmp_path / "parts", stop_after=5, show_progress=False)
    assert not part.finished and part.step == 5
    assert [p.name for p in list_checkpoints(tmp_path / "parts")] == ["step-00000003", "step-00000005"]
    with pytest.raises(ClirError, match="--resume"):
        train(cfg, out=tmp_path / "parts", show_progress=False)

    # a crash at step 8: the last checkpoint is step 6, so steps 7-8 are replayed
    def crash(step, loss):
        if step == 8:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated"):
        train(cfg, out=tmp_path / "parts", resume=True, on_step=crash, show_progress=False)
    assert list_checkpoints(tmp_path / "parts")[-1].name == "step-00000006"
    done = train(cfg, out=tmp_path / "parts", resume=True, show_progress=False)
    assert done.finished and done.step == 10

    a, b = weights_of(tmp_path / "whole"), weights_of(tmp_path / "parts")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log = [json.loads(x)["step"] for x in (tmp_path / "parts" / "train_log.jsonl").read_text().splitlines()]
    assert log == [5, 10]  # replayed steps are logged once


class _Payload:
    """Unpickling this creates ``path``: the proof that a loader ran code from a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_checkpoints_hold_no_pickle_and_a_crafted_one_never_runs(tiny_bert, pairs_file, tmp_path):
    cfg = train_config(tiny_bert, pairs_file, "task", steps=6, every=2)
    train(cfg, out=tmp_path / "r", stop_after=2, show_progress=False)
    (ckpt,) = list_checkpoints(tmp_path / "r")
    assert sorted(p.name for p in ckpt.iterdir()) == ["state.json", "tensors.safetensors"]
    json.loads((ckpt / "state.json").read_text())  # data only

    marker = tmp_path / "pwned"
    # an old-format (pickle) checkpoint, e.g. planted by someone else: refused by name, never unpickled
    legacy = tmp_path / "legacy" / "checkpoints" / "step-00000002"
    legacy.mkdir(parents=True)
    torch.save(_Payload(marker), legacy / "state.pt")  # torch.load(weights_only=False) would run it
    with pytest.raises(ClirError, match=r"state\.pt is a checkpoint in the old pickle format"):
        train(cfg, out=tmp_path / "legacy", resume=True, show_progress=False)
    # the payload in place of the new files: they are parsed as JSON / safetensors, which cannot run code
    torch.save(_Payload(marker), ckpt / "tensors.safetensors")
    with pytest.raises(ClirError, match=r"tensors\.safetensors is unreadable"):
        train(cfg, out=tmp_path / "r", resume=True, show_progress=False)
    assert not marker.exists()


def test_damaged_checkpoint_is_named(tiny_bert, pairs_file, tmp_path):
    cfg = train_config(tiny_bert, pairs_file, "task", steps=6, every=2)
    train(cfg, out=tmp_path / "r", stop_after=4, show_progress=False)
    last = list_checkpoints(tmp_path / "r")[-1]
    state = last / "state.json"
    good = state.read_text()
    state.write_text(good[: len(good) // 2])  # a torn write
    with pytest.raises(ClirError, match=rf"checkpoint {last}/state\.json is unreadable"):
        train(cfg, out=tmp_path / "r", resume=True, show_progress=False)
    state.write_text(json.dumps({**json.loads(good), "step": "many"}))
    with pytest.raises(ClirError, match=rf"checkpoint {last} does not fit this run"):
        train(cfg, out=tmp_path / "r", resume=True, show_progress=False)
    # as the message says: without the damaged step the run resumes from the one before
    import shutil

    shutil.rmtree(last)
    assert train(cfg, out=tmp_path / "r", resume=True, show_progress=False).finished


def test_resume_refuses_a_different_config(tiny_bert, pairs_file, tmp_path):
    cfg = train_config(tiny_bert, pairs_file, "task", steps=6, every=2)
    train(cfg, out=tmp_path / "r", stop_after=2, show_progress=False)
    other = train_config(tiny_bert, pairs_file, "task", steps=6, every=2, seed=7)
    with pytest.raises(ClirError, match="optim.seed"):
        train(other, out=tmp_path / "r", resume=True, show_progress=False)


def test_output_folder_guards(tiny_bert, pairs_file, tmp_path):
    cfg = train_config(tiny_bert, pairs_file, "task", steps=2)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ClirError, match="other content"):
        train(cfg, out=tmp_path / "busy", show_progress=False)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    train(cfg, out=tmp_path / "m", show_progress=False)
    with pytest.raises(ClirError, match="--overwrite"):
        train(cfg, out=tmp_path / "m", show_progress=False)
    train(cfg, out=tmp_path / "m", overwrite=True, show_progress=False)
    assert (tmp_path / "m" / "clir_model.yaml").is_file()


# ---------------------------------------------------------------------- streamed triples
def test_triples_are_streamed_not_read_whole(tmp_path):
    big = tmp_path / "big.jsonl"
    filler = "lorem ipsum dolor sit amet " * 10
    with open(big, "w", encoding="utf-8") as f:
        for i in range(100_000):  # ~30 MB
            f.write(
                json.dumps({"query": f"q{i}", "positive": f"p{i} {filler}", "negative": f"n{i} {filler}"})
                + "\n"
            )
    assert big.stat().st_size > 25_000_000
    stream = TripleStream(open_triples(big), shuffle_block=256, seed=1)
    tracemalloc.start()
    it = iter(stream)
    got = [next(it) for _ in range(1024)]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 3_000_000, peak  # one block in memory, not the file
    assert {int(e.query[1:]) for e in got} == set(range(1024))  # 4 blocks, each shuffled within itself
    assert [e.query for e in got[:256]] != [f"q{i}" for i in range(256)]

    # resuming from a position replays exactly what an uninterrupted stream yields
    again = TripleStream(open_triples(big), shuffle_block=256, seed=1, epoch=0, index=600)
    it2 = iter(again)
    assert [next(it2).query for _ in range(424)] == [e.query for e in got[600:]]


def test_stream_epochs_and_multi_positive_records(tmp_path):
    path = tmp_path / "t.jsonl"
    rows = [
        {"query": "a", "positives": ["a1", "a2"], "negatives": ["x", "y", "z"]},
        {"query": "b", "positive": "b1", "negative": "w"},
        {"query": "c", "positive": "c1"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    stream = TripleStream(JsonlTriples(path), negatives=2, shuffle_block=2, seed=3)
    it = iter(stream)
    first = [next(it) for _ in range(7)]
    assert stream.state() == {"epoch": 2, "index": 1}
    a = next(e for e in first if e.query == "a")
    assert a.positive in ("a1", "a2") and len(a.negatives) == 2 and a.positives == ["a1", "a2"]
    assert next(e for e in first if e.query == "c").negatives == []
    resumed = TripleStream(JsonlTriples(path), negatives=2, shuffle_block=2, seed=3, epoch=1, index=2)
    r = iter(resumed)
    assert [(e.query, e.positive, e.negatives) for e in (next(r) for _ in range(2))] == [
        (e.query, e.positive, e.negatives) for e in first[5:7]
    ]


@pytest.mark.parametrize(
    "line, msg",
    [
        ("{not json", "malformed JSON"),
        ('{"positive": "p"}', "query"),
        ('{"query": "q", "negative": "n"}', "positive"),
        ('{"query": "q", "positives": "p"}', "list of strings"),
    ],
)
def test_bad_triples_name_the_line(tmp_path, line, msg):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"query": "q", "positive": "p"}\n' + line + "\n")
    with pytest.raises(ClirError, match=msg) as e:
        list(JsonlTriples(path).records())
    assert "bad.jsonl:2" in str(e.value)


# ---------------------------------------------------------------------- configs, dry run
def test_shipped_configs_validate_and_dry_run_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIR_E5_SMALL", str(tmp_path / "no-such-e5"))
    for name in ("mbert-full-msmarco", "mbert-task-msmarco", "mbert-madx-msmarco", "e5-small-task-wikiqa"):
        cfg = load_train_config(REPO / "configs" / "train" / f"{name}.yaml")
        assert cfg.out
    full = load_train_config(REPO / "configs/train/mbert-full-msmarco.yaml")
    task = load_train_config(REPO / "configs/train/mbert-task-msmarco.yaml")
    assert (full.lr, task.lr) == (2e-5, 1e-4)
    env = dict(os.environ, HF_HUB_OFFLINE="1", IR_DATASETS_HOME=str(tmp_path / "irds"))
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "clir",
            "train",
            "--config",
            "configs/train/mbert-madx-msmarco.yaml",
            "--dry-run",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert "AdapterHub/bert-base-multilingual-cased-en-wiki_pfeiffer" in res.stdout
    assert "small.triples.qidpid.tsv" in res.stdout  # the ir_datasets file it would fetch


def test_dry_run_reports_local_problems(tiny_bert, tmp_path, capsys):
    from clir.cli.main import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"model: {{backbone: {tiny_bert}, adapter_mode: task}}\n"
        f"data: {{triples: {tmp_path}/missing.jsonl}}\n"
        f"out: {tmp_path}/out\n"
    )
    assert main(["train", "--config", str(cfg), "--dry-run"]) == 1
    captured = capsys.readouterr()
    assert "missing.jsonl does not exist" in captured.err
    assert "local folder" in captured.out
    assert not (tmp_path / "out").exists()
    cfg.write_text("model: {adapter_mode: task}\ndata: {triples: x.jsonl}\noptim: {batch_sise: 3}\n")
    assert main(["train", "--config", str(cfg), "--dry-run"]) == 1
    assert "batch_sise" in capsys.readouterr().err


# ---------------------------------------------------------------------- language adapters
def test_language_adapter_mlm_loads_and_routes(tiny_bert, tiny_collection, tmp_path):
    from clir.model.encoder import DualEncoder, load_encoder
    from clir.train.head_training import MlmHeadArgs, train_mlm_head

    # the tiny BERT has no MLM head: the shared one is trained first
    head = tmp_path / "head"
    train_mlm_head(
        MlmHeadArgs(texts=[f"de={tiny_collection}"], backbone=str(tiny_bert), out=str(head), max_steps=5),
        show_progress=False,
    )
    res = train_language_adapter(
        LanguageAdapterArgs(
            lang="de",
            text=str(tiny_collection),
            backbone=str(tiny_bert),
            head=str(head),
            out=str(tmp_path / "adapters" / "de"),  # a parent that does not exist yet is made
            max_steps=40,
            batch_size=8,
            lr=3e-3,
            log_every=10,
        ),
        show_progress=False,
    )
    assert res.last_loss < res.first_loss
    folder = tmp_path / "adapters" / "de"
    assert res.out == folder and not (tmp_path / "adapters" / "de.partial").exists()
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["config"]["inv_adapter"] == "nice" and cfg["config"]["reduction_factor"] == 2
    assert not (folder / "pytorch_model_head.bin").exists()

    # a madx model takes the folder as the German language source; target routing swaps it in for documents
    base = dict(
        backbone=str(tiny_bert),
        adapter_mode="madx",
        pooling="mean",
        language_adapters={"en": "new", "de": str(folder)},
    )
    torch.manual_seed(0)
    target = DualEncoder(ModelConfig(**base, routing=Routing(query="source", doc="target")))  # type: ignore[arg-type]
    target.load_language_adapter("de")
    trained = {n: p for n, p in target.query_model.named_parameters() if ".de." in n}
    assert any("invertible_adapters.de" in n for n in trained)
    saved = torch.load(next(folder.glob("*.bin")), map_location="cpu")
    loaded_values = {n.split(".", 1)[1] if n.startswith("bert.") else n: v for n, v in saved.items()}
    for n, p in trained.items():
        assert torch.equal(p.detach().cpu(), loaded_values[n]), n  # layer names match the encoder's model

    docs = list(DE)
    with_de = target.encode_passages(docs, lang="de")
    with_en = target.encode_passages(docs, lang="en")  # target routing with English -> the en adapter
    assert not torch.allclose(torch.from_numpy(with_de), torch.from_numpy(with_en), atol=1e-4)
    torch.manual_seed(0)
    source = DualEncoder(ModelConfig(**base))  # type: ignore[arg-type]
    assert torch.allclose(
        torch.from_numpy(source.encode_passages(docs, lang="de")), torch.from_numpy(with_en), atol=1e-5
    )

    # and through a model folder: the adapter is copied in, the folder stands alone
    target.save(tmp_path / "madx")
    again = load_encoder(tmp_path / "madx")
    assert (tmp_path / "madx" / "adapters" / "lang_de" / "adapter_config.json").is_file()
    # its metadata goes with the copy, so the copy's head is checked like the original's
    copied = json.loads(
        (tmp_path / "madx" / "adapters" / "lang_de" / "clir_language_adapter.json").read_text()
    )
    assert copied["head_sha256"] == res.head_sha256
    assert torch.allclose(
        torch.from_numpy(again.encode_passages(docs, lang="de")), torch.from_numpy(with_de), atol=1e-5
    )


def test_language_adapter_cli_errors(tiny_bert, tmp_path, capsys):
    from clir.cli.main import main

    rc = main(
        [
            "train-language-adapter",
            "--lang",
            "de",
            "--text",
            str(tmp_path / "nope.txt"),
            "--backbone",
            str(tiny_bert),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 1
    assert "nope.txt" in capsys.readouterr().err


@pytest.mark.shared
def test_e5_wikiqa_config_is_all_local(e5_small, raw_irds_home, monkeypatch):
    """The WikiQA triples come from irds:clir/wikiqa/train-triples (upstream files under IR_DATASETS_HOME)."""
    from clir.train import training_plan

    monkeypatch.setenv("CLIR_E5_SMALL", str(e5_small))
    cfg = load_train_config(REPO / "configs/train/e5-small-task-wikiqa.yaml")
    assert (cfg.model.pooling, cfg.model.normalize, cfg.model.query_prefix) == ("mean", True, "query: ")
    plan = training_plan(cfg, out=None)
    assert plan.problems == [] and plan.downloads == []
    first = next(iter(TripleStream(open_triples(cfg.data.triples), shuffle_block=0)))
    assert first.query and first.positive and len(first.negatives) == 1


def test_run_folder_is_locked_and_a_killed_final_swap_is_undone(tiny_bert, pairs_file, tmp_path):
    """``clir train`` holds OUT.lock for the whole run (clir/workdir.py), and a run killed between the final
    swap's two renames (no OUT, the run folder as OUT.old) is restored, so --resume continues it."""
    import shutil

    from clir.workdir import WorkDir, WorkDirBusy

    cfg = train_config(tiny_bert, pairs_file, "task", steps=4, every=2)
    held = WorkDir(tmp_path / "r")
    held.lock()
    with pytest.raises(WorkDirBusy, match="another training run is writing"):
        train(cfg, out=tmp_path / "r", show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.lock"]
    held.unlock()

    part = train(cfg, out=tmp_path / "r", stop_after=2, show_progress=False)
    assert not part.finished and not (tmp_path / "r.lock").exists()
    shutil.move(tmp_path / "r", tmp_path / "r.old")  # what a kill after the swap's first rename leaves
    done = train(cfg, out=tmp_path / "r", resume=True, show_progress=False)
    assert done.finished and done.step == 4 and (tmp_path / "r" / "clir_model.yaml").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]
    log = [json.loads(x)["step"] for x in (tmp_path / "r" / "train_log.jsonl").read_text().splitlines()]
    assert log == [2, 4]  # resumed from the restored checkpoint at step 2, not started over
