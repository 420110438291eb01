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
    if target.is_symlink():  # realpath stops where links go round in a loop
        raise ClirError(f"{path} is a symbolic link that leads round in a loop")
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
    """Rename the finished ``partial`` to ``out``; an existing ``out`` is replaced only now, whole. Between
    the two renames ``out`` is missing and its previous version is ``OUT.old``: a process killed there
    leaves both folders complete (:meth:`clir.workdir.WorkDir.recover` finishes or undoes it)."""
    old = out.with_name(out.name + ".old")
    if out.exists():
        if old.exists():
            shutil.rmtree(old)  # left by an earlier swap stopped after its second rename
        os.replace(out, old)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, out)
    if old.exists():  # the previous version (or one an interrupted swap left): the new one is in place
        shutil.rmtree(old)


#: what a full or failing disk raises, whichever library was writing
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG, errno.EROFS)
#: free bytes below which a write failure that names no cause is put down to a full disk
_NEARLY_FULL = 1 << 20
#: words of the write failures that name no cause (numpy's short write, torch's zip writer)
_WRITE_WORDS = ("write", "written", "inline_container")


def disk_problem(e: BaseException, folder: Path | None = None) -> str | None:
    """The disk problem behind a failed write, in the system's words ("No space left on device"), or None.
    FAISS and safetensors put the errno's text in their messages, torch and numpy's short writes name no
    cause: then a ``folder`` on a full file system is taken as the reason."""
    if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
        return os.strerror(e.errno)
    text = str(e)
    for code in _DISK_ERRNOS:
        if os.strerror(code) in text:
            return os.strerror(code)
    if folder is not None and any(w in text.lower() for w in _WRITE_WORDS):
        with suppress(OSError):
            here = next(p for p in (folder, *folder.parents) if p.exists())
            st = os.statvfs(here)
            if st.f_bavail * st.f_frsize < _NEARLY_FULL:
                return os.strerror(errno.ENOSPC)
    return None


@contextmanager
def disk_errors(folder: Path, what: str) -> Iterator[None]:
    """Writes into ``folder`` whose failure for a disk reason (full, quota, I/O error, read-only, file size
    limit) becomes one ClirError, ``cannot write FOLDER: REASON; WHAT`` (``what`` says what is intact and
    how to go on). Other failures pass unchanged."""
    try:
        yield
    except ClirError:
        raise
    except Exception as e:
        reason = disk_problem(e, folder)
        if reason is None:
            raise
        raise ClirError(f"cannot write {folder}: {reason}; {what}") from None
