"""MAD-X language adapters for any language (``clir train-language-adapter``): masked language modelling on
monolingual text with the backbone frozen and only the language adapter (optionally with invertible adapters)
trained.

Backbones shipped without an MLM head (multilingual-e5-small is a plain BertModel) get a fresh head whose
decoder is tied to the (frozen) word embeddings; its transform and bias train with the adapter. A backbone's
own pretrained head stays frozen, as in MAD-X.

The output folder is an ``adapters`` library adapter folder (adapter_config.json + weights), loadable as a
language source anywhere: ``language_adapters: {de: /path/to/folder}``."""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clir.atomic import swap_into_place
from clir.errors import ClirError
from clir.train import mlm

log = logging.getLogger(__name__)

INFO_FILE = "clir_language_adapter.json"


@dataclass
class LanguageAdapterArgs:
    lang: str
    #: a text file (one text a line), a .jsonl/.tsv docs file, a collection folder, or irds:<id>
    text: str
    #: a Hugging Face backbone folder or hub id, or a registered model name
    backbone: str
    out: str
    max_steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-4
    warmup_ratio: float = 0.05
    invertible: bool = True
    reduction_factor: float = 2
    non_linearity: str = "relu"
    max_length: int = 128
    mlm_probability: float = 0.15
    shuffle_block: int = 10000
    seed: int = 42
    precision: str = "auto"
    device: str | None = None
    overwrite: bool = False
    log_every: int = 10
    #: share of the text held out to score the adapter (by a seeded hash of each text), at most dev_max texts
    dev_fraction: float = 0.05
    dev_max: int = 500
    #: also train the MLM head alone on the same budget (a backbone with its own head: score it unadapted)
    baseline: bool = True
    checkpoint_every: int = 50
    resume: bool = False
    #: CPU threads (None: torch's default); a fixed count makes CPU runs repeatable bit for bit
    threads: int | None = None


@dataclass
class LanguageAdapterResult:
    out: Path
    steps: int
    #: mean MLM loss of the first and the last logged interval
    first_loss: float
    last_loss: float
    texts_per_s: float
    seconds: float
    fresh_head: bool
    #: mean MLM loss per masked token of the held-out texts: the adapter, and the head-only baseline
    dev_loss: float = float("nan")
    baseline_dev_loss: float | None = None
    dev_texts: int = 0


# ---------------------------------------------------------------------- backbone
def resolve_backbone(spec: str) -> str:
    """A folder, a registered model name (``clir models list``) or a hub id -> what from_pretrained takes."""
    from clir.model.resolve import resolve_model

    ref = resolve_model(spec, what=f"--backbone {spec}").require_local()
    if ref.kind in ("clir", "config"):
        raise ClirError(f"--backbone {spec}: a clir model, not a backbone (its backbone is {ref.backbone})")
    return ref.backbone


def load_mlm(backbone: str):
    """(masked-LM model, fresh head?) for ``backbone``; a model without a head gets one tied to its embeddings."""
    from transformers import AutoModelForMaskedLM

    try:
        model, info = AutoModelForMaskedLM.from_pretrained(backbone, output_loading_info=True)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ClirError(f"could not load the backbone {backbone!r} with a masked-LM head: {first}") from None
    prefix = model.base_model_prefix
    fresh = [k for k in info["missing_keys"] if not k.startswith(prefix + ".")]
    if fresh:
        model.tie_weights()  # the decoder shares the word embeddings; only transform + bias are new
        log.info("backbone has no MLM head: training a fresh one tied to the word embeddings")
    return model, bool(fresh)


def _head_module(model):
    """The MLM head as one module applied to hidden states."""
    prefix = model.base_model_prefix
    heads = [m for name, m in model.named_children() if name != prefix]
    if len(heads) != 1:
        raise ClirError(f"{type(model).__name__}: cannot find its masked-LM head as one module")
    return heads[0]


@dataclass
class _Phase:
    """One MLM run: ``adapter`` (the language adapter, plus a fresh head) or ``head-only`` (the same budget
    with no adapter: what a fresh head learns on the frozen backbone by itself)."""

    name: str
    folder: Path  # its checkpoints

    @property
    def adapter(self) -> bool:
        return self.name == "adapter"


