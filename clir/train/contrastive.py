"""One optimiser step of contrastive training: the texts of a global batch, this rank's share encoded (packed
where the model allows, keyed dropout), the loss over the whole global batch (cross-device negatives) or
this rank's part, and the backward, plain or through cached gradients (GradCache, Gao et al. 2021).

Layout of a global batch of G examples over N ranks (``Dist.share``: rank r holds examples r*G/N ...): the
loss sees the queries 0..G-1 against the passages in canonical order, every example's positive first
(0..G-1), then every hard negative, example by example, as one process at batch G lays them out. Each text's
dropout key names its place in that global batch (step, micro-batch, role, example, negative), so one
process at batch G and N processes at G/N draw the same masks and compute the same loss.

Gradients: with cross-device negatives every rank computes the same global loss, whose gradient reaches
only its own rows (:func:`clir.train.distributed.all_gather_with_grad`); DDP averages over ranks, so the
loss is scaled by N before backward. Local negatives give each rank the loss of its own share; DDP's
average is then the mean over ranks, as wanted."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from clir.config import TrainConfig
from clir.model.protocol import Encoder, Side
from clir.train.distributed import Dist, all_gather_with_grad, allreduce_grads, wrap_ddp
from clir.train.loss import contrastive_loss, false_negative_mask
from clir.train.optim import Optimisation

QUERY, POSITIVE, NEGATIVE = "q", "p", "n"


@dataclass
class TrainText:
    side: Side
    text: str
    key: int


@dataclass
class Layout:
    """A global batch as one rank sees it: its own texts (queries, then passages) and how the passages of
    all ranks, gathered in rank order, map to the canonical order."""

    queries: list[TrainText]
    passages: list[TrainText]
    #: rows per rank of the gathered queries and passages
    query_sizes: list[int]
    passage_sizes: list[int]
    #: canonical passage position -> position in the gathered passages
    order: list[int]
    #: the loss's false-negative mask (queries x canonical passages) and the same for this rank's share
    global_mask: Any
    local_mask: Any
    #: this rank's texts, positives first, as the local loss sees them
    local_targets: list[int] = field(default_factory=list)


def layout(examples: Sequence[Any], dist: Dist, key_prefix: tuple[Any, ...]) -> Layout:
    """Arrange a global batch (``examples``, every rank passes the same list) for this rank."""
    from clir.train.dropout import text_key

    n = len(examples) // dist.world
    ranks = [range(r * n, (r + 1) * n) for r in range(dist.world)]

    def passages_of(r: range) -> list[tuple[str, int, int, str]]:
        pos = [(POSITIVE, i, 0, examples[i].positive) for i in r]
        neg = [(NEGATIVE, i, k, t) for i in r for k, t in enumerate(examples[i].negatives)]
        return pos + neg

    gathered = [p for r in ranks for p in passages_of(r)]
    canonical = passages_of(range(len(examples)))
    where = {(role, i, k): j for j, (role, i, k, _) in enumerate(gathered)}
    order = [where[(role, i, k)] for role, i, k, _ in canonical]

    mine = ranks[dist.rank]
    queries = [TrainText("query", examples[i].query, text_key(*key_prefix, QUERY, i, 0)) for i in mine]
    own = passages_of(mine)
    passages = [TrainText("passage", t, text_key(*key_prefix, role, i, k)) for role, i, k, t in own]
    texts = [t for *_, t in canonical]
    global_mask = false_negative_mask([e.positives for e in examples], texts, list(range(len(examples))))
    local_mask = false_negative_mask(
        [examples[i].positives for i in mine], [t for *_, t in own], list(range(n))
    )
    return Layout(
        queries,
        passages,
        [n] * dist.world,
        [len(passages_of(r)) for r in ranks],
        order,
        global_mask,
        local_mask,
        list(range(n)),
    )


class ContrastiveStep:
    """Runs optimiser steps of ``cfg`` on ``encoder`` (trainable weights set up by ``opt``) in this
    process, one of ``dist.world``."""

    def __init__(self, cfg: TrainConfig, encoder: Encoder, opt: Optimisation, dist: Dist) -> None:
        self.cfg, self.encoder, self.opt, self.dist = cfg, encoder, opt, dist
        self.lang = cfg.train_lang
        trains = [m for m in encoder.models() if any(p.requires_grad for p in m.parameters())]
        self.wrapped = {id(m): wrap_ddp(m, dist) for m in trains}
        self.cross = cfg.optim.cross_device_negatives and dist.enabled

    # ------------------------------------------------------------------ encoding
    def _runner(self, model: Any) -> Any:
        return self.wrapped.get(id(model), model)

    def _groups(self, texts: Sequence[TrainText]) -> list[list[int]]:
        """Indices of ``texts`` that go through one forward: both sides together when they share a model
        and adapter setup and the model packs (the usual tied case), else one group per side."""
        enc = self.encoder
        sides = {t.side for t in texts}
        packed = self.cfg.optim.packing and all(enc.packs(s, self.lang) for s in sides)
        same = enc.query_model is enc.passage_model and str(enc.adapter_setup("query", self.lang)) == str(
            enc.adapter_setup("passage", self.lang)
        )
        if packed and same:
            return [list(range(len(texts)))]
        return [[i for i, t in enumerate(texts) if t.side == s] for s in ("query", "passage") if s in sides]

    def encode(self, texts: Sequence[TrainText]) -> Any:
        """Differentiable vectors of ``texts``, in order (training mode, keyed dropout)."""
        import torch

        out: list[Any] = [None] * len(texts)
        for group in self._groups(texts):
            vecs = self._encode_group([texts[i] for i in group])
            for row, i in enumerate(group):
                out[i] = vecs[row]
        return torch.stack(out)

    def _encode_group(self, texts: list[TrainText]) -> Any:
        from clir.model import packing
        from clir.train.dropout import KeyedDropout

        enc = self.encoder
        side = texts[0].side
        model = enc.activate(side, self.lang)
        if self.cfg.optim.packing and enc.packs(side, self.lang):
            ids: list[list[int]] = []
            for s in ("query", "passage"):  # each side's prefix and token limit
                part = [t.text for t in texts if t.side == s]
                if part:
                    ids += list(enc.tokenize(part, s, padding=False)["input_ids"])
            ids = [ids[i] for i in _side_order(texts)]
            # longest first, so that equal lengths form runs (one attention call each)
            order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))
            inputs, lengths = packing.pack(model, [ids[i] for i in order], enc.device)
            with KeyedDropout([texts[i].key for i in order], lengths, packed=True):
                hidden = self._runner(model)(**inputs).last_hidden_state
            vecs = enc.finish(pool_packed(hidden, lengths, enc.config.pooling))
            back = [0] * len(order)
            for row, i in enumerate(order):
                back[i] = row
            return vecs[back]
        batch = enc.tokenize([t.text for t in texts], side)
        batch = {k: v.to(enc.device) for k, v in batch.items()}
        lengths = batch["attention_mask"].sum(1).tolist()
        with KeyedDropout([t.key for t in texts], lengths, packed=False):
            hidden = self._runner(model)(**batch).last_hidden_state
        return enc.pool(hidden, batch["attention_mask"])

    # ------------------------------------------------------------------ loss
    def loss(self, lay: Layout, qv: Any, pv: Any) -> tuple[Any, float]:
        """(loss, backward scale): the global loss when negatives cross devices, else this rank's."""
        import torch

        temp = self.cfg.temperature
        if not self.cross:
            return contrastive_loss(qv, pv, torch.tensor(lay.local_targets), temp, lay.local_mask), 1.0
        q_all = all_gather_with_grad(qv, self.dist, lay.query_sizes)
        p_all = all_gather_with_grad(pv, self.dist, lay.passage_sizes)[
            torch.tensor(lay.order, device=pv.device)
        ]
        targets = torch.arange(q_all.shape[0])
        return contrastive_loss(q_all, p_all, targets, temp, lay.global_mask), float(self.dist.world)

    # ------------------------------------------------------------------ the step
    def run(self, batches: Sequence[Sequence[Any]], step: int) -> float:
        """Forward and backward of one optimiser step over the global micro-batches ``batches`` (every
        rank passes the same), gradients accumulated and averaged over ranks; returns the loss as logged:
        the global batch's, or with local negatives the mean over ranks."""
        accum = len(batches)
        total = 0.0
        seed = self.cfg.optim.seed
        for micro, examples in enumerate(batches):
            lay = layout(examples, self.dist, (seed, step, micro))
            if self.cfg.optim.grad_cache:
                total += self._cached(lay, accum)
            else:
                with self._sync(micro == accum - 1):
                    total += self._plain(lay, accum)
        if self.cfg.optim.grad_cache:
            allreduce_grads(self.opt.params, self.dist)
        return total if self.cross else self.dist.mean(total)

    def _plain(self, lay: Layout, accum: int) -> float:
        texts = lay.queries + lay.passages
        with self.opt.autocast(self.encoder.device):
            reps = self.encode(texts)
        nq = len(lay.queries)
        loss, scale = self.loss(lay, reps[:nq], reps[nq:])
        self.opt.backward(loss * (scale / accum))
        return float(loss.detach()) / accum

    def _cached(self, lay: Layout, accum: int) -> float:
        """GradCache: vectors first without a graph, the loss's gradient on them, then each chunk encoded
        again with its graph and back-propagated from that gradient. Keyed dropout gives the second forward
        the first one's masks, so the step equals the uncached one."""
        import torch

        texts = lay.queries + lay.passages
        size = self.cfg.optim.grad_cache_chunk
        chunks = [list(range(i, min(i + size, len(texts)))) for i in range(0, len(texts), size)]
        with self._sync(False):
            with torch.no_grad(), self.opt.autocast(self.encoder.device):
                reps = torch.cat([self.encode([texts[i] for i in c]) for c in chunks])
            leaf = reps.detach().requires_grad_(True)
            nq = len(lay.queries)
            loss, scale = self.loss(lay, leaf[:nq], leaf[nq:])
            self.opt.backward(loss * (scale / accum))
            grad = leaf.grad
            for c in chunks:
                with self.opt.autocast(self.encoder.device):
                    part = self.encode([texts[i] for i in c])
                torch.autograd.backward(part, grad[c[0] : c[-1] + 1])
        return float(loss.detach()) / accum

    @contextlib.contextmanager
    def _sync(self, sync: bool) -> Iterator[None]:
        """DDP's gradient exchange on this backward (``sync``) or deferred (``no_sync``)."""
        with contextlib.ExitStack() as stack:
            if not sync:
                for w in self.wrapped.values():
                    if hasattr(w, "no_sync"):
                        stack.enter_context(w.no_sync())
            yield


