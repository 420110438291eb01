"""The staging side of an index build, on :class:`clir.workdir.WorkDir`'s lock, record and swap:
``OUT.partial`` with its encoded chunks (``chunks/NNNNNN.jsonl`` + ``.npy``, the ``.npy`` written last as the chunk's commit marker), ``state.json`` (the settings a
``--resume`` must share) and, once every chunk is encoded, ``final/`` (the index folder being written; its
``manifest.json``, written last, marks it complete), and ``OUT.lock``, which keeps a second build off the
same ``--out``.

Finishing a build is ordered so that a kill at any point leaves something whole: chunks are never deleted
before ``final/`` has become ``OUT`` (so ``--resume`` can always write ``final/`` again), ``OUT`` is replaced
through ``OUT.old`` only once ``final/`` is complete (:func:`clir.atomic.swap_into_place`), and
``state.json`` goes before the chunks (a staging folder without it is never resumed)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from clir.atomic import atomic_write_lines
from clir.index import store
from clir.safe_load import loads_json
from clir.workdir import WorkDir

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
CHUNKS = "chunks"
#: the finished index folder, written inside OUT.partial and renamed to OUT
FINAL = "final"


def chunk_paths(folder: Path, no: int) -> tuple[Path, Path]:
    return folder / f"{no:06d}.jsonl", folder / f"{no:06d}.npy"


def write_chunk(folder: Path, no: int, recs: list[dict[str, Any]], vecs: np.ndarray) -> None:
    meta, vec = chunk_paths(folder, no)
    atomic_write_lines(meta, (json.dumps(r, ensure_ascii=False) for r in recs))
    store.atomic_save_npy(vec, vecs)  # the .npy is the chunk's commit marker: written last


def read_chunk_meta(path: Path) -> list[dict[str, Any]]:
    with open(path, "rb") as f:
        return [loads_json(line, f"{path}:{i}") for i, line in enumerate(f, 1)]


def prepare_partial(work: WorkDir, state: dict[str, Any], resume: bool) -> None:
    """Create ``OUT.partial`` with its ``state.json``, or with ``resume`` reopen one started with the same
    settings (:class:`ResumeRefused` when they differ); an unfinished build that is not resumed is removed."""
    partial = work.partial
    if partial.exists():
        check = work.check_record(STATE_FILE, state, what="a build state") if resume else None
        if check is not None and check.found:
            if not check.same:
                raise check.refusal(partial, "rerun without --resume to start over")
            done = len(list((partial / CHUNKS).glob("*.npy")))
            log.info("resuming %s: %d chunk(s) already encoded", partial, done)
            return
        if resume:
            log.warning("%s has no resumable state; starting over", partial)
        else:
            log.warning("removing an unfinished build in %s (pass --resume to continue it instead)", partial)
        shutil.rmtree(partial)
    elif resume:
        log.info("nothing to resume at %s; starting a fresh build", partial)
    (partial / CHUNKS).mkdir(parents=True)
    work.write_record(STATE_FILE, state)


def chunk_done(chunks_dir: Path, no: int) -> bool:
    """A chunk is finished once its ``.npy`` (written last) exists, beside its records."""
    meta, vec = chunk_paths(chunks_dir, no)
    return vec.is_file() and meta.is_file()


def disk_hint(out: Path) -> str:
    """What a build stopped by its disk leaves, for its error message."""
    kept = f"{out} is intact; " if out.exists() else ""
    return f"{kept}free space, then the same command with --resume continues from the chunks already encoded"


def recover_swap(work: WorkDir, resume: bool) -> None:
    """Under the build's lock, what a build killed while swapping its index in left (``OUT.old``, see
    :meth:`clir.workdir.WorkDir.recover`): beside ``OUT`` it is a leftover and goes; without ``OUT`` it is
    the previous index, restored, unless ``--resume`` is about to swap in the complete ``final/``."""
    keep = resume and (work.partial / FINAL / store.MANIFEST_FILE).is_file()
    work.recover(keep_old=keep, what="index")


def lock_build(out: Path) -> WorkDir:
    """``OUT.lock``, held for the whole build: a second build on the same ``--out`` is refused
    (:class:`clir.workdir.WorkDirBusy`) instead of deleting the first one's ``OUT.partial``."""
    work = WorkDir(out)
    work.lock(what="build")
    return work


def unlock_build(work: WorkDir | None) -> None:
    if work is not None:
        work.unlock()