def _check_args(args: LanguageAdapterArgs) -> None:
    if not args.lang or not args.lang.replace("-", "").replace("_", "").isalnum():
        raise ClirError(f"--lang {args.lang!r}: expected a language code such as de or pt-br")
    for key in ("max_steps", "batch_size", "max_length", "checkpoint_every", "dev_max"):
        if getattr(args, key) < 1:
            raise ClirError(f"--{key.replace('_', '-')} must be >= 1")
    if not 0 < args.mlm_probability < 1:
        raise ClirError("--mlm-probability must be in (0, 1)")
    if not 0 < args.dev_fraction < 0.5:
        raise ClirError("--dev-fraction must be in (0, 0.5)")
    if not args.lr > 0:
        raise ClirError("--lr must be > 0")


def _run_record(args: LanguageAdapterArgs, backbone: str) -> dict[str, Any]:
    """What a resumed run must share with the run that wrote its checkpoints."""
    keys: tuple[str, ...] = (
        "lang",
        "text",
        "max_steps",
        "batch_size",
        "lr",
        "warmup_ratio",
        "invertible",
        "reduction_factor",
    )
    keys += ("non_linearity", "max_length", "mlm_probability", "seed", "dev_fraction", "dev_max", "baseline")
    return {"backbone": backbone, **{k: getattr(args, k) for k in keys}}


