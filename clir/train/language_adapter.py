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
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from clir.atomic import swap_into_place
from clir.errors import ClirError

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


# ---------------------------------------------------------------------- text sources
class TextSource:
    """Texts from a plain text file (one a line) or any collection source (``load_collection``)."""

    def __init__(self, src: str) -> None:
        from clir.data.collections import IRDS_PREFIX, load_collection

        self.name = src
        p = Path(src).expanduser()
        self._path: Path | None = None
        self._collection = None
        if src.startswith(IRDS_PREFIX) or p.is_dir() or p.suffix in (".jsonl", ".json", ".tsv"):
            self._collection = load_collection(src)
        elif p.is_file():
            self._path = p
        else:
            raise ClirError(
                f"--text {src}: not a text file, a .jsonl/.tsv docs file, a collection folder or irds:<id>"
            )

    def records(self, start: int = 0) -> Iterator[str]:
        if self._path is not None:
            texts: Iterator[str] = (
                line.strip() for line in open(self._path, encoding="utf-8", errors="replace")
            )
        else:
            texts = (d.full_text().strip() for d in self._collection.docs())
        return itertools.islice((t for t in texts if t), start, None)


def _texts_forever(source: TextSource, *, block: int, seed: int) -> Iterator[str]:
    from clir.data.triples import block_shuffled

    for epoch in itertools.count():
        n = 0
        for text in block_shuffled(source.records, block=block, seed=seed, epoch=epoch):
            n += 1
            yield text
        if n == 0:
            raise ClirError(f"--text {source.name}: no text found")


# ---------------------------------------------------------------------- backbone
def resolve_backbone(spec: str) -> str:
    """A folder, a registered model name (``clir models list``) or a hub id -> what from_pretrained takes."""
    from clir.model.registry import lookup

    p = Path(spec).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ClirError(f"--backbone {spec}: folder has no config.json")
        return str(p.resolve())
    reg = lookup(spec)
    if reg is not None:
        if not reg.path.is_dir():
            raise ClirError(f"model {spec!r} is not on this machine yet: run `clir models pull {spec}`")
        return str(reg.path)
    if spec.startswith((".", "/", "~")):
        raise ClirError(f"--backbone {spec}: no such folder")
    return spec


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
    """The MLM head as one module applied to hidden states (None when the model splits it up)."""
    prefix = model.base_model_prefix
    heads = [m for name, m in model.named_children() if name != prefix]
    return heads[0] if len(heads) == 1 else None


def train_language_adapter(
    args: LanguageAdapterArgs, *, show_progress: bool | None = None
) -> LanguageAdapterResult:
    import adapters
    import numpy as np
    import torch
    from transformers import AutoTokenizer, DataCollatorForLanguageModeling, get_linear_schedule_with_warmup

    from clir.config import AdapterArch
    from clir.progress import progress

    if not args.lang or not args.lang.replace("-", "").replace("_", "").isalnum():
        raise ClirError(f"--lang {args.lang!r}: expected a language code such as de or pt-br")
    for key in ("max_steps", "batch_size", "max_length"):
        if getattr(args, key) < 1:
            raise ClirError(f"--{key.replace('_', '-')} must be >= 1")
    if not 0 < args.mlm_probability < 1:
        raise ClirError("--mlm-probability must be in (0, 1)")
    out = Path(args.out).expanduser()
    if out.exists() and not args.overwrite:
        raise ClirError(f"--out {out} exists; pass --overwrite to replace it")
    source = TextSource(args.text)
    backbone = resolve_backbone(args.backbone)

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        tokenizer = AutoTokenizer.from_pretrained(backbone)
    except (OSError, ValueError) as e:
        raise ClirError(f"could not load the tokenizer of {backbone!r}: {e}") from None
    if tokenizer.mask_token is None:
        raise ClirError(f"the tokenizer of {backbone!r} has no mask token: it cannot do masked LM")
    model, fresh_head = load_mlm(backbone)
    adapters.init(model)
    arch = AdapterArch(
        config="seq_bn_inv" if args.invertible else "seq_bn",
        reduction_factor=args.reduction_factor,
        non_linearity=args.non_linearity,
    )
    model.add_adapter(args.lang, config=arch.to_adapters_config())
    model.train_adapter(args.lang)  # freezes the backbone, embeddings included
    prefix = model.base_model_prefix
    for name, p in model.named_parameters():
        if not name.startswith(prefix + "."):
            p.requires_grad_(fresh_head)  # a pretrained head stays frozen; a fresh one must learn
    model.to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    log.info(
        "training %s parameters (language adapter %s%s)",
        f"{sum(p.numel() for p in params):,}",
        args.lang,
        " + fresh MLM head" if fresh_head else "",
    )
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(args.warmup_ratio * args.max_steps), args.max_steps
    )
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=args.mlm_probability)
    head = _head_module(model)
    use_bf16 = args.precision == "bf16" or (
        args.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    )
    texts = _texts_forever(source, block=args.shuffle_block, seed=args.seed)

    bar = (
        progress(total=args.max_steps, desc=f"mlm {args.lang}", unit="step")
        if show_progress is not False
        else None
    )
    t_start = time.perf_counter()
    logged: list[float] = []
    interval: list[float] = []
    history = []
    try:
        for step in range(1, args.max_steps + 1):
            batch_texts = [next(texts) for _ in range(args.batch_size)]
            enc = tokenizer(batch_texts, truncation=True, max_length=args.max_length)
            feats = [{k: enc[k][i] for k in enc} for i in range(len(batch_texts))]
            batch = {k: v.to(device) for k, v in collator(feats).items()}
            labels = batch.pop("labels")
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                if head is not None:
                    # logits only at masked positions: the vocabulary (250k for e5) dominates otherwise
                    hidden = model.base_model(**batch).last_hidden_state
                    sel = labels != -100
                    logits = head(hidden[sel])
                    loss = torch.nn.functional.cross_entropy(logits.float(), labels[sel])
                else:
                    loss = model(**batch, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            interval.append(float(loss.detach()))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{interval[-1]:.3f}")
            if step % args.log_every == 0 or step == args.max_steps:
                logged.append(sum(interval) / len(interval))
                history.append({"step": step, "loss": round(logged[-1], 5)})
                interval = []
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t_start
    model.eval()

    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    model.save_adapter(str(tmp), args.lang, with_head=False)
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
        "fresh_head": fresh_head,
        "loss": history,
    }
    (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    swap_into_place(tmp, out)
    return LanguageAdapterResult(
        out=out,
        steps=args.max_steps,
        first_loss=logged[0],
        last_loss=logged[-1],
        texts_per_s=args.max_steps * args.batch_size / seconds if seconds > 0 else 0.0,
        seconds=seconds,
        fresh_head=fresh_head,
    )
