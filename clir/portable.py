"""Paths as a report may show them: relative to the repository, never a host's folders.

Reports, metrics files and model cards are committed and read on other machines, so an absolute path in them
(``/work/wt/issue-13/models/...``, ``/home/me/.cache/...``) says nothing there and leaks a user's layout.
:func:`portable_path` rewrites one path: inside the repository -> relative to it (``models/paper-small/e5-full``);
inside the shared data folder beside it (``../shared``, or ``$CLIR_SHARED``) -> ``../shared/...``; under
``$IR_DATASETS_HOME`` -> ``$IR_DATASETS_HOME/...``; under the home folder -> ``~/...``; anywhere else -> its
name behind ``…/``. :func:`portable_text` does that to every absolute path inside a text (a command
line, a report) and :func:`portable` to every string of a JSON-like document. Ids (``irds:...``), registered
names, hub ids, URLs and relative paths pass unchanged."""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

#: the repository this package runs from (a source checkout: ``pyproject.toml`` beside ``clir/``)
PACKAGE_ROOT = Path(__file__).resolve().parents[1]

#: an absolute POSIX path inside a text: a ``/`` at the start or after a space, quote, backtick, ``=``, ``(``
#: or ``[`` (so URLs, ``a/b`` and ``irds:x/y`` are left alone), up to a space, quote, backtick, ``)`` or ``]``
_ABS = re.compile(r"(?:^|(?<=[\s\"'`=(\[]))/[^\s\"'`()\[\],;]+")
#: absolute path prefixes no committed file may hold
HOST_PREFIXES = ("/work/", "/home/", "/root/", "/tmp/", "/Users/", "/var/", "/private/", "/mnt/", "/opt/")


def repo_root() -> Path | None:
    """The checkout this package belongs to, or None when installed elsewhere (site-packages)."""
    return PACKAGE_ROOT if (PACKAGE_ROOT / "pyproject.toml").is_file() else None


def _anchors() -> list[tuple[Path, str]]:
    """(folder, what it is written as), most specific first."""
    out: list[tuple[Path, str]] = []
    repo = repo_root()
    shared = os.environ.get("CLIR_SHARED")
    if shared:
        out.append((Path(shared).expanduser(), "../shared"))
    if repo is not None:
        out.append((repo.parent / "shared", "../shared"))
    irds = os.environ.get("IR_DATASETS_HOME")
    if irds:
        out.append((Path(irds).expanduser(), "$IR_DATASETS_HOME"))
    if repo is not None:
        out.append((repo, ""))
    cwd = Path.cwd()
    if (cwd / "pyproject.toml").is_file():  # a run from another checkout writes paths relative to it
        out.append((cwd, ""))
    out.append((Path.home(), "~"))
    return out


def _under(path: PurePosixPath, base: Path) -> PurePosixPath | None:
    for b in {str(base), os.path.realpath(base)}:
        try:
            return path.relative_to(b)
        except ValueError:
            continue
    return None


def portable_path(path: str | os.PathLike[str]) -> str:
    """``path`` as a report shows it (see the module doc); relative paths and ids are returned unchanged."""
    s = os.fspath(path)
    if not s.startswith("/"):
        return s
    p = PurePosixPath(os.path.normpath(s))
    for base, label in _anchors():
        rel = _under(p, base)
        if rel is None:
            continue
        if label == "":
            return str(rel) if str(rel) != "." else "."
        return label if str(rel) == "." else f"{label}/{rel}"
    return f"…/{p.name}" if p.name else s


def portable_text(text: str) -> str:
    """``text`` with every absolute path in it made portable."""
    return _ABS.sub(lambda m: portable_path(m.group(0)), text)


def portable(obj: Any) -> Any:
    """A JSON-like document (dicts, lists, strings, numbers) with every string made portable."""
    if isinstance(obj, str):
        return portable_text(obj)
    if isinstance(obj, dict):
        return {k: portable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [portable(v) for v in obj]
    return obj


def host_paths(text: str) -> list[str]:
    """The absolute host paths (:data:`HOST_PREFIXES`) in ``text``: what a committed report must not hold."""
    return [m.group(0) for m in _ABS.finditer(text) if m.group(0).startswith(HOST_PREFIXES)]
