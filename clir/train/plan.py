"""``clir train --dry-run``: what a run would use, what is local and what would be downloaded — offline.

Nothing is downloaded and no model is loaded: hub ids are only looked up in the local Hugging Face cache,
ir_datasets files are checked on disk (``clir.data.irds.missing_files``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clir.config import TrainConfig
from clir.errors import ClirError
from clir.model.modes import adapter_mode
from clir.model.resolve import MODEL_FILE, hub_cached, looks_like_path

_ADAPTERHUB_ID = re.compile(r"^[\w.-]+/[\w.-]+@[\w.-]+$")  # e.g. en/wiki@ukp


@dataclass
class Plan:
    out: str
    rows: list[tuple[str, str]] = field(default_factory=list)
    downloads: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, key: str, value: str) -> None:
        self.rows.append((key, value))

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": self.out,
            "plan": dict(self.rows),
            "downloads": self.downloads,
            "problems": self.problems,
        }

    def format(self) -> str:
        width = max((len(k) for k, _ in self.rows), default=0)
        lines = ["training plan (dry run: nothing downloaded, nothing trained)"]
        lines += [f"  {k.ljust(width)}  {v}" for k, v in self.rows]
        lines.append(
            "would download:" if self.downloads else "would download: nothing (all inputs are local)"
        )
        lines += [f"  - {d}" for d in self.downloads]
        if self.problems:
            lines.append("problems:")
            lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


def _registered(name: str) -> bool:
    from clir.model.resolve import local_path

    return local_path(name) != name


def _backbone(plan: Plan, backbone: str) -> None:
    p = Path(backbone).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            plan.problems.append(f"backbone folder {p} has no config.json")
        plan.add("backbone", f"{backbone} (local folder)")
    elif looks_like_path(backbone):
        plan.problems.append(f"backbone folder {backbone} does not exist")
        plan.add("backbone", f"{backbone} (MISSING)")
    elif _registered(backbone):
        plan.add("backbone", f"{backbone} (registered model, pulled)")
    elif hub_cached(backbone, "config.json"):
        plan.add("backbone", f"{backbone} (Hugging Face hub id, in the local cache)")
    else:
        plan.add("backbone", f"{backbone} (Hugging Face hub id, not cached)")
        plan.downloads.append(f"backbone + tokenizer: Hugging Face hub {backbone}")


def _language_adapter(plan: Plan, lang: str, source: str, use: str, needed: bool) -> None:
    label = f"language adapter {lang}"
    why = "needed for training" if needed else "inference only"
    if source == "new":
        plan.add(label, f"a fresh untrained adapter ({use})")
        return
    p = Path(source).expanduser()
    if p.is_dir():
        if not (p / "adapter_config.json").is_file():
            plan.problems.append(f"{label}: folder {p} has no adapter_config.json")
        plan.add(label, f"{source} (local folder; {use})")
    elif looks_like_path(source):
        plan.problems.append(f"{label}: folder {source} does not exist")
        plan.add(label, f"{source} (MISSING; {use})")
    elif _ADAPTERHUB_ID.match(source):
        plan.add(label, f"{source} (AdapterHub id; {use})")
        plan.downloads.append(f"{label}: AdapterHub {source} ({why})")
    elif hub_cached(source, "adapter_config.json"):
        plan.add(label, f"{source} (Hugging Face hub id, in the local cache; {use})")
    else:
        plan.add(label, f"{source} (Hugging Face hub id, not cached; {use})")
        plan.downloads.append(f"{label}: Hugging Face hub {source} ({why})")


def _data(plan: Plan, triples: str) -> None:
    from clir.data.resolve import irds_id
    from clir.data.triples import IRDS_PARTS, open_triples, parse_triple

    ds_id = irds_id(triples)
    if ds_id is not None:
        from clir.data.irds import by_file, load_dataset, missing_files

        try:
            ds = load_dataset(ds_id)
        except ClirError as e:
            plan.problems.append(str(e))
            plan.add("triples", f"{triples} (unknown)")
            return
        if not ds.has_docpairs():
            plan.problems.append(f"{triples} has no docpairs (training triples)")
        missing = missing_files(ds_id, tuple(p for p in IRDS_PARTS if getattr(ds, f"has_{p}")()))
        plan.add("triples", f"{triples} (ir_datasets docpairs, streamed)")
        for parts, path, urls in by_file(missing):
            src = f" from {urls[0]}" if urls else ""
            plan.downloads.append(f"ir_datasets {ds_id} {parts}: {path}{src}")
        return
    p = Path(triples).expanduser()
    if not p.is_file():
        plan.problems.append(f"triples file {triples} does not exist")
        plan.add("triples", f"{triples} (MISSING)")
        return
    try:
        open_triples(p)
        with open(p, "rb") as f:  # check the format on the first record; the file is streamed in training
            first = next((line for line in f if line.strip()), None)
        if first is None:
            raise ClirError(f"{p} is empty")
        parse_triple(first, f"{p}:1")
    except ClirError as e:
        plan.problems.append(str(e))
    plan.add("triples", f"{triples} (local JSONL, {p.stat().st_size / 1e6:.1f} MB, streamed)")


def training_plan(cfg: TrainConfig, *, out: str | None = None, resume: bool = False) -> Plan:
    """Everything ``clir train`` would use, checked offline."""
    from clir.train.checkpoint import list_checkpoints

    m, o = cfg.model, cfg.optim
    target = out or cfg.out
    plan = Plan(out=str(target))
    if not target:
        plan.problems.append("no output folder: give --out DIR or `out:` in the config")
    else:
        t = Path(target).expanduser()
        ckpts = list_checkpoints(t)
        if ckpts:
            state = f"has checkpoints up to {ckpts[-1].name}" + (" (--resume continues)" if resume else "")
        elif (t / MODEL_FILE).is_file():
            state = "holds a finished model (--overwrite replaces it)"
        else:
            state = "new"
        plan.add("output", f"{t} ({state})")
    plan.add("mode", m.adapter_mode)
    _backbone(plan, m.backbone)
    mode = adapter_mode(m)
    if mode.trains_backbone:
        plan.add(
            "trains", "every backbone weight" + ("" if m.tied else " (query and passage encoders apart)")
        )
    else:
        arch = m.task_adapter
        names = " + ".join(mode.task_adapters(m))
        plan.add(
            "trains", f"task adapter {names} only ({arch.config}, reduction factor {arch.reduction_factor:g})"
        )
    if mode.routes_languages:
        for lang, source in sorted(m.language_adapters.items()):
            use = (
                f"frozen, under the task adapter in training ({m.source_lang})"
                if lang == m.source_lang
                else "inference only, loaded when routed"
            )
            _language_adapter(plan, lang, source, use, lang == m.source_lang)
    plan.add(
        "encoder",
        f"pooling {m.pooling}, normalize {m.normalize}, prefixes {m.query_prefix!r}/{m.passage_prefix!r}, "
        f"max lengths {m.max_query_length}/{m.max_passage_length}",
    )
    d = cfg.data
    if d.max_query_length or d.max_passage_length:
        plan.add(
            "train lengths",
            f"{d.max_query_length or m.max_query_length}/{d.max_passage_length or m.max_passage_length} tokens",
        )
    _data(plan, cfg.data.triples)
    plan.add(
        "batch",
        f"{o.batch_size} triples x {o.grad_accum} accumulation = {o.batch_size * o.grad_accum} per step, "
        f"{cfg.data.negatives} hard negative(s) each + in-batch negatives",
    )
    plan.add(
        "under torchrun",
        f"x processes (global batch {o.batch_size} x N), negatives "
        + ("shared across processes" if o.cross_device_negatives else "local to each process"),
    )
    plan.add(
        "steps run",
        ("packed where the model allows" if o.packing else "padded")
        + (f", GradCache in chunks of {o.grad_cache_chunk} texts" if o.grad_cache else ""),
    )
    plan.add("steps", f"{o.max_steps} ({cfg.warmup_steps} warm-up, linear decay)")
    plan.add("optimiser", f"AdamW lr {cfg.lr:g}, weight decay {o.weight_decay:g}, clip {o.max_grad_norm}")
    plan.add("loss", f"contrastive, temperature {cfg.temperature:g}")
    plan.add(
        "precision",
        f"{o.precision} (auto: bf16 on GPUs and on CPUs with native bf16, else fp32){', torch.compile' if o.compile else ''}",
    )
    plan.add("seed", str(o.seed))
    plan.add("checkpoints", f"every {cfg.checkpoint.every} steps, keep {cfg.checkpoint.keep}")
    return plan
