"""Crash-safe writes, in one place: a file is written to a temporary sibling and renamed over its final name
only once complete; an output folder is built in ``NAME.partial`` (or another staging folder) and only a
finished folder takes the final name. A reader never sees half a file or half a folder."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from clir.errors import ClirError


def write_target(path: Path) -> Path:
    """Where writing ``path`` lands: a symbolic link's target (the link stays a link, as a plain write
    through it would leave it), else ``path``. A device, pipe or socket is refused: renaming a file over
    it would replace, say, /dev/full with a regular file."""
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    if target.exists() and not target.is_file() and not target.is_dir():
        raise ClirError(f"{path} is not a regular file (a device, pipe or socket): clir writes files only")
    return target


@contextmanager
def replacing(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary sibling of ``path`` to write (``suffix`` appended to its name; end it in the real
    extension where a writer infers the format from it); it replaces ``path`` when the block finishes.
    Through a symbolic link, the link's target is replaced (see :func:`write_target`)."""
    path = write_target(path)
    tmp = path.with_name(path.name + suffix)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_lines(path: Path, lines: Iterable[str]) -> None:
    """One line per item (a newline after each), streamed."""
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")


def swap_into_place(partial: Path, out: Path) -> None:
    """Rename the finished ``partial`` to ``out``; an existing ``out`` is replaced only now, whole."""
    if out.exists():
        old = out.with_name(out.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
        os.replace(partial, out)
        shutil.rmtree(old)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, out)
