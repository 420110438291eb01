"""Masked language modelling pieces of ``clir train-language-adapter``: the text it reads (a text file or
any collection, streamed without end), the held-out dev slice, seeded masking, and the dev loss that tells a
trained language adapter from a fresh MLM head doing the work."""

from __future__ import annotations

import itertools
import logging
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clir.config.mlm import DevSettings, DevSplit  # noqa: F401  (their home is config; kept importable here)
from clir.errors import ClirError
from clir.workdir import WorkDir

log = logging.getLogger(__name__)


class TextSource:
    """Texts from a plain text file (one a line) or any collection source (``load_collection``)."""

    def __init__(self, src: str) -> None:
        from clir.data.resolve import load_collection, names_collection

        self.name = src
        p = Path(src).expanduser()
        self._path: Path | None = None
        self._collection = None
        if names_collection(src):
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
            assert self._collection is not None
            texts = (d.full_text().strip() for d in self._collection.docs())
        return itertools.islice((t for t in texts if t), start, None)


def texts_forever(source: TextSource, *, block: int, seed: int) -> Iterator[str]:
    from clir.data.triples import block_shuffled

    for epoch in itertools.count():
        n = 0
        for text in block_shuffled(source.records, block=block, seed=seed, epoch=epoch):
            n += 1
            yield text
        if n == 0:
            raise ClirError(f"--text {source.name}: no text found")


#: dev batches have one size for every run, so that the same texts get the same masks
DEV_BATCH = 32


def prepare_dev(tokenizer, source: TextSource, dev: DevSettings, max_length: int, probability: float):
    """(masked dev batches, dev texts) of ``source``."""
    texts = dev.split().dev(source.records())
    if not texts:
        raise ClirError(
            f"--text {source.name}: no text falls in the dev slice (--dev-fraction {dev.fraction}): give more "
            "text or a larger --dev-fraction"
        )
    batches = dev_batches(
        tokenizer,
        texts,
        max_length=max_length,
        probability=probability,
        seed=dev.seed + 1,
        batch_size=DEV_BATCH,
    )
    return batches, texts


def resolve_backbone(spec: str) -> str:
    """A folder, a registered model name (``clir models list``) or a hub id -> what from_pretrained takes."""
    from clir.model.resolve import resolve_model

    ref = resolve_model(spec, what=f"--backbone {spec}").require_local()
    if ref.kind in ("clir", "config"):
        raise ClirError(f"--backbone {spec}: a clir model, not a backbone (its backbone is {ref.backbone})")
    return ref.backbone


