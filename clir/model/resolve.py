"""What a ``--model`` (or ``--backbone``) string names, decided in one place and offline: a clir model folder,
a Hugging Face backbone folder, a registered name (``clir models list``), a model YAML, or a hub id.

Every verb, the experiment grid, the server and training resolve through :func:`resolve_model`, so the rules
and the error messages are the same everywhere. Nothing is loaded or downloaded here."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from clir.config import load_yaml
from clir.errors import ClirError

#: the encoder settings file of a clir model folder
MODEL_FILE = "clir_model.yaml"

ModelKind = Literal["clir", "backbone", "registered", "config", "hub"]


def looks_like_path(s: str) -> bool:
    """A string meant as a path (``./x``, ``/x``, ``~/x``, ``a/b/c``), not a hub id (``org/name``)."""
    return s.startswith((".", "/", "~")) or s.count("/") > 1


def hub_cached(repo: str, filename: str = "config.json") -> bool:
    """Whether the local Hugging Face cache holds ``filename`` of ``repo`` (never touches the network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo, filename), str)
    except Exception:  # malformed ids and cache errors both mean "not cached"
        return False


def local_path(name: str) -> str:
    """Where a backbone name loads from: a registered model's folder once pulled, else the name itself (a
    folder or a hub id), so that configs may say ``backbone: multilingual-e5-small`` offline."""
    from clir.model.registry import lookup

    if Path(name).expanduser().is_dir():
        return name
    reg = lookup(name)
    return str(reg.path) if reg is not None and reg.path.is_dir() else name


def merge_settings(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, nested dicts merged key by key (flags win over a folder's settings)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge_settings(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def model_ready(folder: Path) -> bool:
    """A finished model folder (a clir model or a Hugging Face one), not an unfinished training run."""
    return (folder / MODEL_FILE).is_file() or (folder / "config.json").is_file()


def read_model_file(folder: Path) -> dict[str, Any]:
    """A clir model folder's settings; relative language-adapter paths made absolute against the folder."""
    data = load_yaml(folder / MODEL_FILE)
    for lang, src in list((data.get("language_adapters") or {}).items()):
        if isinstance(src, str) and not Path(src).is_absolute() and (folder / src).exists():
            data["language_adapters"][lang] = str(folder / src)
    return data


@dataclass
class ModelRef:
    """A resolved model string: its kind, the encoder settings known without loading it, and whether it is
    on this machine."""

    spec: str
    kind: ModelKind
    #: encoder settings known offline (``backbone`` always; a clir folder's or registry's recorded settings)
    settings: dict[str, Any]
    #: the clir model folder (its adapters, its relative paths), for kind ``clir``
    folder: Path | None = None
    #: why the weights are not on this machine (a registered model not pulled); None when they are or when
    #: only loading can tell (hub ids: see :attr:`hub_cached`)
    missing: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def backbone(self) -> str:
        return str(self.settings["backbone"])

    def hub_cached(self) -> bool:
        return self.kind != "hub" or hub_cached(self.spec)

    @property
    def names_folder(self) -> bool:
        """The string named a folder on this machine: a clir model or a Hugging Face backbone."""
        return self.kind in ("clir", "backbone")

    @property
    def pulled_folder(self) -> Path | None:
        """A registered model's folder once pulled; None for any other kind, or before ``clir models pull``."""
        return Path(self.backbone) if self.kind == "registered" and not self.missing else None

    def require_local(self) -> ModelRef:
        """Self, or a ClirError saying how to get the model onto this machine."""
        if self.missing:
            raise ClirError(self.missing)
        return self


def resolve_model(spec: str | Path, *, what: str | None = None) -> ModelRef:
    """Resolve a model string; ``what`` names it in errors (default ``--model SPEC``; ``models[e5]``)."""
    from clir.model.registry import lookup

    s = str(spec).strip()
    what = what or f"--model {s}"
    path = Path(s).expanduser()
    if path.is_dir():
        folder = path.resolve()
        if (folder / MODEL_FILE).is_file():
            return ModelRef(s, "clir", read_model_file(folder), folder=folder)
        if (folder / "config.json").is_file():
            return ModelRef(s, "backbone", {"backbone": str(folder)})
        raise ClirError(f"{what}: {folder} has neither {MODEL_FILE} (a clir model) nor config.json")
    reg = lookup(s)
    if reg is not None:
        missing = None
        if not reg.path.is_dir():
            missing = f"model {s!r} is not on this machine yet: run `clir models pull {s}`"
        return ModelRef(s, "registered", {"backbone": str(reg.path), **reg.settings}, missing=missing)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        data = load_yaml(path)
        return ModelRef(s, "config", dict(data.get("model", data)))
    if looks_like_path(s) or path.exists():
        link = " (a symbolic link to nothing: a loop?)" if path.is_symlink() else ""
        raise ClirError(
            f"{what}: no such folder{link} (resolved against {Path.cwd()}: {os.path.abspath(path)})"
        )
    return ModelRef(s, "hub", {"backbone": s})  # loading says clearly if the hub is unreachable
