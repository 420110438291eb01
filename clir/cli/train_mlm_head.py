"""``clir train-mlm-head``: the one MLM head every language adapter of a headless backbone trains against."""

from __future__ import annotations

import argparse
import json

from clir.config.build_flags import MLM_HEAD_FLAGS, mlm_head_request
from clir.config.flags import add_flags
from clir.config.mlm import MlmHeadRequest

HELP = "train the shared MLM head of a backbone that ships without one (for its language adapters)"
DESCRIPTION = """Train the one masked-LM head that every language adapter of a backbone will share, frozen (MAD-X
trains all language adapters against the same pretrained head: that common anchor is what makes them
interchangeable under one task adapter). Needed only for a backbone without a pretrained head, such as
multilingual-e5-small: the backbone stays frozen, no adapter is added, and the head (transform, LayerNorm,
output bias; the decoder is tied to the word embeddings) learns on the pooled text of every language, one
text of each in turn. Each language's dev slice is held out by the rule the adapters use (keep the same
--dev-* settings for both), and the folder's clir_mlm_head.json records head_sha256 and each language's dev
loss beside a unigram table's.

  clir train-mlm-head --backbone multilingual-e5-small --out heads/e5 \\
      --text en=mono/en.txt --text de=mono/de.txt --text ru=mono/ru.txt --text zh=mono/zh.txt --text fa=mono/fa.txt
  clir train-language-adapter --lang de --text mono/de.txt --backbone multilingual-e5-small --head heads/e5 ..."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_flags(p, MLM_HEAD_FLAGS)


def request(args: argparse.Namespace) -> MlmHeadRequest:
    from clir.model.checks import torch_device

    req = mlm_head_request(args)
    torch_device(req.device)  # refused before any work
    return req


def run(args: argparse.Namespace) -> int:
    import os

    from clir.errors import ClirError
    from clir.train.head_training import train_mlm_head

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # N copies would race to write one folder
        raise ClirError("clir train-mlm-head runs in one process: start it without torchrun")
    info = train_mlm_head(request(args))
    print(json.dumps({k: info[k] for k in ("head_sha256", "steps", "seconds", "languages")}))
    return 0
