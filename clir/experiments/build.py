"""Builds what a grid needs before it runs, in this process: missing model folders with
:func:`clir.train.train`, missing language adapters with :func:`clir.train.train_language_adapter`, the shared
MLM head with :func:`clir.train.head_training.train_mlm_head`.

The plan hands each build over as a typed :class:`clir.experiments.grid.Build`: the request the library is
called with, read when the grid was planned from the verb's own flags (a config's ``args`` mean what they mean
on the command line), and the command a user would type for it, which only the dry run and the logs show."""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

from clir.config.mlm import LanguageAdapterRequest, MlmHeadRequest
from clir.config.requests import TrainRequest
from clir.errors import ClirError
from clir.experiments.grid import Build, Plan

log = logging.getLogger(__name__)


def build(step: Build, what: str) -> None:
    """Run one build in-process: the library call its request asks for."""
    req = step.request
    log.info("building %s: clir %s", what, shlex.join(step.command))
    if req.out:
        Path(req.out).parent.mkdir(parents=True, exist_ok=True)  # the output's parent may not exist yet
    import torch

    threads = torch.get_num_threads()  # a build may pin its own (optim.threads / --threads)
    try:
        if isinstance(req, TrainRequest):
            from clir.train import train

            res = train(
                req.train_config(),
                out=req.out,
                resume=req.resume,
                overwrite=req.overwrite,
                stop_after=req.stop_after,
                device=req.device,
            )
            log.info("built %s: %d steps in %.1f s", what, res.step, res.seconds)
        elif isinstance(req, MlmHeadRequest):
            from clir.train.head_training import train_mlm_head

            info = train_mlm_head(req)
            log.info("built %s: %d steps in %.1f s", what, info["steps"], info["seconds"])
        else:
            assert isinstance(req, LanguageAdapterRequest)
            from clir.train import train_language_adapter

            res_la = train_language_adapter(req)
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
    models = [m for m in plan.models if m.name in needed and m.build and not m.exists()]
    adapters: list[tuple[Build, str]] = []
    # language adapters serve madx rows and the madx models trained on them; a selection without either
    # (e.g. --only '*/e5') needs none of them
    if any(m.routes_languages for m in plan.models if m.name in needed):
        adapters = [
            (b, f"language adapter {lang} ({outp})")
            for lang, outp, b in plan.adapter_builds
            if not outp.is_dir()
        ]
    head = (
        [(plan.head_build[1], f"shared MLM head ({plan.head_build[0]})")]
        if adapters and plan.head_build
        else []
    )
    made = [(m.build, f"model {m.name} ({m.folder})") for m in models if m.build]
    first = adapters + [b for b, m in zip(made, models, strict=True) if not m.routes_languages]
    then = [b for b, m in zip(made, models, strict=True) if m.routes_languages]  # on the adapters
    _run_all([head, first, then], plan.config.build_workers)
    for m in models:
        if not m.exists():
            assert m.build is not None
            raise ClirError(f"`clir {shlex.join(m.build.command)}` finished but {m.folder} does not exist")


def _run_all(stages: list[list[tuple[Build, str]]], workers: int) -> None:
    """Run each stage's builds (the next stage after the whole previous one), ``workers`` at a time."""
    jobs = sum(len(s) for s in stages)
    if workers <= 1 or jobs <= 1:
        for stage in stages:
            for step, what in stage:
                build(step, what)
        return
    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    # spawn: a forked child would inherit torch's thread pools and locks mid-state
    with ProcessPoolExecutor(min(workers, jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
        for stage in stages:
            futures = [pool.submit(build, step, what) for step, what in stage]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for f in done:
                if f.exception() is not None:
                    for other in futures:
                        other.cancel()
                    raise f.exception()  # type: ignore[misc]
            for f in futures:
                f.result()
