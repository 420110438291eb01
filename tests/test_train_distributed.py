"""`clir train` at scale on a tiny random BERT: keyed dropout, packed training against padded, GradCache
against the plain step, and data-parallel runs (2 gloo processes on the CPU) against one process at the
double batch, rank-0-only writes, exact resume, and a rank killed mid-run."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clir.config import (
    AdapterArch,
    CheckpointConfig,
    DataConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)
from clir.errors import ClirError
from clir.testing import _LINES
from clir.train import list_checkpoints, train
from clir.train.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
EN, DE = _LINES["en"], _LINES["de"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def triples(tmp_path_factory) -> Path:
    """English line i -> its German translation (a wrong one as hard negative), 24 records with repeats of
    a positive (the false-negative mask matters), one without a negative (uneven shares per rank)."""
    path = tmp_path_factory.mktemp("triples") / "pairs.jsonl"
    n = len(DE)
    with open(path, "w", encoding="utf-8") as f:
        for r in range(3):
            for i in range(n):
                rec = {"query": f"{EN[i]} {r}", "positive": DE[i], "negative": DE[(i + 1) % n]}
                if r == 1 and i == 2:
                    del rec["negative"]
                f.write(json.dumps(rec) + "\n")
    return path


def config(tiny_bert: Path, triples: Path, *, batch: int, steps: int = 6, **optim) -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(
            backbone=str(tiny_bert),
            adapter_mode=optim.pop("mode", "task"),
            pooling="mean",
            normalize=True,
            task_adapter=AdapterArch(reduction_factor=2),
        ),
        data=DataConfig(triples=str(triples), shuffle_block=5),
        optim=OptimConfig(
            **{
                "batch_size": batch,
                "max_steps": steps,
                "lr": 1e-2,
                "warmup_steps": 0,
                "temperature": 0.05,
                "precision": "fp32",
                **optim,
            }
        ),
        checkpoint=CheckpointConfig(every=2, keep=3),
        log_every=1,
    )


def adapter_weights(folder: Path) -> dict[str, torch.Tensor]:
    (f,) = (folder / "adapters" / "task").glob("*.bin")
    return torch.load(f, map_location="cpu")


def record_grads(sink: list):
    """Wrap ``Optimisation.step`` so that each step's (averaged) gradients are appended to ``sink``;
    returns the function that undoes it."""
    from clir.train.optim import Optimisation

    original = Optimisation.step

    def step(self, max_grad_norm):
        sink.append(torch.cat([p.grad.flatten().clone() for p in self.params]))
        return original(self, max_grad_norm)

    Optimisation.step = step  # type: ignore[method-assign]
    return lambda: setattr(Optimisation, "step", original)


# ---------------------------------------------------------------------- keyed dropout
def test_keyed_dropout_hash_matches_its_reference_and_drops_p():
    from clir.train.dropout import keep_mask, keep_threshold, mix32, mix32_reference

    values = [0, 1, 7, 2**31 - 1, 2**31, 2**32 - 1, 123456789, 3_000_000_000]
    signed = torch.tensor([v - 2**32 if v >= 2**31 else v for v in values], dtype=torch.int32)
    assert [v % 2**32 for v in mix32(signed).tolist()] == [mix32_reference(v) for v in values]
    assert keep_threshold(0.0) == -(2**31)
    index = torch.arange(200_000, dtype=torch.int32)
    kept = keep_mask(index, torch.tensor(12345, dtype=torch.int32), torch.tensor(-77, dtype=torch.int32), 0.1)
    assert abs(kept.float().mean().item() - 0.9) < 0.005


def _stepper(tiny_bert, triples, **optim):
    from clir.model.encoder import DualEncoder
    from clir.train.contrastive import ContrastiveStep
    from clir.train.distributed import Dist
    from clir.train.optim import Optimisation

    cfg = config(tiny_bert, triples, batch=4, **optim)
    torch.manual_seed(0)
    enc = DualEncoder(cfg.model)
    opt = Optimisation.build(cfg, enc)
    return cfg, enc, opt, ContrastiveStep(cfg, enc, opt, Dist())


@pytest.mark.parametrize("mode", ["task", "full"])
def test_packed_training_equals_padded_with_dropout_on(tiny_bert, triples, mode):
    from clir.train.contrastive import TrainText

    cfg, enc, opt, step = _stepper(tiny_bert, triples, mode=mode)
    assert enc.query_model.training and enc.query_model.config.hidden_dropout_prob > 0
    texts = [TrainText("query", q, 100 + i) for i, q in enumerate(EN[:5])]
    texts += [TrainText("passage", p, 200 + i) for i, p in enumerate(DE)]
    grads = {}
    for packing in (True, False):
        cfg.optim.packing = packing
        opt.optimizer.zero_grad(set_to_none=True)
        vecs = step.encode(texts)
        (vecs[:5] @ vecs[5:].T).square().sum().backward()
        grads[packing] = (vecs.detach(), torch.cat([p.grad.flatten() for p in opt.params]))
    assert enc.packs("query")
    torch.testing.assert_close(grads[True][0], grads[False][0], atol=1e-6, rtol=0)
    torch.testing.assert_close(grads[True][1], grads[False][1], atol=1e-5, rtol=1e-5)
    # the masks belong to the texts: another key, other masks; a reordered batch, the same vectors
    other = step.encode([dataclasses.replace(t, key=t.key + 1) for t in texts]).detach()
    assert (other - grads[True][0]).abs().max() > 1e-3
    again = step.encode(texts[::-1]).detach().flip(0)
    torch.testing.assert_close(again, grads[True][0], atol=1e-6, rtol=0)


def test_grad_cache_equals_the_uncached_step(tiny_bert, triples):
    from clir.data.triples import TripleStream, open_triples

    stream = iter(TripleStream(open_triples(triples), negatives=1, shuffle_block=5, seed=1))
    batches = [[next(stream) for _ in range(8)] for _ in range(2)]  # grad_accum 2 of 8 triples
    out = {}
    for cached in (False, True):
        cfg, enc, opt, step = _stepper(tiny_bert, triples, grad_cache=cached, grad_cache_chunk=5)
        losses, grads = [], []
        for s in range(3):
            losses.append(step.run(batches, s))
            grads.append(torch.cat([p.grad.flatten().clone() for p in opt.params]))
            opt.step(1.0)
        out[cached] = (losses, grads)
    for a, b in zip(out[False][0], out[True][0], strict=True):
        assert abs(a - b) < 1e-5
    for a, b in zip(out[False][1], out[True][1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------- two processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_env(rank: int, world: int, port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
    )


def _watch_writes(root: Path, sink: list[str]) -> None:
    """Record every write, rename or removal under ``root`` made by this process (audit hooks)."""
    prefix = str(root)
    writes = ("os.rename", "os.replace", "os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree", "os.unlink")

    def hook(event, args):
        if event == "open" and args and str(args[0]).startswith(prefix):
            mode, flags = args[1], args[2] if len(args) > 2 else 0
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                mode is None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            ):
                sink.append(f"{event} {args[0]}")
        elif event in writes and args and str(args[0]).startswith(prefix):
            sink.append(f"{event} {args[0]}")

    sys.addaudithook(hook)


def _ddp_worker(rank: int, world: int, port: int, tiny_bert: str, triples: str, root: str) -> None:
    """A rank of the 2-process runs: A (6 steps), P (stopped at 3, then resumed), Q (stopped at 3)."""
    import logging

    _rank_env(rank, world, port)
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    out = Path(root) / "runs"
    written: list[str] = []
    _watch_writes(out, written)
    cfg = config(Path(tiny_bert), Path(triples), batch=4)
    losses: list[float] = []
    grads: list[torch.Tensor] = []
    record_grads(grads)
    res = train(cfg, out=out / "A", on_step=lambda s, loss: losses.append(loss), show_progress=False)
    assert res.finished and res.rank == rank
    part = train(cfg, out=out / "P", stop_after=3, show_progress=False)
    assert not part.finished and part.checkpoint is not None and part.checkpoint.name == "step-00000003"
    assert train(cfg, out=out / "P", resume=True, show_progress=False).finished
    train(cfg, out=out / "Q", stop_after=3, show_progress=False)
    cached = dataclasses.replace(
        cfg, optim=dataclasses.replace(cfg.optim, grad_cache=True, grad_cache_chunk=5)
    )
    train(cached, out=out / "G", show_progress=False)
    local = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, cross_device_negatives=False))
    local_losses: list[float] = []
    train(local, out=out / "L", on_step=lambda s, loss: local_losses.append(loss), show_progress=False)
    losses += local_losses
    torch.save(
        {"losses": losses[:6], "local": losses[6:], "grads": grads[:6], "written": written},
        Path(root) / f"rank{rank}.pt",
    )


def test_two_processes_equal_one_at_double_batch(tiny_bert, triples, tmp_path):
    import torch.multiprocessing as mp

    port = _free_port()
    mp.spawn(
        _ddp_worker,
        args=(2, port, str(tiny_bert), str(triples), str(tmp_path)),
        nprocs=2,
        join=True,
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    runs = tmp_path / "runs"

    # one process at batch 8 (= 2 x 4), cross-device negatives on: the same losses, gradients, weights
    losses: list[float] = []
    grads: list[torch.Tensor] = []
    undo = record_grads(grads)
    single = config(tiny_bert, triples, batch=8)
    try:
        train(single, out=runs / "B", on_step=lambda s, loss: losses.append(loss), show_progress=False)
    finally:
        undo()
    assert len(losses) == 6
    for r in ranks:
        assert max(abs(a - b) for a, b in zip(r["losses"], losses, strict=True)) < 1e-5
        for a, b in zip(r["grads"], grads, strict=True):
            assert (a - b).abs().max() < 1e-5
    a, b = adapter_weights(runs / "A"), adapter_weights(runs / "B")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    assert any(a[k].abs().max() > 1e-3 for k in a)  # it trained

    # rank 0 wrote alone, and the output is what a single process writes
    assert ranks[0]["written"] and ranks[1]["written"] == []
    assert sorted(p.name for p in (runs / "A").iterdir()) == sorted(p.name for p in (runs / "B").iterdir())
    log = [json.loads(x) for x in (runs / "A" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]

    # GradCache under DDP (chunks of 5 texts, gradients exchanged once) trains the same weights
    g = adapter_weights(runs / "G")
    assert max((a[k] - g[k]).abs().max().item() for k in a) < 1e-4
    # local negatives: each rank's loss over its own share, averaged for the log (the same on both ranks)
    assert ranks[0]["local"] == ranks[1]["local"] and ranks[0]["local"][0] != ranks[0]["losses"][0]

    # resumed on the same world size: byte for byte the uninterrupted run (model cards name their folder)
    for f in (runs / "A").rglob("*"):
        if f.is_file() and f.name not in ("train_log.jsonl", "train_config.yaml", "README.md"):
            assert f.read_bytes() == (runs / "P" / f.relative_to(runs / "A")).read_bytes(), f

    # resumed on another world size: the same global batch continues (within float tolerance) ...
    with pytest.raises(ClirError, match="--batch-size 8"):
        train(config(tiny_bert, triples, batch=4), out=runs / "Q", resume=True, show_progress=False)
    assert train(single, out=runs / "Q", resume=True, show_progress=False).finished
    q = adapter_weights(runs / "Q")
    assert max((a[k] - q[k]).abs().max().item() for k in a) < 1e-4


def test_resume_on_another_world_size_keeps_the_global_batch(tiny_bert, triples, tmp_path):
    from clir.config import to_dict
    from clir.train.run_folder import check_same_run

    saved = to_dict(config(tiny_bert, triples, batch=4))  # written by 2 processes x 4

    def resume(world: int, batch: int, **optim) -> None:
        cfg = config(tiny_bert, triples, batch=batch, **optim)
        check_same_run(saved, cfg, tmp_path, saved_world=2, world=world)

    resume(2, 4)
    resume(1, 8)  # cross-device negatives: the same global batches, the same loss
    resume(4, 2)
    with pytest.raises(ClirError, match="--batch-size 8 on 1"):
        resume(1, 4)
    with pytest.raises(ClirError, match="--batch-size 1 on 8"):
        resume(8, 4)
    with pytest.raises(ClirError, match="global batch of 2 process"):
        resume(3, 4)
    saved["optim"]["cross_device_negatives"] = False
    resume(2, 4, cross_device_negatives=False)
    with pytest.raises(ClirError, match="local negatives"):
        resume(1, 8, cross_device_negatives=False)
    # a config written before a setting existed matches that setting's default
    del saved["optim"]["grad_cache"], saved["optim"]["cross_device_negatives"]
    resume(2, 4)


def test_thread_rule_and_shares(monkeypatch):
    from clir.train import distributed
    from clir.train.distributed import Dist, thread_count

    monkeypatch.setattr(distributed, "usable_cores", lambda: 2)
    assert thread_count(None, Dist()) is None  # a lone process: torch's default
    assert thread_count(None, Dist(rank=1, world=2, local_rank=1, local_world=2)) == 1
    assert thread_count(None, Dist(rank=3, world=4, local_rank=3, local_world=4)) == 1
    assert thread_count(3, Dist(rank=1, world=2, local_rank=1, local_world=2)) == 3  # optim.threads wins
    monkeypatch.setattr(distributed, "usable_cores", lambda: 16)
    assert thread_count(None, Dist(rank=9, world=16, local_rank=1, local_world=8)) == 2
    assert Dist(rank=1, world=2).share(list(range(8))) == [4, 5, 6, 7]
    stream = iter(range(100))
    assert Dist(rank=1, world=2).take(stream, 3) == [3, 4, 5] and next(stream) == 6
    with pytest.raises(ValueError):
        Dist(rank=0, world=3).share(list(range(8)))


# ---------------------------------------------------------------------- a rank killed
_KILL_SCRIPT = """
import json, os, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from clir.config import load_train_config
from clir.train import train
cfg = load_train_config({cfg!r})
out = Path({out!r})
def on_step(step, loss):
    (out.parent / f"pid{{os.environ['RANK']}}").write_text(str(os.getpid()))
    time.sleep(0.1)