def _prepare_work(args: LanguageAdapterArgs, out: Path, record: dict[str, Any]) -> Path:
    """The ``OUT.partial`` work folder: fresh, or kept for ``--resume`` when it belongs to the same run."""
    work = out.with_name(out.name + ".partial")
    saved = work / "run.json"
    if work.exists() and args.resume and saved.is_file():
        try:
            before = json.loads(saved.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            before = None
        if before != record:
            raise ClirError(
                f"{work} was written by a run with other settings: drop --resume (or pass --overwrite) to "
                "start over"
            )
        log.info("resuming from %s", work)
        return work
    if work.exists():
        if not args.resume and not args.overwrite and any(work.rglob("step-*")):
            raise ClirError(f"{work} holds checkpoints of an unfinished run: pass --resume to continue it")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    saved.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return work


def _arch(args: LanguageAdapterArgs):
    from clir.config import AdapterArch

    return AdapterArch(
        config="seq_bn_inv" if args.invertible else "seq_bn",
        reduction_factor=args.reduction_factor,
        non_linearity=args.non_linearity,
    )


def _load_model(args: LanguageAdapterArgs, backbone: str, phase: _Phase, device):
    """The masked-LM model of a phase, seeded so both phases start from the same fresh head."""
    import adapters
    import torch

    torch.manual_seed(args.seed)
    model, fresh_head = load_mlm(backbone)
    adapters.init(model)
    prefix = model.base_model_prefix
    if phase.adapter:
        model.add_adapter(args.lang, config=_arch(args).to_adapters_config())
        model.train_adapter(args.lang)  # freezes the backbone, embeddings included
    else:
        for p in model.parameters():
            p.requires_grad_(False)
    for name, p in model.named_parameters():
        if not name.startswith(prefix + "."):
            p.requires_grad_(fresh_head)  # a pretrained head stays frozen; a fresh one must learn
    model.to(device)
    return model, fresh_head


@dataclass
class _PhaseRun:
    """The optimiser, schedule, mask RNG, step and loss history of a phase: what its checkpoints hold."""

    named: list[tuple[str, Any]]
    optimizer: Any
    scheduler: Any
    gen: Any  # the torch.Generator that draws the MLM masks
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    interval: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @classmethod
    def start(cls, args: LanguageAdapterArgs, named: list[tuple[str, Any]], phase: _Phase) -> _PhaseRun:
        """A fresh phase, or the one its last checkpoint holds."""
        import torch
        from transformers import get_linear_schedule_with_warmup

        from clir.train.checkpoint import list_checkpoints

        optimizer = torch.optim.AdamW([p for _, p in named], lr=args.lr, weight_decay=0.0)
        scheduler = get_linear_schedule_with_warmup(
            optimizer, int(args.warmup_ratio * args.max_steps), args.max_steps
        )
        run = cls(named, optimizer, scheduler, torch.Generator().manual_seed(args.seed))
        ckpts = list_checkpoints(phase.folder)
        if ckpts:
            run._restore(ckpts[-1], phase.name)
        return run

    def _restore(self, ckpt: Path, phase: str) -> None:
        import torch

        from clir.train.checkpoint import load_checkpoint, set_rng_state

        saved = load_checkpoint(ckpt)
        with torch.no_grad():
            for n, p in self.named:
                p.copy_(saved["model"][n])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.gen.set_state(saved["rng"]["mask"])
        set_rng_state(saved["rng"]["global"])
        self.step, self.history = int(saved["step"]), list(saved["history"])
        self.seconds = float(saved["seconds"])
        self.interval = [float(x) for x in saved["interval"]]
        log.info("%s: resumed at step %d from %s", phase, self.step, ckpt)

    def save(self, args: LanguageAdapterArgs, folder: Path, seconds: float) -> None:
        from clir.train.checkpoint import rng_state, save_checkpoint

        state = {
            "step": self.step,
            "data": {"texts": self.step * args.batch_size},
            "model": {n: p.detach().cpu().clone() for n, p in self.named},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {"mask": self.gen.get_state(), "global": rng_state()},  # dropout draws from the global one
            "history": self.history,
            "interval": self.interval,
            "seconds": seconds,
        }
        save_checkpoint(folder, self.step, state, keep=1)


def _train_phase(args, backbone, phase: _Phase, tokenizer, train_texts, dev, device, bar_desc, show_progress):
    """Train one phase (resuming from its last checkpoint); returns its record with the dev loss."""
    from clir.progress import progress

    model, fresh_head = _load_model(args, backbone, phase, device)
    head = _head_module(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    record: dict[str, Any] = {
        "phase": phase.name,
        "trainable_parameters": sum(p.numel() for _, p in named),
        "fresh_head": fresh_head,
    }
    if not named:  # a pretrained head and no adapter: nothing to train, only to score
        record.update(steps=0, seconds=0.0, dev_loss=round(mlm.dev_loss(model, head, dev, device), 5))
        return record, model
    run = _PhaseRun.start(args, named, phase)
    texts = itertools.islice(train_texts(), run.step * args.batch_size, None)
    bar = progress(total=args.max_steps, desc=bar_desc, unit="step") if show_progress is not False else None
    if bar is not None and run.step:
        bar.update(run.step)
    model.train()
    t0 = time.perf_counter()
    try:
        while run.step < args.max_steps:
            loss = _mlm_step(args, model, head, tokenizer, texts, device, phase, run)
            run.interval.append(loss)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}")
            if run.step % args.log_every == 0 or run.step == args.max_steps:
                run.history.append(
                    {"step": run.step, "loss": round(sum(run.interval) / len(run.interval), 5)}
                )
                run.interval = []
            if run.step % args.checkpoint_every == 0 and run.step < args.max_steps:
                run.save(args, phase.folder, run.seconds + time.perf_counter() - t0)
    finally:
        if bar is not None:
            bar.close()
    seconds = run.seconds + time.perf_counter() - t0
    record.update(
        steps=run.step,
        seconds=round(seconds, 1),
        texts_per_s=round(run.step * args.batch_size / seconds, 2) if seconds > 0 else None,
        loss=run.history,
        dev_loss=round(mlm.dev_loss(model, head, dev, device), 5),
    )
    return record, model


def _mlm_step(
    args, model, head, tokenizer, texts: Iterator[str], device, phase: _Phase, run: _PhaseRun
) -> float:
    """One optimiser step of masked-LM loss on the next batch of texts; returns the loss."""
    import torch

    enc = mlm.tokenize(tokenizer, [next(texts) for _ in range(args.batch_size)], args.max_length)
    ids, labels = mlm.mask_tokens(enc, tokenizer, args.mlm_probability, run.gen)
    loss_sum, n = mlm.masked_loss(
        model,
        head,
        ids.to(device),
        enc["attention_mask"].to(device),
        labels.to(device),
        encoder_grad=phase.adapter,
    )
    loss = loss_sum / max(n, 1)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for _, p in run.named], 1.0)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    return float(loss.detach())


