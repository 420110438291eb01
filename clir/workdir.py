"""The work folder of an output built in steps (an index, a trained model, a language adapter or MLM head):
one protocol for the three things every such build does around ``OUT``.

- **The lock.** ``OUT.lock``, held (flock) by the one process writing ``OUT`` for the whole run: a second
  run on the same ``--out`` is refused (:class:`WorkDirBusy`) instead of deleting the first one's work.
- **The record check.** A run records the settings a resume must share (``state.json``, ``run.json``, a
  checkpoint's config); :func:`compare_records` and :meth:`WorkDir.check_record` compare them with the
  requested ones and answer with a typed :class:`RecordCheck`, whose :meth:`RecordCheck.refusal` is a
  :class:`clir.errors.ResumeRefused` (callers that may start over catch that type, never a message).
- **The swap into place.** The finished folder takes ``OUT``'s name through ``OUT.old``
  (:func:`clir.atomic.swap_into_place`); :meth:`WorkDir.recover`, under the lock, finishes or undoes a swap
  a kill interrupted.

What lies where stays each build's own (``OUT.partial`` with chunks and ``state.json`` for an index,
``OUT.partial`` with ``run.json`` for an MLM run, checkpoints inside ``OUT`` and ``OUT.final`` for
``clir train``): a WorkDir is told its staging folder's suffix and its record's name."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from clir.atomic import atomic_write_text, swap_into_place
from clir.errors import ClirError, ResumeRefused
from clir.safe_load import read_json

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"
OLD_SUFFIX = ".old"
PARTIAL_SUFFIX = ".partial"


class WorkDirBusy(ClirError):
    """Another process holds ``OUT.lock``: it is writing the same output."""


def sibling(out: Path, suffix: str) -> Path:
    """``OUT`` with ``suffix`` appended to its name (``OUT.partial``, ``OUT.lock``, ``OUT.old``)."""
    return out.with_name(out.name + suffix)


@dataclass(frozen=True)
class Difference:
    """One setting whose recorded value differs from the requested one."""

    key: str
    recorded: Any
    requested: Any


def _plain(value: Any) -> Any:
    """``value`` as its JSON record reads back (tuples as lists): what was written is what is compared."""
    return json.loads(json.dumps(value))


def compare_records(
    recorded: Mapping[str, Any], requested: Mapping[str, Any], *, defaults: Mapping[str, Any] | None = None
) -> tuple[Difference, ...]:
    """The keys whose values differ, sorted. A key the record lacks matches its value in ``defaults`` (a
    record written before that setting existed)."""
    recorded, requested = _plain(dict(recorded)), _plain(dict(requested))
    defaults = _plain(dict(defaults or {}))
    diffs = []
    for key in sorted(set(recorded) | set(requested)):
        if key not in recorded and key in defaults and requested.get(key) == defaults[key]:
            continue
        if recorded.get(key) != requested.get(key):
            diffs.append(Difference(key, recorded.get(key), requested.get(key)))
    return tuple(diffs)


@dataclass(frozen=True)
class RecordCheck:
    """What a run's record says of resuming it with the requested settings."""

    #: the record (or, for a record kept inside a checkpoint, the checkpoint)
    path: Path
    #: whether there was a record at all (a run without one is never resumed: it starts over)
    found: bool
    #: why the record cannot be used (unreadable, not a record), or None
    problem: str | None = None
    differences: tuple[Difference, ...] = ()

    @property
    def same(self) -> bool:
        """The record exists, reads and matches: the run may be resumed."""
        return self.found and self.problem is None and not self.differences

    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.differences]

    def refusal(self, where: Path, hint: str) -> ResumeRefused:
        """The typed refusal to resume ``where``: ``cannot resume WHERE: WHY; HINT``."""
        if self.problem is not None:
            why = self.problem
        elif not self.found:
            why = f"{self.path.name} is missing"
        else:
            why = f"it was started with different settings ({', '.join(self.keys)})"
        return ResumeRefused(f"cannot resume {where}: {why}; {hint}")