def load_tokenizer(backbone: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(backbone)
    except (OSError, ValueError) as e:
        raise ClirError(f"could not load the tokenizer of {backbone!r}: {e}") from None
    if tokenizer.mask_token is None:
        raise ClirError(f"the tokenizer of {backbone!r} has no mask token: it cannot do masked LM")
    return tokenizer


def open_run(args: Any) -> tuple[Path, str, Any, Any]:
    """(output folder, backbone, tokenizer, device) of an MLM trainer's arguments (``threads``, ``out``,
    ``overwrite``, ``backbone``, ``device``), checked before any work: an existing --out needs --overwrite."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out).expanduser()
    if out.exists() and not args.overwrite:
        raise ClirError(f"--out {out} exists; pass --overwrite to replace it")
    backbone = resolve_backbone(args.backbone)
    return out, backbone, load_tokenizer(backbone), pick_device(args.device)


def pick_device(device: str | None):
    from clir.model.checks import torch_device

    return torch_device(device)


def use_bf16(precision: str, device) -> bool:
    """Whether an MLM trainer's ``--precision`` means bf16 autocast on ``device``: ``auto`` picks it where the
    device computes bf16 natively (GPUs that support it; CPUs with AVX512-BF16 or AMX), as the encoder and
    ``clir train`` do. Dev losses are scored in fp32 either way."""
    import torch

    from clir.model.precision import autocast_dtype

    return precision == "bf16" or (precision == "auto" and autocast_dtype("auto", device) == torch.bfloat16)


def packs(model, tokenizer, device) -> bool:
    """Whether ``model`` can run MLM batches packed (the encoder's probe: packed == padded in fp32)."""
    from clir.model.packing import packs_like_padding, probe_ids

    ok = packs_like_padding(model.base_model, probe_ids(tokenizer, ""), tokenizer.pad_token_id, device)
    if not ok:
        log.info("the model's attention cannot be split per text: MLM batches run padded")
    return ok


#: the settings a resumed MLM run must share, in ``OUT.partial``
RUN_FILE = "run.json"


def prepare_work(out: Path, record: dict[str, Any], *, resume: bool, overwrite: bool) -> Path:
    """The ``OUT.partial`` work folder of a run: fresh, or kept for ``resume`` when it belongs to the same
    run (``record``: the settings a resumed run must share; :class:`clir.errors.ResumeRefused` when they
    differ)."""
    import shutil

    workdir = WorkDir(out)
    work = workdir.partial
    if work.exists() and resume:
        check = workdir.check_record(RUN_FILE, record)
        if check.found:
            if not check.same:
                raise check.refusal(
                    work, "a run with other settings starts over without --resume (or with --overwrite)"
                )
            log.info("resuming from %s", work)
            return work
    if work.exists():
        if not resume and not overwrite and any(work.rglob("step-*")):
            raise ClirError(f"{work} holds checkpoints of an unfinished run: pass --resume to continue it")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    workdir.write_record(RUN_FILE, record, end="\n")
    return work


def open_work(workdir: WorkDir, record: dict[str, Any], *, resume: bool, overwrite: bool) -> Path:
    """Lock ``OUT`` for this run (held until ``workdir.unlock()``), undo a swap a kill interrupted, and
    prepare ``OUT.partial`` (:func:`prepare_work`)."""
    out = workdir.out
    workdir.lock(what="training run")
    try:
        workdir.recover()
        if out.exists() and not overwrite:  # a previous version the recovery restored
            raise ClirError(f"--out {out} exists; pass --overwrite to replace it")
        return prepare_work(out, record, resume=resume, overwrite=overwrite)
    except BaseException:
        workdir.unlock()
        raise


def mask_tokens(batch: dict[str, Any], tokenizer, probability: float, generator) -> tuple[Any, Any]:
    """BERT's masking (``probability`` of the real tokens: 80% [MASK], 10% random, 10% kept), drawn from
    ``generator`` so that dev masks are fixed and training masks resume exactly. Returns (input_ids, labels)."""
    import torch

    ids = batch["input_ids"].clone()
    labels = ids.clone()
    special = batch["special_tokens_mask"].bool() | (batch["attention_mask"] == 0)
    draw = torch.rand(ids.shape, generator=generator)
    masked = (draw < probability) & ~special
    if not masked.any():  # a batch of very short texts: mask one real token so the loss is defined
        first = (~special).nonzero()
        if len(first):
            masked[first[0, 0], first[0, 1]] = True
    labels[~masked] = -100
    action = torch.rand(ids.shape, generator=generator)
    ids[masked & (action < 0.8)] = tokenizer.mask_token_id
    randomise = masked & (action >= 0.8) & (action < 0.9)
    random_ids = torch.randint(len(tokenizer), ids.shape, generator=generator)
    ids[randomise] = random_ids[randomise]
    return ids, labels


def tokenize(tokenizer, texts: list[str], max_length: int) -> dict[str, Any]:
    return tokenizer(
        texts,
        truncation=True,
        max_length=max_length,
        padding=True,
        return_special_tokens_mask=True,
        return_tensors="pt",
    )


@dataclass
class DevBatch:
    input_ids: Any
    attention_mask: Any
    labels: Any


def dev_batches(
    tokenizer, texts: list[str], *, max_length: int, probability: float, seed: int, batch_size: int
) -> list[DevBatch]:
    """The dev set, tokenised and masked once: every model is scored on the same masked tokens."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenize(tokenizer, texts[i : i + batch_size], max_length)
        ids, labels = mask_tokens(enc, tokenizer, probability, gen)
        out.append(DevBatch(ids, enc["attention_mask"], labels))
    return out


def _packed_hidden(model, input_ids, attention_mask, labels):
    """(last hidden states, labels) of a padded batch run packed: the texts end to end in one row, no padding
    (:mod:`clir.model.packing`), so no compute is spent on padding; the states equal the padded run's up to
    float rounding. Rows are packed shortest first, so that equal lengths share one attention call."""
    import torch

    from clir.model.packing import hidden_packed, pack

    lengths = attention_mask.sum(1).tolist()
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    ids = [input_ids[i, : lengths[i]].tolist() for i in order]
    inputs, _ = pack(model.base_model, ids, input_ids.device)
    hidden = hidden_packed(model.base_model, inputs, [lengths[i] for i in order], {})[0]
    return hidden, torch.cat([labels[i, : lengths[i]] for i in order])


def masked_loss(
    model,
    head,
    input_ids,
    attention_mask,
    labels,
    *,
    encoder_grad: bool = True,
    packed: bool = False,
    keys: Sequence[int] | None = None,
):
    """Cross entropy over the masked tokens, with logits computed only there (the 250k-word output layer of
    XLM-R vocabularies dominates otherwise). ``packed``: run the encoder packed (:func:`_packed_hidden`).
    ``keys``: one per row, for keyed dropout (:mod:`clir.train.dropout`) in training, so that a text's
    dropout does not depend on its batch or process. Returns (sum of token losses, number of tokens)."""
    import contextlib

    import torch

    ctx = contextlib.nullcontext() if encoder_grad else torch.no_grad()
    with ctx:
        if keys is not None:
            hidden, labels = _keyed_hidden(model, input_ids, attention_mask, labels, keys, packed=packed)
        elif packed:
            hidden, labels = _packed_hidden(model, input_ids, attention_mask, labels)
        else:
            hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    sel = labels != -100
    logits = head(hidden[sel])
    loss = torch.nn.functional.cross_entropy(logits.float(), labels[sel], reduction="sum")
    return loss, int(sel.sum())


def _keyed_hidden(model, input_ids, attention_mask, labels, keys: Sequence[int], *, packed: bool):
    """(hidden states, labels) of a training batch under keyed dropout: packed texts end to end in one row
    (attention per text, as :class:`~clir.train.dropout.KeyedDropout` runs it), or the padded rows."""
    import torch

    from clir.model.packing import pack
    from clir.train.dropout import KeyedDropout

    lengths = attention_mask.sum(1).tolist()
    if not packed:
        with KeyedDropout(list(keys), lengths, packed=False):
            out = model.base_model(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state, labels
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # equal lengths in runs: fewer calls
    ids = [input_ids[i, : lengths[i]].tolist() for i in order]
    inputs, _ = pack(model.base_model, ids, input_ids.device)
    with KeyedDropout([keys[i] for i in order], [lengths[i] for i in order], packed=True):
        hidden = model.base_model(**inputs).last_hidden_state[0]
    return hidden, torch.cat([labels[i, : lengths[i]] for i in order])


def dev_loss(model, head, batches: list[DevBatch], device, *, packed: bool = False) -> float:
    """Mean MLM loss per masked dev token (the model is left in eval mode)."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for b in batches:
            loss, n = masked_loss(
                model,
                head,
                b.input_ids.to(device),
                b.attention_mask.to(device),
                b.labels.to(device),
                packed=packed,
            )
            total += float(loss)
            count += n
    return total / max(count, 1)


#: additive smoothing constants tried for the unigram reference (the best one on the dev tokens is kept)
UNIGRAM_SMOOTHING = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001)


def unigram_counts(tokenizer, texts: Iterable[str], *, max_length: int) -> Counter[int]:
    """Token counts of ``texts`` as the model sees them: special tokens left out, truncated to ``max_length``."""
    counts: Counter[int] = Counter()
    special = set(tokenizer.all_special_ids)
    for chunk in _chunks(texts, 256):
        for ids in tokenizer(chunk, truncation=True, max_length=max_length)["input_ids"]:
            counts.update(i for i in ids if i not in special)
    return counts


def _chunks(texts: Iterable[str], n: int) -> Iterator[list[str]]:
    it = iter(texts)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


def unigram_loss(
    tokenizer, train_texts: Iterable[str], batches: list[DevBatch], *, max_length: int
) -> tuple[float, float]:
    """The context-free reference: a unigram table of the training texts' tokens scored on the masked dev
    tokens, with additive smoothing. Returns (mean loss per masked dev token, smoothing constant). The
    constant is the one of :data:`UNIGRAM_SMOOTHING` that scores best on those same tokens, so the reference
    is as strong as a unigram table can be: a language model is worth its name only below it."""
    counts = unigram_counts(tokenizer, train_texts, max_length=max_length)
    total, vocab = sum(counts.values()), len(tokenizer)
    dev = [int(t) for b in batches for t in b.labels[b.labels != -100].tolist()]
    if not dev:
        raise ClirError("no masked dev token to score the unigram reference on")
    best = (math.inf, UNIGRAM_SMOOTHING[0])
    for k in UNIGRAM_SMOOTHING:
        denom = math.log(total + k * vocab)
        loss = sum(denom - math.log(counts.get(t, 0) + k) for t in dev) / len(dev)
        best = min(best, (loss, k))
    return best


def round_robin(streams: list[Iterator[str]]) -> Iterator[str]:
    """One text of each stream in turn (the shared MLM head sees every language equally often)."""
    for texts in zip(*streams, strict=False):
        yield from texts
