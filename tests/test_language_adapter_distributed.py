"""`clir train-language-adapter` data parallel on a tiny random BERT: 2 gloo processes at batch b against one
process at batch 2b (the same losses, gradients and adapter weights), rank 0 alone writing, a resume on
another world size at the same global batch, and keyed dropout in packed and padded MLM batches."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch

from clir.errors import ClirError
from clir.testing import _LINES
from clir.train import mlm
from clir.train.language_adapter import INFO_FILE, LanguageAdapterArgs, train_language_adapter

LINES = [f"{s} ({i})" for i in range(12) for s in _LINES["de"]]
DEV = mlm.DevSettings(fraction=0.2, seed=0, limit=500)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mono") / "de.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def head(tiny_head) -> Path:
    return tiny_head(DEV.fraction)  # holds out the slice the adapters here are scored on


def args(tiny_bert, text, head, out, *, batch: int, **kw) -> LanguageAdapterArgs:
    base = dict(
        lang="de",
        text=str(text),
        backbone=str(tiny_bert),
        head=str(head),
        out=str(out),
        max_steps=6,
        batch_size=batch,
        lr=3e-3,
        dev=DEV,
        checkpoint_every=3,
        log_every=1,
        precision="fp32",
    )
    return LanguageAdapterArgs(**{**base, **kw})


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "pytorch_adapter.bin", map_location="cpu", weights_only=True)


def record_grads(sink: list):
    """Record the gradients each optimiser step clips (after the exchange between ranks)."""
    real = torch.nn.utils.clip_grad_norm_

    def clip(params, max_norm):
        params = list(params)
        sink.append(torch.cat([p.grad.flatten().clone() for p in params]))
        return real(params, max_norm)

    torch.nn.utils.clip_grad_norm_ = clip
    return lambda: setattr(torch.nn.utils, "clip_grad_norm_", real)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, tiny_bert: str, text: str, head: str, root: str) -> None:
    """A rank of the 2-process runs: A (6 steps, batch 4 each), P (stopped by a crash at step 4)."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE="2",
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE="2",
    )
    torch.set_num_threads(1)
    runs = Path(root) / "runs"
    written: list[str] = []

    def hook(event, a):  # every file this rank opens for writing under runs/
        if event == "open" and a and str(a[0]).startswith(str(runs)) and isinstance(a[1], str):
            if any(c in a[1] for c in "wax+"):
                written.append(str(a[0]))
        elif event in ("os.rename", "os.replace", "os.mkdir") and a and str(a[0]).startswith(str(runs)):
            written.append(str(a[0]))

    sys.addaudithook(hook)
    grads: list[torch.Tensor] = []
    undo = record_grads(grads)
    res = train_language_adapter(args(Path(tiny_bert), text, head, runs / "A", batch=4), show_progress=False)
    undo()
    assert res.rank == rank
    torch.save({"grads": grads, "written": written}, Path(root) / f"rank{rank}.pt")


def test_two_processes_equal_one_at_double_batch(tiny_bert, text, head, tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(
        _worker, args=(_free_port(), str(tiny_bert), str(text), str(head), str(tmp_path)), nprocs=2, join=True
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    runs = tmp_path / "runs"
    grads: list[torch.Tensor] = []
    undo = record_grads(grads)
    try:
        train_language_adapter(args(tiny_bert, text, head, runs / "B", batch=8), show_progress=False)
    finally:
        undo()
    assert len(grads) == 6
    for r in ranks:  # both ranks apply the exchanged gradients: those of one process at batch 8
        for a, b in zip(r["grads"], grads, strict=True):
            assert (a - b).abs().max() < 1e-5
    a, b = weights(runs / "A"), weights(runs / "B")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    assert any(a[k].abs().max() > 1e-3 for k in a)  # it trained
    info_a = json.loads((runs / "A" / INFO_FILE).read_text())
    info_b = json.loads((runs / "B" / INFO_FILE).read_text())
    assert [x["loss"] for x in info_a["loss"]] == pytest.approx([x["loss"] for x in info_b["loss"]], abs=1e-5)
    assert info_a["dev_loss"] == pytest.approx(info_b["dev_loss"], abs=1e-5)
    assert (info_a["batch_size"], info_a["processes"], info_b["processes"]) == (8, 2, 1)
    assert ranks[0]["written"] and ranks[1]["written"] == []  # rank 0 wrote alone
    assert sorted(p.name for p in (runs / "A").iterdir()) == sorted(p.name for p in (runs / "B").iterdir())


def test_a_resume_needs_the_same_global_batch(tiny_bert, text, head, tmp_path):
    """The record a resumed run checks holds the global batch: 2 x 4 resumes as 1 x 8, not as 1 x 4."""
    from clir.train.language_adapter import _run_record

    two = _run_record(args(tiny_bert, text, head, tmp_path / "o", batch=4), "bb", world=2)
    assert _run_record(args(tiny_bert, text, head, tmp_path / "o", batch=8), "bb", world=1) == two
    assert _run_record(args(tiny_bert, text, head, tmp_path / "o", batch=4), "bb", world=1) != two
    work = tmp_path / "o.partial"
    mlm.prepare_work(tmp_path / "o", two, resume=False, overwrite=False)
    (work / "adapter" / "checkpoints" / "step-00000003").mkdir(parents=True)
    one = _run_record(args(tiny_bert, text, head, tmp_path / "o", batch=4), "bb", world=1)
    with pytest.raises(ClirError, match="other settings"):
        mlm.prepare_work(tmp_path / "o", one, resume=True, overwrite=False)
    assert mlm.prepare_work(tmp_path / "o", two, resume=True, overwrite=False) == work


@pytest.mark.parametrize("packed", [True, False])
def test_keyed_dropout_masks_follow_the_text_not_its_batch(tiny_bert, head, packed):
    """A text's MLM loss under keyed dropout is the same alone or in a batch (dropout on), and differs under
    another key: what makes a share of a global batch train like the whole."""
    from clir.train.mlm_head import head_module, load_mlm

    tokenizer = mlm.load_tokenizer(str(tiny_bert))
    model, _ = load_mlm(str(tiny_bert), str(head))
    model.train()
    assert model.config.hidden_dropout_prob > 0
    enc = mlm.tokenize(tokenizer, LINES[:5], 32)
    ids, labels = mlm.mask_tokens(enc, tokenizer, 0.3, torch.Generator().manual_seed(0))
    mask = enc["attention_mask"]

    def loss(rows: list[int], keys: list[int]) -> float:
        width = int(mask[rows].sum(1).max())
        s, n = mlm.masked_loss(
            model,
            head_module(model),
            ids[rows, :width],
            mask[rows, :width],
            labels[rows, :width],
            packed=packed,
            keys=keys,
        )
        return float(s)

    whole = loss([0, 1, 2, 3, 4], [10, 11, 12, 13, 14])
    parts = sum(loss([i], [10 + i]) for i in range(5))
    assert whole == pytest.approx(parts, rel=1e-5)
    assert loss([0], [10]) == loss([0], [10]) != loss([0], [99])


def test_the_head_trainer_refuses_torchrun(tiny_bert, text, tmp_path, monkeypatch, capsys):
    from clir.cli.main import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    argv = [
        "train-mlm-head",
        "--backbone",
        str(tiny_bert),
        "--text",
        f"de={text}",
        "--out",
        str(tmp_path / "h"),
    ]
    assert main(argv) == 1
    assert "runs in one process" in capsys.readouterr().err
    assert not (tmp_path / "h").exists()