class WorkDir:
    """The lock, record and swap of one output ``out``; ``staging``: the suffix of the folder that is
    built and swapped in (``.partial``; ``.final`` for ``clir train``, whose run folder is ``OUT``)."""

    def __init__(self, out: Path, *, staging: str = PARTIAL_SUFFIX) -> None:
        self.out = out
        self.partial = sibling(out, staging)
        self.lock_path = sibling(out, LOCK_SUFFIX)
        self.old = sibling(out, OLD_SUFFIX)
        self._lock: IO[str] | None = None

    @property
    def locked(self) -> bool:
        return self._lock is not None

    # ------------------------------------------------------------------ lock
    def lock(self, *, what: str = "run", flag: str = "--out") -> None:
        """Take ``OUT.lock`` (creating ``OUT``'s parent folders), held until :meth:`unlock`; a second run on
        the same output is refused with :class:`WorkDirBusy`."""
        import fcntl

        if self._lock is not None:
            return
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            f = open(self.lock_path, "a+")  # noqa: SIM115 - held until unlock()
        except OSError as e:
            raise ClirError(
                f"cannot write next to {flag} {self.out}: {e.strerror} ({self.lock_path})"
            ) from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise WorkDirBusy(
                f"another {what} is writing {self.out} (it holds {self.lock_path}): wait for it to finish or "
                f"give another {flag}"
            ) from None
        self._lock = f

    def unlock(self) -> None:
        """Release the lock (the file goes with it); nothing when not held."""
        f, self._lock = self._lock, None
        if f is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(f.name)
        f.close()

    # ------------------------------------------------------------------ record
    def check_record(
        self,
        name: str,
        requested: Mapping[str, Any],
        *,
        what: str = "a run record",
        defaults: Mapping[str, Any] | None = None,
    ) -> RecordCheck:
        """``OUT.partial/NAME`` (a JSON object) against the ``requested`` settings."""
        path = self.partial / name
        if not path.is_file():
            return RecordCheck(path, found=False)
        try:
            recorded = read_json(path, what=what)
        except (ClirError, OSError) as e:
            return RecordCheck(path, found=True, problem=str(e))
        if not isinstance(recorded, dict):
            return RecordCheck(path, found=True, problem=f"its {name} is not {what}")
        return RecordCheck(
            path, found=True, differences=compare_records(recorded, requested, defaults=defaults)
        )

    def write_record(self, name: str, record: Mapping[str, Any], *, end: str = "") -> None:
        """``OUT.partial/NAME``: the settings a resume must share (indented JSON, then ``end``)."""
        atomic_write_text(self.partial / name, json.dumps(record, indent=2) + end)

    # ------------------------------------------------------------------ swap
    def recover(self, *, keep_old: bool = False, what: str = "output") -> None:
        """Under the lock, what a run killed while swapping its output in left (``OUT.old``): beside ``OUT``
        a leftover, removed; without ``OUT`` the previous version, restored, unless ``keep_old`` (the
        caller is about to swap in a complete new version)."""
        if not self.old.is_dir():
            return
        if self.out.exists():
            log.info("removing %s, the previous %s a finished swap left behind", self.old, what)
            shutil.rmtree(self.old)
        elif keep_old:
            log.warning(
                "%s is missing and its previous version is in %s: resuming swaps the new %s in",
                self.out,
                self.old,
                what,
            )
        else:
            os.replace(self.old, self.out)
            log.warning(
                "restored %s from %s (a run was stopped while swapping in its new %s)",
                self.out,
                self.old,
                what,
            )

    def finish(self, finished: Path, *, record: str | None = None, ignore_errors: bool = False) -> None:
        """Swap the complete folder ``finished`` in as ``OUT`` (kill-safe, through ``OUT.old``), then remove
        the staging folder, its record first (a staging folder without one is never resumed)."""
        swap_into_place(finished, self.out)
        if self.partial.exists():
            if record is not None:
                (self.partial / record).unlink(missing_ok=True)
            shutil.rmtree(self.partial, ignore_errors=ignore_errors)
