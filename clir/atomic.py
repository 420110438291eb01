"""Crash-safe replacement of output folders: everything is written to ``NAME.partial`` (or another staging
folder) first, and only a finished folder takes the final name."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


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
