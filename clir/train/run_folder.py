"""The run folder of ``clir train``: what ``--out`` may hold before a run starts (``--resume``,
``--overwrite``), the recorded config and log, and the final swap of the model folder into its place.

While training the folder holds ``checkpoints/step-N/``, ``train_log.jsonl`` and ``train_config.yaml``; at
the end the model folder is assembled beside it (``OUT.final``) and swapped in, so a crash never leaves a
half-written model under ``OUT``."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from clir.atomic import atomic_write_text
from clir.config import TrainConfig, to_dict
from clir.errors import ClirError, ResumeRefused
from clir.model.card import write_model_folder_cards
from clir.model.protocol import Encoder
from clir.model.resolve import MODEL_FILE
from clir.safe_load import loads_json
from clir.train.checkpoint import CKPT_DIR, legacy_checkpoints, list_checkpoints
from clir.workdir import WorkDir, compare_records

log = logging.getLogger(__name__)

LOG_FILE = "train_log.jsonl"
#: the model folder assembled beside the run folder, then swapped in as ``OUT``
FINAL_SUFFIX = ".final"
CONFIG_FILE = "train_config.yaml"
#: what a run folder may hold before the final model is swapped in
_RUN_ENTRIES = {CKPT_DIR, LOG_FILE, CONFIG_FILE}


def run_workdir(out: Path) -> WorkDir:
    """The run folder's WorkDir: ``OUT`` itself holds the run, ``OUT.final`` the model swapped in at the end."""
    return WorkDir(out, staging=FINAL_SUFFIX)


def prepare_out(out: Path, *, resume: bool, overwrite: bool) -> bool:
    """Check what ``out`` holds against the flags; True when the run resumes from its last checkpoint."""
    if out.exists() and not out.is_dir():
        raise ClirError(f"--out {out} exists and is not a folder")
    legacy = legacy_checkpoints(out)
    if legacy and not overwrite:
        raise ClirError(
            f"{legacy[-1]} is a checkpoint in the old pickle format, which clir no longer loads (unpickling "
            "can run code): start over with --overwrite"
        )
    ckpts = list_checkpoints(out)
    finished = (out / MODEL_FILE).is_file()
    if resume and ckpts:
        return True
    if resume and finished and not overwrite:
        raise ClirError(
            f"{out} holds a finished model and no checkpoint to resume from; pass --overwrite to train again"
        )
    if ckpts and not overwrite and not resume:
        raise ClirError(
            f"{out} has checkpoints of an unfinished run (last: {ckpts[-1].name}): pass --resume to continue "
            "it, or --overwrite to start over"
        )
    if finished and not overwrite:
        raise ClirError(
            f"{out} already holds a trained model; pass --overwrite to replace it (the old model stays until "
            "the new one is written)"
        )
    if out.is_dir() and not finished and not overwrite:
        strangers = sorted(p.name for p in out.iterdir() if p.name not in _RUN_ENTRIES)
        if strangers:
            raise ClirError(
                f"--out {out} is a folder with other content ({', '.join(strangers[:5])}); give a new folder "
                "or pass --overwrite"
            )
    if resume:
        log.info("no checkpoint in %s: starting from scratch", out)
    if (out / CKPT_DIR).exists():
        shutil.rmtree(out / CKPT_DIR)
    (out / LOG_FILE).unlink(missing_ok=True)
    return False


def discard_unstarted(out: Path, *, created: bool) -> None:
    """A run that failed before its first checkpoint leaves nothing behind: its config and log go, and the
    folder too when this run created it (a failed run with a checkpoint keeps everything: --resume)."""
    if list_checkpoints(out):
        return
    for name in (CONFIG_FILE, LOG_FILE):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / CKPT_DIR, ignore_errors=True)  # at most a checkpoint that failed half-written
    if created and out.is_dir() and not any(out.iterdir()):
        out.rmdir()


def config_record(cfg: TrainConfig) -> dict[str, Any]:
    data = to_dict(cfg)
    data["resolved"] = {
        "lr": cfg.lr,
        "temperature": cfg.temperature,
        "warmup_steps": cfg.warmup_steps,
        "effective_batch_size": cfg.optim.batch_size * cfg.optim.grad_accum,
        "train_lang": cfg.train_lang,
    }
    return data


