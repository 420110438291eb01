from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    from clir.testing import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_collection(tmp_path_factory) -> Path:
    from clir.testing import write_tiny_collection

    return write_tiny_collection(tmp_path_factory.mktemp("tiny-coll"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "data").is_dir():
        pytest.skip("../shared is absent (real data and encoder are only on developer/CI machines)")
    return SHARED


@pytest.fixture(scope="session")
def e5_small(shared_dir, tmp_path_factory) -> Path:
    """The real multilingual-e5-small folder built by ../shared's provisioning tool (cached per user)."""
    from clir.testing import provision_e5_small

    cached = Path(__file__).resolve().parents[1] / ".cache" / "multilingual-e5-small-q4"
    why = provision_e5_small(shared_dir, cached)
    if why is not None:
        pytest.skip(f"could not provision multilingual-e5-small: {why}")
    return cached


@pytest.fixture
def raw_irds_home(shared_dir, tmp_path, monkeypatch) -> Path:
    """A temporary IR_DATASETS_HOME holding ../shared/data/raw's upstream files where clir's ir_datasets
    datasets look for their downloads (``clir/lareqa/...``, ``clir/laser/...``, ``clir/ud/...``,
    ``clir/castorini-data/...``), linked, not copied."""
    home = tmp_path / "irds-home"
    (home / "clir").mkdir(parents=True)
    for upstream in ("lareqa", "laser", "ud", "castorini-data"):
        (home / "clir" / upstream).symlink_to(shared_dir / "data/raw" / upstream, target_is_directory=True)
    monkeypatch.setenv("IR_DATASETS_HOME", str(home))
    return home


@pytest.fixture
def one_torch_thread():
    """Tiny models train fastest, and reproducibly, on one thread, even on a busy machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_head(tiny_bert, tmp_path_factory):
    """``tiny_head(dev_fraction)``: a shared MLM head for the tiny BERT (which has none), trained for a few
    steps on the tiny corpus, holding out the dev slice the adapters of a test will use."""
    from clir.testing import corpus_lines
    from clir.train.head_training import MlmHeadArgs, train_mlm_head
    from clir.train.mlm import DevSettings

    heads: dict[float, Path] = {}

    def make(dev_fraction: float = 0.05) -> Path:
        if dev_fraction not in heads:
            root = tmp_path_factory.mktemp("tiny-head")
            text = root / "corpus.txt"
            text.write_text("\n".join(corpus_lines()) + "\n", encoding="utf-8")
            train_mlm_head(
                MlmHeadArgs(
                    texts=[f"mul={text}"],
                    backbone=str(tiny_bert),
                    out=str(root / "head"),
                    max_steps=3,
                    batch_size=4,
                    dev=DevSettings(fraction=dev_fraction),
                    threads=1,
                ),
                show_progress=False,
            )
            heads[dev_fraction] = root / "head"
        return heads[dev_fraction]

    return make
