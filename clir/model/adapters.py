"""Which adapters an encoder has and which it uses: the task adapter names of a mode, where a language's
adapter comes from, and the one rule for which language adapter a side (query, passage) encodes through.

These read only the settings (and the model folder); :class:`clir.model.encoder.DualEncoder` loads and
activates what they name."""

from __future__ import annotations

from pathlib import Path

from clir.config import ModelConfig
from clir.config.model import Routing, check_reduction
from clir.errors import ClirError
from clir.model.checks import check_adapter_folder
from clir.model.modes import RANDOM_ADAPTER as RANDOM_ADAPTER  # re-exported: the controls' name
from clir.model.modes import Side as Side
from clir.model.modes import adapter_mode

#: the metadata file a language adapter folder made by ``clir train-language-adapter`` holds
LANGUAGE_ADAPTER_INFO = "clir_language_adapter.json"


def adapter_head_sha(folder: str | Path) -> str | None:
    """The ``head_sha256`` a language adapter was trained against (None: unknown, e.g. an AdapterHub id)."""
    import json

    info = Path(folder).expanduser() / LANGUAGE_ADAPTER_INFO
    try:
        data = json.loads(info.read_text(encoding="utf-8")) if info.is_file() else {}
    except (OSError, ValueError):
        return None
    sha = data.get("head_sha256") if isinstance(data, dict) else None
    return sha if isinstance(sha, str) else None


def task_adapter_names(config: ModelConfig) -> list[str]:
    return adapter_mode(config).task_adapters(config)


def saved_adapter(model_dir: Path | None, name: str) -> Path | None:
    """The folder of adapter ``name`` inside a model folder (``adapters/<name>``), when it is there."""
    path = model_dir / "adapters" / name if model_dir else None
    return path if path is not None and path.is_dir() else None


def language_adapter_source(config: ModelConfig, model_dir: Path | None, lang: str) -> str:
    """Where ``lang``'s adapter loads from: the model folder's own copy, else ``language_adapters``."""
    bundled = saved_adapter(model_dir, f"lang_{lang}")
    if bundled is not None:
        return str(bundled)
    if lang == RANDOM_ADAPTER and lang not in config.language_adapters:
        return "new"
    if lang not in config.language_adapters:
        known = ", ".join(sorted(config.language_adapters)) or "none"
        raise ClirError(
            f"no language adapter for {lang!r} (configured: {known}); add it under language_adapters "
            f"(an AdapterHub/Hugging Face id or a folder made by `clir train-language-adapter --lang {lang}`)"
        )
    return config.language_adapters[lang]


def language_adapter_for(
    config: ModelConfig, side: Side, lang: str | None, routing: Routing | None = None
) -> str | None:
    """Which language adapter sits under the task adapter when ``side`` encodes text in ``lang`` under
    ``routing`` (default: the model's): :meth:`clir.model.modes.MadxMode.language_adapter`, the one rule."""
    return adapter_mode(config).language_adapter(config, routing or config.routing, side, lang)


def check_task_adapters(config: ModelConfig, model_dir: Path | None, hidden: int) -> None:
    """Before any adapter is built: a model folder holds the task adapters of its mode (without them it
    would encode with fresh random ones), saved ones describe sane sizes, new ones get a sane bottleneck."""
    for name in task_adapter_names(config):
        saved = saved_adapter(model_dir, name)
        if saved is not None:
            check_adapter_folder(saved, hidden)
        elif model_dir is not None:
            raise ClirError(
                f"model folder {model_dir} is in {config.adapter_mode} mode but has no adapters/{name}/ (its "
                "trained adapter): the folder is incomplete; copy it again or retrain"
            )
    check_reduction(config.task_adapter.reduction_factor, hidden, "task_adapter")


def check_language_adapter(config: ModelConfig, source: str, hidden: int) -> None:
    """A language adapter's sizes before it is built: a new one's settings, a local folder's config."""
    if source == "new":
        check_reduction(config.language_adapter.reduction_factor, hidden, "language_adapter")
    elif Path(source).expanduser().is_dir():
        check_adapter_folder(Path(source).expanduser(), hidden)


def adapter_message(lang: str, source: str, err: Exception) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return (
        f"could not load the language adapter for {lang!r} from {source!r}: {first}. If AdapterHub / the "
        "Hugging Face hub is unreachable, download the adapter elsewhere (its folder holds adapter_config.json "
        f"and pytorch_adapter.bin or safetensors) and map it locally (language_adapters: {{{lang}: /path/to/folder}}), "
        f"or train one here with `clir train-language-adapter --lang {lang}`"
    )


def name_backbone(folder: Path, backbone: str) -> None:
    """Write ``backbone`` as the ``model_name`` of an adapter folder's ``adapter_config.json``: ``adapters``
    records the path the weights were loaded from (a cache folder of this machine); the name the user gave
    (a registered model, a hub id, a folder) is what travels with the folder."""
    import json

    from clir.portable import portable_path

    cfg = folder / "adapter_config.json"
    data = json.loads(cfg.read_text(encoding="utf-8"))
    data["model_name"] = portable_path(backbone) if Path(backbone).is_absolute() else backbone
    cfg.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def check_same_head(heads: dict[str, str], lang: str, source: str) -> None:
    """Language adapters stack or swap under one task adapter only when they were trained against the same
    frozen MLM head (MAD-X's common anchor): refuse ``lang``'s adapter at ``source`` when its recorded
    ``head_sha256`` differs from one already loaded (``heads``: language -> head_sha256, updated)."""
    sha = adapter_head_sha(source)
    if sha is None:  # not recorded (AdapterHub adapters: trained against the backbone's pretrained head)
        return
    for other, other_sha in heads.items():
        if other_sha != sha:
            raise ClirError(
                f"the language adapters for {other!r} and {lang!r} ({source}) were trained against different "
                f"MLM heads (head_sha256 {other_sha[:12]}... vs {sha[:12]}...): they share no output space, so "
                "one task adapter cannot use both; train them with one `--head` (clir train-mlm-head)"
            )
    heads[lang] = sha
