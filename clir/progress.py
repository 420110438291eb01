"""The one progress helper every long loop goes through (tqdm on stderr, silent when not a terminal unless
CLIR_PROGRESS=1 forces it, or CLIR_PROGRESS=0 silences it)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any


def _disable() -> bool | None:
    flag = os.environ.get("CLIR_PROGRESS")
    if flag is None:
        return None  # tqdm decides: shown on a terminal, hidden in logs
    return flag.strip() in ("0", "false", "no", "")


def progress(
    iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "", unit: str = "it"
):
    """A tqdm bar (import deferred so that ``import clir`` stays cheap)."""
    from tqdm.auto import tqdm

    return tqdm(
        iterable, total=total, desc=desc, unit=unit, disable=_disable(), dynamic_ncols=True, leave=False
    )
