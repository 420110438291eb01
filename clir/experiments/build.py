"""Builds what a grid needs before it runs, in this process: missing model folders with
:func:`clir.train.train`, missing language adapters with :func:`clir.train.train_language_adapter`.

A build is described by the command a user would type (``train --config C --max-steps N --out DIR ARGS``;
the dry run prints it), because a config's ``args`` are that verb's flags: the verb's own parser reads them,
so a flag means the same in a config as on the command line."""

from __future__ import annotations

import argparse
import logging
import shlex
from pathlib import Path
from typing import NoReturn

from clir.errors import ClirError
from clir.experiments.grid import Plan

log = logging.getLogger(__name__)


class _ArgParser(argparse.ArgumentParser):
    """A parser whose errors are ClirErrors (argparse's default prints usage and exits)."""

    def error(self, message: str) -> NoReturn:
        raise ClirError(f"`clir {self.prog}`: {message}")


def parse_build(cmd: list[str]) -> argparse.Namespace:
    """The flags of a build command, parsed by its verb (``train`` or ``train-language-adapter``)."""
    verb, argv = cmd[0], cmd[1:]
    from clir.cli import train, train_language_adapter, train_mlm_head

    verbs = {
        "train": train.add_arguments,
        "train-language-adapter": train_language_adapter.add_arguments,
        "train-mlm-head": train_mlm_head.add_arguments,
    }
    if verb not in verbs:  # the config schema allows only these
        raise ClirError(
            f"cannot build with `clir {verb}`: use train, train-mlm-head or train-language-adapter"
        )
    p = _ArgParser(prog=verb, add_help=False)
    verbs[verb](p)
    ns = p.parse_args(argv)
    if getattr(ns, "dry_run", False):
        raise ClirError(f"`clir {shlex.join(cmd)}`: a build cannot be a --dry-run")
    return ns


def build(cmd: list[str], what: str) -> None:
    """Run one build command in-process."""
    ns = parse_build(cmd)
    log.info("building %s: clir %s", what, shlex.join(cmd))
    Path(ns.out).parent.mkdir(parents=True, exist_ok=True)  # the output's parent may not exist yet
    import torch

    threads = torch.get_num_threads()  # a build may pin its own (optim.threads / --threads)
    try:
        if cmd[0] == "train":
            from clir.cli.train import load_config
            from clir.train import train

            res = train(
                load_config(ns),
                out=ns.out,
                resume=ns.resume,
                overwrite=ns.overwrite,
                stop_after=ns.stop_after,
                device=ns.device,
            )
            log.info("built %s: %d steps in %.1f s", what, res.step, res.seconds)
        elif cmd[0] == "train-mlm-head":
            from clir.cli.train_mlm_head import head_args
            from clir.train.head_training import train_mlm_head

            info = train_mlm_head(head_args(ns))
            log.info("built %s: %d steps in %.1f s", what, info["steps"], info["seconds"])
        else:
            from clir.cli.train_language_adapter import adapter_args
            from clir.train import train_language_adapter

            res_la = train_language_adapter(adapter_args(ns))
            log.info("built %s: %d steps in %.1f s", what, res_la.steps, res_la.seconds)
    except ClirError as e:
        raise ClirError(f"building {what} failed: {e}") from None
    finally:
        torch.set_num_threads(threads)  # the encoding that follows uses every core again


def run_builds(plan: Plan) -> None:
    """Build the language adapters and the models that pending rows need and that are not on disk."""
    needed = {r.model.name for r in plan.selected if r.model is not None and not plan.is_done(r)}
    for r in plan.selected:  # a fusion row's dense input
        for dep in r.kind.needs(r, plan.rows):
            if dep.model is not None and not plan.is_done(dep):
                needed.add(dep.model.name)
    models = [m for m in plan.models if m.name in needed and m.build_cmd and not m.exists()]
    adapters: list[tuple[list[str], str]] = []
    # language adapters serve madx rows and the madx models trained on them; a selection without either
    # (e.g. --only '*/e5') needs none of them
    if any(m.madx for m in plan.models if m.name in needed):
        adapters = [
            (cmd, f"language adapter {lang} ({outp})")
            for lang, outp, cmd in plan.adapter_builds
            if not outp.is_dir()
        ]
    head = (
        [(plan.head_build[1], f"shared MLM head ({plan.head_build[0]})")]
        if adapters and plan.head_build
        else []
    )
    first = adapters + [(m.build_cmd, f"model {m.name} ({m.folder})") for m in models if not m.madx]
    then = [(m.build_cmd, f"model {m.name} ({m.folder})") for m in models if m.madx]  # on the adapters
    _run_all([head, first, then], plan.config.build_workers)  # type: ignore[list-item]
    for m in models:
        if not m.exists():
            raise ClirError(f"`clir {shlex.join(m.build_cmd)}` finished but {m.folder} does not exist")  # type: ignore[arg-type]


def _run_all(stages: list[list[tuple[list[str], str]]], workers: int) -> None:
    """Run each stage's builds (the next stage after the whole previous one), ``workers`` at a time."""
    jobs = sum(len(s) for s in stages)
    if workers <= 1 or jobs <= 1:
        for stage in stages:
            for cmd, what in stage:
                build(cmd, what)
        return
    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    # spawn: a forked child would inherit torch's thread pools and locks mid-state
    with ProcessPoolExecutor(min(workers, jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
        for stage in stages:
            futures = [pool.submit(build, cmd, what) for cmd, what in stage]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for f in done:
                if f.exception() is not None:
                    for other in futures:
                        other.cancel()
                    raise f.exception()  # type: ignore[misc]
            for f in futures:
                f.result()