def check_same_run(
    saved: dict[str, Any], cfg: TrainConfig, ckpt: Path, *, saved_world: int = 1, world: int = 1
) -> None:
    """A resumed run must use the settings that produced the checkpoint, or it would not equal one run.

    The world size may change when the global batch (batch_size x processes) stays the same and negatives
    cross devices: each process then encodes another share of the same global batches, and the loss is
    the same. A setting the checkpoint's config lacks (written before it existed) matches its default."""
    from clir.config import DataConfig, ModelConfig, OptimConfig

    sections = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig}
    now = to_dict(cfg)

    def flat(record: dict[str, Any]) -> dict[str, Any]:
        # the batch size is checked with the world size below
        items = ((f"{name}.{k}", v) for name in sections for k, v in (record.get(name) or {}).items())
        return {k: v for k, v in items if k != "optim.batch_size"}

    defaults = flat({name: to_dict(kind()) for name, kind in sections.items()})
    diffs = [
        f"{d.key}: {d.recorded!r} -> {d.requested!r}"
        for d in compare_records(flat(saved), flat(now), defaults=defaults)
    ]
    if diffs:
        raise ResumeRefused(
            f"--resume: the config differs from the one that wrote {ckpt} ({'; '.join(diffs[:6])}); resume with "
            "the same settings, or start a new run with --overwrite / another --out"
        )
    _check_world(saved.get("optim", {}).get("batch_size"), saved_world, cfg, world, ckpt)


def _check_world(saved_batch: Any, saved_world: int, cfg: TrainConfig, world: int, ckpt: Path) -> None:
    batch = cfg.optim.batch_size
    if saved_batch is None or (saved_batch, saved_world) == (batch, world):
        return
    was = f"{saved_world} process(es) x batch {saved_batch} = {saved_world * saved_batch}"
    now = f"{world} x {batch} = {world * batch}"
    if saved_world * saved_batch != world * batch:
        fit = saved_world * saved_batch / world
        hint = f"--batch-size {int(fit)}" if fit == int(fit) else f"{saved_world} processes"
        raise ResumeRefused(
            f"--resume: {ckpt} was written with a global batch of {was} triples, this run has {now}: resume "
            f"with the same global batch ({hint} on {world} process(es)), or start over with --overwrite"
        )
    if not cfg.optim.cross_device_negatives and max(world, saved_world) > 1:
        raise ResumeRefused(
            f"--resume: {ckpt} was written by {was} with local negatives (optim.cross_device_negatives: "
            f"false), whose loss depends on how the batch is split; this run has {now}: resume on "
            f"{saved_world} process(es) with --batch-size {saved_batch}"
        )
    log.info("resuming a run of %s on %s: the same global batches", was, now)


def write_config(out: Path, cfg: TrainConfig) -> None:
    """``train_config.yaml``: the run's settings, with the derived values (lr, temperature, ...) resolved."""
    atomic_write_text(out / CONFIG_FILE, _yaml({**config_record(cfg), "out": str(out)}))


def truncate_log(path: Path, step: int) -> None:
    """Drop log records past the resumed checkpoint (they will be written again)."""
    if not path.is_file():
        return
    keep = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            rec = loads_json(line, f"{path}:{i}", allow_nan=True)  # a diverged run logs NaN losses
            if isinstance(rec, dict) and rec.get("step", 0) <= step:
                keep.append(line)
        except (ClirError, TypeError):
            continue
    atomic_write_text(path, "".join(line + "\n" for line in keep))


def write_model(encoder: Encoder, out: Path, *, keep_checkpoints: bool) -> None:
    """The model folder: built beside the run folder (with its log and config), then swapped in."""
    staging = run_workdir(out).partial
    if staging.exists():
        shutil.rmtree(staging)
    encoder.save(staging)
    for name in (LOG_FILE, CONFIG_FILE):
        if (out / name).is_file():
            shutil.copy2(out / name, staging / name)
    write_model_folder_cards(staging, encoder.config, training_facts(staging))
    if keep_checkpoints and (out / CKPT_DIR).is_dir():
        (out / CKPT_DIR).rename(staging / CKPT_DIR)
    run_workdir(out).finish(staging)


def training_facts(folder: Path) -> dict[str, Any]:
    """What a model card says of the run (:func:`clir.model.card.model_folder_facts`), from the folder's
    ``train_config.yaml`` and the last record of ``train_log.jsonl``."""
    import yaml

    facts: dict[str, Any] = {}
    try:
        cfg = yaml.safe_load((folder / CONFIG_FILE).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        cfg = {}
    data, optim, resolved = (cfg.get(k) or {} for k in ("data", "optim", "resolved"))
    facts["data"] = data.get("triples")
    facts["steps"] = optim.get("max_steps")
    facts["batch_size"] = resolved.get("effective_batch_size") or optim.get("batch_size")
    facts["lr"] = resolved.get("lr")
    try:
        last = (folder / LOG_FILE).read_text(encoding="utf-8").strip().splitlines()[-1]
        facts["final_train_loss"] = loads_json(last, str(folder / LOG_FILE))["loss"]
    except (OSError, IndexError, ValueError, KeyError):
        pass
    return {k: v for k, v in facts.items() if v is not None}


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