def _side_order(texts: Sequence[TrainText]) -> list[int]:
    """Where each text of ``texts`` sits among them tokenised side by side (queries first, then passages)."""
    qs = [i for i, t in enumerate(texts) if t.side == "query"]
    ps = [i for i, t in enumerate(texts) if t.side != "query"]
    at = {i: j for j, i in enumerate(qs + ps)}
    return [at[i] for i in range(len(texts))]


def pool_packed(hidden: Any, lengths: Sequence[int], pooling: str) -> Any:
    """One vector per text of a packed row: its first token (``cls``) or the mean of its tokens, in a few
    tensor operations (a GPU would launch kernels per text in a loop), fp32."""
    import torch

    rows = hidden[0]
    starts = [0]
    for n in lengths[:-1]:
        starts.append(starts[-1] + n)
    if pooling == "cls":
        return rows[torch.tensor(starts, device=rows.device)].float()
    width = max(lengths)
    idx = torch.tensor(
        [[s + min(j, n - 1) for j in range(width)] for s, n in zip(starts, lengths, strict=True)],
        device=rows.device,
    )
    n = torch.tensor(lengths, device=rows.device)
    valid = torch.arange(width, device=rows.device)[None, :] < n[:, None]
    return (rows[idx].float() * valid[..., None]).sum(1) / n[:, None]
