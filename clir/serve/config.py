"""Settings of the REST server, and the YAML file that names its indexes (aliases) and settings."""

from __future__ import annotations

import logging
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

from clir.config.serve import ServeSettings  # noqa: F401  (its home is config; kept importable here)
from clir.errors import ClirError

log = logging.getLogger(__name__)

#: index names appear in URLs (/indexes/{name}/docs/...): keep them URL-safe
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_K = 1000


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ClirError(
            f"index name {name!r} is not URL-safe: use letters, digits, '.', '_' and '-' (at most 128), "
            "starting with a letter or digit"
        )
    return name


def parse_index_spec(spec: str) -> tuple[str, str]:
    """``NAME=DIR`` or ``DIR`` (named after the folder)."""
    name, sep, path = spec.partition("=")
    if not sep:
        path, name = spec, Path(spec.rstrip("/")).name
    if not path:
        raise ClirError(f"--index {spec!r}: expected NAME=DIR or DIR")
    return check_name(name), path


def load_serve_config(path: str | Path) -> tuple[dict[str, str], dict[str, Any]]:
    """A YAML file ``indexes: {alias: folder}`` plus any :class:`ServeSettings` field; ``${VAR}`` expands.
    Relative folders are relative to the file. Returns (indexes, settings as a dict)."""
    from clir.config import load_yaml

    p = Path(path)
    data = load_yaml(p)
    raw = data.pop("indexes", None) or {}
    if not isinstance(raw, dict):
        raise ClirError(f"{p}: indexes: expected a mapping alias -> index folder, got {raw!r}")
    indexes = {}
    for name, folder in raw.items():
        if not isinstance(folder, str):
            raise ClirError(f"{p}: indexes.{name}: expected a folder path, got {folder!r}")
        folder_path = Path(folder).expanduser()
        indexes[check_name(str(name))] = str(
            folder_path if folder_path.is_absolute() else p.parent / folder_path
        )
    if "workers" in data:  # the key's earlier name
        if "processes" in data:
            raise ClirError(f"{p}: give processes (workers is its earlier name), not both")
        log.warning("%s: workers is deprecated: use processes", p)
        data["processes"] = data.pop("workers")
    known = {f.name for f in fields(ServeSettings)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ClirError(
            f"{p}: unknown key(s) {', '.join(unknown)} (known: indexes, {', '.join(sorted(known))})"
        )
    return indexes, data
