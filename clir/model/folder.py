"""A clir model folder on disk: ``clir_model.yaml`` (the settings) beside the weights, which are the
backbone (``backbone/``, or ``query/`` + ``passage/`` + ``tokenizer/`` when untied) in ``full`` mode and
``adapters/<name>`` (task adapters, ``lang_<lang>`` language adapters) otherwise. Where each part loads from,
how a backbone or tokenizer is loaded, and how an encoder is written back."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clir.atomic import swap_into_place
from clir.config import ModelConfig, to_dict
from clir.errors import ClirError
from clir.model.adapters import LANGUAGE_ADAPTER_INFO, name_backbone, task_adapter_names
from clir.model.card import write_model_folder_cards
from clir.model.protocol import Encoder
from clir.model.resolve import MODEL_FILE, local_path


@dataclass
class WeightSources:
    """Where the tokenizer and the backbone(s) load from: the model folder's copies, else the backbone."""

    tokenizer: str
    query: str
    #: None: the passage side shares the query side's model
    passage: str | None


def weight_sources(config: ModelConfig, model_dir: Path | None) -> WeightSources:
    if model_dir is not None and config.adapter_mode == "full":
        # a full-mode folder holds its trained weights; without them the base backbone would load silently
        need = ["backbone"] if config.tied else ["query", "passage"]
        missing = [n for n in need if not (model_dir / n).is_dir()]
        if missing:
            raise ClirError(
                f"model folder {model_dir} is in full mode but has no {'/, '.join(missing)}/ (its trained "
                "weights): the folder is incomplete; copy it again or retrain"
            )
    full_dir = model_dir / "backbone" if model_dir and config.adapter_mode == "full" else None
    tok_dir = model_dir / "tokenizer" if model_dir and (model_dir / "tokenizer").is_dir() else None
    tokenizer = str(tok_dir or full_dir or config.backbone)
    if config.adapter_mode == "full" and not config.tied:
        q_dir = model_dir / "query" if model_dir else None
        p_dir = model_dir / "passage" if model_dir else None
        return WeightSources(
            tokenizer,
            str(q_dir) if q_dir and q_dir.is_dir() else config.backbone,
            str(p_dir) if p_dir and p_dir.is_dir() else config.backbone,
        )
    return WeightSources(
        tokenizer, str(full_dir) if full_dir and full_dir.is_dir() else config.backbone, None
    )


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    path = local_path(path)
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ClirError(_hub_message("tokenizer", path, e)) from None
    except Exception as e:  # a damaged file: json's RecursionError, the tokenizers library's bare Exception
        raise ClirError(_damaged("tokenizer", path, e)) from None


def load_backbone(path: str) -> Any:
    from transformers import AutoModel

    from clir.model.checks import backbone_config

    path = local_path(path)
    try:
        config = backbone_config(path)  # sizes checked before any weight is allocated
        try:
            return AutoModel.from_pretrained(path, config=config, add_pooling_layer=False)
        except TypeError:  # encoders without a pooler argument
            return AutoModel.from_pretrained(path, config=config)
    except (OSError, ValueError) as e:
        raise ClirError(_hub_message("backbone", path, e)) from None
    except ClirError:
        raise
    except Exception as e:  # a damaged weights file (safetensors' own error type, torch's RuntimeError ...)
        raise ClirError(_damaged("backbone", path, e)) from None


def _damaged(what: str, path: str, err: Exception) -> str:
    first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
    return f"could not load the {what} {path!r}, its files are damaged or not a model's ({first})"


def _hub_message(what: str, path: str, err: Exception) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return (
        f"could not load the {what} {path!r}: {first}. If this is a Hugging Face hub id and this machine is "
        "offline, download it elsewhere (`huggingface-cli download ID --local-dir DIR`) and pass --model DIR; "
        "`clir models list` shows models that work offline (e.g. multilingual-e5-small)"
    )


def save_model(encoder: Encoder, out_dir: str | Path, *, save_lang: Sequence[str] = ()) -> Path:
    """Write ``encoder`` (a DualEncoder) as a model folder: settings YAML + adapter weights (or full weights in
    ``full`` mode) + README.md model cards (:mod:`clir.model.card`; ``clir train`` adds what it trained on).

    Local language adapters and any in ``save_lang`` are copied in, so the folder stands alone.
    Written to ``OUT.partial`` and renamed, so a crash never leaves a half model under the final name."""
    import yaml

    out = Path(out_dir)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    cfg = encoder.config
    data = to_dict(cfg)
    if cfg.adapter_mode == "full":
        if cfg.tied:
            encoder.query_model.save_pretrained(tmp / "backbone")
            encoder.tokenizer.save_pretrained(tmp / "backbone")
        else:
            encoder.query_model.save_pretrained(tmp / "query")
            encoder.passage_model.save_pretrained(tmp / "passage")
            encoder.tokenizer.save_pretrained(tmp / "tokenizer")
    else:
        (tmp / "adapters").mkdir()
        for name in task_adapter_names(cfg):
            encoder.query_model.save_adapter(str(tmp / "adapters" / name), name)
            name_backbone(tmp / "adapters" / name, cfg.backbone)
        lang_to_copy = set(save_lang)
        loaded = encoder.loaded_languages()
        for lang, src in cfg.language_adapters.items():
            if lang in loaded and (Path(src).expanduser().exists() or src == "new"):
                lang_to_copy.add(lang)
        for lang in sorted(lang_to_copy):
            encoder.load_language_adapter(lang)
            dest = tmp / "adapters" / f"lang_{lang}"
            encoder.query_model.save_adapter(str(dest), lang)
            name_backbone(dest, cfg.backbone)
            # its metadata (head_sha256, dev losses) goes with it: the copy is checked like the original
            info = Path(encoder.language_adapter_source(lang)).expanduser() / LANGUAGE_ADAPTER_INFO
            if info.is_file():
                shutil.copyfile(info, dest / LANGUAGE_ADAPTER_INFO)
            data["language_adapters"][lang] = f"adapters/lang_{lang}"
    (tmp / MODEL_FILE).write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    write_model_folder_cards(tmp, cfg)  # README.md model cards: the folder's and each adapter's
    swap_into_place(tmp, out)
    return out