def train_language_adapter(
    args: LanguageAdapterArgs, *, show_progress: bool | None = None
) -> LanguageAdapterResult:
    """Train ``args.lang``'s adapter, score it on held-out text against a head-only run of the same budget,
    and write the adapter folder with ``clir_language_adapter.json`` (steps, dev losses, times)."""
    import torch
    from transformers import AutoTokenizer

    _check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out).expanduser()
    if out.exists() and not args.overwrite:
        raise ClirError(f"--out {out} exists; pass --overwrite to replace it")
    source = mlm.TextSource(args.text)
    backbone = resolve_backbone(args.backbone)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        tokenizer = AutoTokenizer.from_pretrained(backbone)
    except (OSError, ValueError) as e:
        raise ClirError(f"could not load the tokenizer of {backbone!r}: {e}") from None
    if tokenizer.mask_token is None:
        raise ClirError(f"the tokenizer of {backbone!r} has no mask token: it cannot do masked LM")
    split = mlm.DevSplit(args.dev_fraction, args.seed, args.dev_max)
    dev_texts = split.dev(source.records())
    if not dev_texts:
        raise ClirError(
            f"--text {args.text}: no text falls in the dev slice (--dev-fraction {args.dev_fraction}): "
            "give more text or a larger --dev-fraction"
        )
    dev = mlm.dev_batches(
        tokenizer,
        dev_texts,
        max_length=args.max_length,
        probability=args.mlm_probability,
        seed=args.seed + 1,
        batch_size=args.batch_size,
    )
    record = _run_record(args, backbone)
    work = _prepare_work(args, out, record)

    def train_texts() -> Iterator[str]:
        return split.train(mlm.texts_forever(source, block=args.shuffle_block, seed=args.seed))

    phases = [_Phase("adapter", work / "adapter")]
    if args.baseline:
        phases.append(_Phase("head-only", work / "head-only"))
    records: dict[str, dict[str, Any]] = {}
    for phase in phases:
        done = work / f"{phase.name}.json"
        if done.is_file():  # finished by an earlier process
            records[phase.name] = json.loads(done.read_text(encoding="utf-8"))
        else:
            records[phase.name] = _run_phase(
                args, backbone, phase, tokenizer, train_texts, dev, device, work, show_progress
            )
            done.write_text(json.dumps(records[phase.name], indent=2) + "\n", encoding="utf-8")
        if phase.adapter and not records[phase.name]["fresh_head"]:
            # a pretrained head: the baseline is the backbone without the adapter, scored, not trained
            phases[1:] = [_Phase("no-adapter", work / "no-adapter")] if args.baseline else []
    return _finish(args, out, work, backbone, _arch(args), records, dev_texts)


def _run_phase(args, backbone, phase: _Phase, tokenizer, train_texts, dev, device, work: Path, show_progress):
    """Train one phase in this process; the adapter phase leaves its weights in ``work/weights``."""
    rec, model = _train_phase(
        args,
        backbone,
        phase,
        tokenizer,
        train_texts,
        dev,
        device,
        f"mlm {args.lang} {phase.name}",
        show_progress,
    )
    if phase.adapter:
        model.save_adapter(str(work / "weights"), args.lang, with_head=False)
    shutil.rmtree(phase.folder, ignore_errors=True)  # its checkpoints: the phase is done
    return rec


def _finish(args, out: Path, work: Path, backbone, arch, records, dev_texts) -> LanguageAdapterResult:
    adapter = records["adapter"]
    baseline = next((r for k, r in records.items() if k != "adapter"), None)
    info = {
        "lang": args.lang,
        "backbone": backbone,
        "text": args.text,
        "arch": {
            "config": arch.config,
            "reduction_factor": arch.reduction_factor,
            "non_linearity": arch.non_linearity,
        },
        "steps": args.max_steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "mlm_probability": args.mlm_probability,
        "seed": args.seed,
        "fresh_head": adapter["fresh_head"],
        "dev": {"fraction": args.dev_fraction, "texts": len(dev_texts), "seed": args.seed},
        "dev_loss": adapter["dev_loss"],
        "baseline": baseline,
        "seconds": round(sum(r.get("seconds", 0.0) for r in records.values()), 1),
        "loss": adapter.get("loss", []),
        "adapter_run": {k: v for k, v in adapter.items() if k != "loss"},
    }
    weights = work / "weights"
    (weights / INFO_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    swap_into_place(weights, out)
    shutil.rmtree(work, ignore_errors=True)
    hist = adapter.get("loss") or [{"loss": float("nan")}]
    return LanguageAdapterResult(
        out=out,
        steps=args.max_steps,
        first_loss=hist[0]["loss"],
        last_loss=hist[-1]["loss"],
        texts_per_s=adapter.get("texts_per_s") or 0.0,
        seconds=info["seconds"],
        fresh_head=adapter["fresh_head"],
        dev_loss=adapter["dev_loss"],
        baseline_dev_loss=baseline["dev_loss"] if baseline else None,
        dev_texts=len(dev_texts),
    )