train(cfg, out=out, resume=True, on_step=on_step, show_progress=False)
"""


def test_a_killed_rank_leaves_no_half_written_output(tiny_bert, triples, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"model: {{backbone: {tiny_bert}, adapter_mode: task, pooling: mean, normalize: true}}\n"
        f"data: {{triples: {triples}, shuffle_block: 5}}\n"
        "optim: {batch_size: 4, max_steps: 80, lr: 0.01, warmup_steps: 0, precision: fp32}\n"
        "checkpoint: {every: 1, keep: 2}\nlog_every: 1\n"
    )
    out = tmp_path / "run" / "m"
    script = tmp_path / "job.py"
    script.write_text(_KILL_SCRIPT.format(repo=str(REPO), cfg=str(cfg), out=str(out)))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        pid0 = tmp_path / "run" / "pid0"
        while time.monotonic() < deadline and not (pid0.is_file() and len(list_checkpoints(out)) >= 2):
            time.sleep(0.2)
        assert pid0.is_file(), proc.stderr.read() if proc.poll() is not None else "no step in 90 s"
        time.sleep(0.37)  # somewhere in a step or a checkpoint write
        os.kill(int(pid0.read_text()), signal.SIGKILL)  # rank 0: the writer
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    # no model folder, no half a checkpoint among the complete ones; each of those loads
    assert not (out / "clir_model.yaml").exists() and not out.with_name("m.final").exists()
    ckpts = list_checkpoints(out)
    assert ckpts
    for c in ckpts:
        assert load_checkpoint(c)["step"] == int(c.name[5:])
    # and the run resumes from the last of them, in one process at the same global batch
    from clir.config import load_train_config

    single = load_train_config(cfg)
    single = dataclasses.replace(single, optim=dataclasses.replace(single.optim, batch_size=8))
    res = train(single, out=out, resume=True, show_progress=False)
    assert res.finished and res.step == single.optim.max_steps
    assert (out / "clir_model.yaml").is_file() and not (out / "checkpoints").exists()
