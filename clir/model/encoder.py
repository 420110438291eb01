"""The dual encoder: a BERT-family backbone, pooling, prefixes, adapter modes and language routing.

Adapter modes (Yang et al. 2022):
- ``full``: plain backbone, every weight trains;
- ``task``: one task adapter, backbone frozen;
- ``madx``: ``Stack(language adapter, task adapter)``, only the task adapter trains.

At inference, each side (query, doc) routes the language adapter: ``source`` keeps the training language's
adapter, ``target`` swaps in the adapter of the text's language, ``none`` drops it. The model's settings give
the default routing; every encoding call may pass another (``routing=``): routing is an argument, not state."""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clir.config import ModelConfig, Routing, from_dict
from clir.model import adapters as adapter_rules
from clir.model.adapters import Side, saved_adapter
from clir.model.checks import position_limit, torch_device
from clir.model.cut import cut_long_text
from clir.model.fingerprint import fingerprint, with_routing
from clir.model.folder import load_backbone, load_tokenizer, save_model, weight_sources
from clir.model.languages import LanguageAdapters
from clir.model.precision import autocast_dtype, cast_linear_params, forward_with
from clir.model.resolve import merge_settings, resolve_model

log = logging.getLogger(__name__)


#: When a model cannot be packed (:mod:`clir.model.packing`), batches are padded to a multiple of this many
#: tokens and never mix two such widths. Under bf16 autocast a vector's rounding depends on the padded width
#: it was computed at (up to 8e-4 per component on e5-small), and on AVX512-BF16 not measurably on the
#: batch's other rows (on AMX it does: up to 7.6e-4, which packing's row blocks avoid).
PAD_MULTIPLE = 8


def padded_width(n_tokens: int, limit: int) -> int:
    """The width a text of ``n_tokens`` is padded to: the next multiple of :data:`PAD_MULTIPLE`, at most
    ``limit`` (the encoder's length limit on that side)."""
    return max(n_tokens, min(-(-n_tokens // PAD_MULTIPLE) * PAD_MULTIPLE, limit))


class DualEncoder(LanguageAdapters):
    """Encodes queries and passages into one vector space; see the module docstring for the modes.

    Thread-safe for encoding: one lock serialises forward passes, since the active adapters are module state
    (:meth:`replica` gives another thread its own modules)."""

    allow_packing = cache_casts = True  # False: padded batches only / autocast casts weights per call (A/Bs)

    def __init__(
        self,
        config: ModelConfig,
        *,
        model_dir: str | Path | None = None,
        device: str | None = None,
        source: str | None = None,
    ) -> None:
        import torch

        self.config = config
        self.model_dir = Path(model_dir) if model_dir else None
        self.source = source or (str(model_dir) if model_dir else config.backbone)
        self.device = torch_device(device)
        self._lock = threading.RLock()
        # HF fast tokenizers raise "Already borrowed" when two threads use one at once; replicas share both
        self._tokenizer_lock = threading.Lock()
        self._fingerprint: dict[str, Any] | None = None
        # bf16/fp16 copies of Linear weights for encode(), kept between calls (see _cast_params)
        self._cast_cache: dict[tuple[int, Any], dict[str, tuple[Any, int, int, Any]]] = {}
        # whether a model, under an adapter setup, encodes packed (see _packs); the probe runs once per key
        self._packs: dict[tuple[int, str], bool] = {}
        # row blocks for query-side products, per model and dtype (see _query_blocks)
        self._blocks: dict[tuple[int, Any], dict[tuple[int, int], int]] = {}
        if self.device.type == "cpu":
            # Denormal floats in padded BERT batches cost up to 4x on x86 CPUs; flushing them is harmless.
            torch.set_flush_denormal(True)

        sources = weight_sources(config, self.model_dir)
        self.tokenizer = load_tokenizer(sources.tokenizer)
        self.query_model = load_backbone(sources.query)
        self.passage_model = self.query_model if sources.passage is None else load_backbone(sources.passage)
        self._lang_loaded: set[str] = set()
        self._lang_heads: dict[str, str] = {}  # language -> head_sha256 its adapter was trained against
        self._position_limit: int | None = position_limit(self.query_model.config, self.config)
        if self.mode.task_adapters(config):
            self._init_adapters()
        for m in self.models():
            m.to(self.device)
            m.eval()

    # ------------------------------------------------------------------ loading
    def _init_adapters(self) -> None:
        import adapters

        model = self.query_model
        adapter_rules.check_task_adapters(self.config, self.model_dir, self.dim)
        adapters.init(model)
        arch = self.config.task_adapter.to_adapters_config()
        for name in self.task_adapter_names():
            saved = saved_adapter(self.model_dir, name)
            if saved is not None:
                model.load_adapter(str(saved), load_as=name, set_active=False)
            else:
                model.add_adapter(name, config=arch)
        if self.mode.routes_languages:
            self.load_language_adapter(self.config.source_lang)

    def exclusive(self) -> contextlib.AbstractContextManager[Any]:
        """Hold the encoder for a group of calls (the active adapters are module state). Re-entrant."""
        return self._lock

    def weights_changed(self) -> None:
        """Say that weights were updated in place (training), so the fingerprint is computed afresh."""
        self._fingerprint = None

    def replica(self) -> DualEncoder:
        """Another encoder over the same weight tensors and tokenizer (shared, not copied), with its own lock
        and module objects (active adapters): two replicas encode at the same time, in two threads.

        The server runs one per lane (clir.serve.batching). Its vectors are bit-identical to this encoder's:
        same weights, same low-precision copies, same padded widths. A language adapter loaded later goes
        into that replica only."""
        import copy

        with self._lock:
            shared = {id(t): t for m in self.models() for t in itertools.chain(m.parameters(), m.buffers())}
            twin = copy.copy(self)
            twin._lock = threading.RLock()
            twin.query_model = copy.deepcopy(self.query_model, dict(shared))
            twin.passage_model = (
                twin.query_model
                if self.passage_model is self.query_model
                else copy.deepcopy(self.passage_model, dict(shared))
            )
            twin._lang_loaded = set(self._lang_loaded)
            twin._lang_heads = dict(self._lang_heads)
            # the bf16/fp16 weight copies are shared too: the cache's entries hold the same parameters
            twin._cast_cache = {}
            twin._packs, twin._blocks = {}, {}
            for old, new in zip(self.models(), twin.models(), strict=True):
                for (model_id, dtype), params in self._cast_cache.items():
                    if model_id == id(old):
                        twin._cast_cache[(id(new), dtype)] = dict(params)
                twin._packs.update(
                    {(id(new), setup): ok for (m, setup), ok in self._packs.items() if m == id(old)}
                )
                twin._blocks.update({(id(new), d): b for (m, d), b in self._blocks.items() if m == id(old)})
        return twin

    # ------------------------------------------------------------------ encoding
    def models(self) -> list[Any]:
        return (
            [self.query_model]
            if self.passage_model is self.query_model
            else [self.query_model, self.passage_model]
        )

    def _autocast_dtype(self):
        """The autocast dtype the precision setting picks on this device (None: plain fp32)."""
        return autocast_dtype(self.config.precision, self.device)

    def _autocast(self):
        import torch

        dtype = self._autocast_dtype()
        return contextlib.nullcontext() if dtype is None else torch.autocast(self.device.type, dtype=dtype)

    def _cast_params(self, model, dtype) -> dict[str, Any]:
        """Linear weights cast to ``dtype``, reused between calls (:func:`clir.model.precision.cast_linear_params`)."""
        return cast_linear_params(model, dtype, self._cast_cache)

    def pool(self, hidden, mask):
        """Pool token states into one vector per text (and L2-normalise if configured)."""
        if self.config.pooling == "cls":
            out = hidden[:, 0]
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            out = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return self.finish(out)

    def finish(self, pooled):
        """Pooled vectors as the encoder returns them: fp32, L2-normalised if configured."""
        import torch

        out = pooled.float()
        if self.config.normalize:
            out = torch.nn.functional.normalize(out, dim=-1)
        return out

    def max_length(self, side: Side) -> int:
        """Tokens the encoder reads on ``side`` (the configured limit, capped by the position embeddings)."""
        cfg = self.config
        max_len = cfg.max_query_length if side == "query" else cfg.max_passage_length
        return min(max_len, self._position_limit or max_len)

    def tokenize(self, texts: Sequence[str], side: Side, *, padding: bool = True):
        cfg = self.config
        prefix = cfg.query_prefix if side == "query" else cfg.passage_prefix
        max_len = self.max_length(side)
        texts = [self.cut(t, side) for t in texts]
        with self._tokenizer_lock:
            return self.tokenizer(
                [prefix + t for t in texts],
                max_length=max_len,
                truncation=True,
                padding=padding,
                return_tensors="pt" if padding else None,
            )

    def _pad(self, feats: list[dict[str, list[int]]], width: int):
        """Right-pad a list of tokenised texts to ``width`` tokens, as tensors on the device (cheaper than
        tokenizer.pad)."""
        import torch

        pad_id = self.tokenizer.pad_token_id or 0
        out = {}
        for key in feats[0]:
            fill = pad_id if key == "input_ids" else 0
            arr = np.full((len(feats), width), fill, dtype=np.int64)
            for row, f in enumerate(feats):
                arr[row, : len(f[key])] = f[key]
            out[key] = torch.from_numpy(arr).to(self.device)
        return out

    def forward(self, batch, side: Side, lang: str | None = None, routing: Routing | None = None):
        """Differentiable encoding of a tokenised batch (training path)."""
        model = self.activate(side, lang, routing)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        out = model(**batch)
        return self.pool(out.last_hidden_state, batch["attention_mask"])

    def encode(
        self,
        texts: Sequence[str],
        side: Side,
        lang: str | None = None,
        *,
        batch_size: int = 32,
        show_progress: bool | None = None,
        routing: Routing | None = None,
    ) -> np.ndarray:
        """Encode ``texts`` in length-sorted batches (order restored), inference mode, autocast. A batch is one
        packed row (:mod:`clir.model.packing`) where the model allows it, else padded to one width
        (:func:`padded_width`). A query gets the same vector whatever it is batched with (packed, with row
        blocks where the CPU needs them: :meth:`_query_blocks`); a passage within bf16 rounding. ``routing``:
        the language-adapter routing of this call (default: the model's)."""
        import torch

        from clir.model import packing
        from clir.progress import progress

        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        enc = self.tokenize(texts, side, padding=False)
        ids = enc["input_ids"]
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))  # longest first: OOM shows up at once
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        bar = None
        if show_progress or (show_progress is None and len(texts) >= 10 * batch_size):
            bar = progress(total=len(texts), desc=f"encode {side}s", unit="text")
        with self._lock, torch.inference_mode(), self._autocast():
            model = self.activate(side, lang, routing)
            dtype = self._autocast_dtype()
            cast = self._cast_params(model, dtype) if dtype is not None and self.cache_casts else {}
            packed = self.allow_packing and self._packs_texts(model, side)
            blocks = self._query_blocks(model, dtype) if packed and side == "query" else None
            if packed:
                batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
            else:
                batches = self._width_batches(order, [len(t) for t in ids], side, batch_size)
            for b in batches:
                if packed:
                    inputs, lengths = packing.pack(model, [ids[i] for i in b], self.device)
                    hidden = packing.hidden_packed(model, inputs, lengths, cast, blocks)
                    vecs = self.finish(packing.pool_packed(hidden, lengths, self.config.pooling))
                else:
                    padded = self._pad(
                        [{k: enc[k][i] for k in keys} for i in b],
                        padded_width(len(ids[b[0]]), self.max_length(side)),
                    )
                    hidden = forward_with(model, cast, padded).last_hidden_state
                    vecs = self.pool(hidden, padded["attention_mask"])
                out[b] = vecs.cpu().numpy()
                if bar is not None:
                    bar.update(len(b))
        if bar is not None:
            bar.close()
        return out

    def _width_batches(
        self, order: list[int], n_tokens: list[int], side: Side, batch_size: int
    ) -> list[list[int]]:
        """``order`` cut into batches of at most ``batch_size`` texts of one padded width each."""
        limit = self.max_length(side)
        batches: list[list[int]] = []
        for _, same_width in itertools.groupby(order, key=lambda i: padded_width(n_tokens[i], limit)):
            run = list(same_width)
            batches += [run[i : i + batch_size] for i in range(0, len(run), batch_size)]
        return batches

    def _query_blocks(self, model, dtype) -> dict[tuple[int, int], int]:
        """Row blocks for the query side's products on a CPU (:mod:`clir.model.rowblocks`), so a query
        gets the same vector alone (`clir search --query`) as in any server batch. Passages go without:
        they are encoded once into an index, and blocks would slow building (~2.6x on the products that
        need them)."""
        import torch

        from clir.model.rowblocks import model_row_blocks

        if self.device.type != "cpu":  # GPU kernels are not measured: encode as they come
            return {}
        key = (id(model), dtype)
        if key not in self._blocks:
            self._blocks[key] = model_row_blocks(model, dtype or torch.float32, self.device)
            log.debug("row blocks for query products: %s", self._blocks[key])
        return self._blocks[key]

    def packs(self, side: Side, lang: str | None = None, routing: Routing | None = None) -> bool:
        """Whether ``side``'s model, with the adapters for ``lang`` active, encodes packed texts exactly as
        padded ones (probed once per model and adapter setup)."""
        with self._lock:
            return self._packs_texts(self.activate(side, lang, routing), side)

    def _packs_texts(self, model, side: Side) -> bool:
        """Whether ``model``, under its active adapters, encodes packed: probed once per model and setup
        (:func:`clir.model.packing.packs_like_padding`); the answer is logged."""
        from clir.model import packing

        setup = "" if self.config.adapter_mode == "full" else str(model.active_adapters)
        key = (id(model), setup)
        if key not in self._packs:
            prefix = self.config.query_prefix if side == "query" else self.config.passage_prefix
            with self._tokenizer_lock:
                ids = packing.probe_ids(self.tokenizer, prefix)
            ok = packing.packs_like_padding(model, ids, self.tokenizer.pad_token_id or 0, self.device)
            self._packs[key] = ok
            log.log(
                logging.DEBUG if ok else logging.INFO,
                "%s%s: %s",
                type(model).__name__,
                f" ({setup})" if setup else "",
                "packed encoding"
                if ok
                else "packed encoding does not match padded here; encoding padded batches",
            )
        return self._packs[key]

    def encode_queries(self, texts: Sequence[str], lang: str | None = None, **kw: Any) -> np.ndarray:
        """Query vectors; ``lang``: the queries' language (default: the model's ``source_lang``)."""
        return self.encode(texts, "query", lang or self.config.source_lang, **kw)

    def encode_passages(self, texts: Sequence[str], lang: str | None = None, **kw: Any) -> np.ndarray:
        return self.encode(texts, "passage", lang, **kw)

    def count_tokens(self, text: str, side: Side = "query") -> tuple[int, bool]:
        """(tokens kept, truncated?) for ``text`` on ``side`` — lets callers report truncation."""
        cfg = self.config
        prefix = cfg.query_prefix if side == "query" else cfg.passage_prefix
        max_len = self.max_length(side)
        text = self.cut(text, side)
        with self._tokenizer_lock:
            n = len(self.tokenizer(prefix + text, truncation=False)["input_ids"])
        return min(n, max_len), n > max_len

    def cut(self, text: str, side: Side) -> str:
        """A long query cut short, keeping the tokens it is encoded from (:func:`clir.model.cut.cut_long_text`)."""
        if side != "query":
            return text
        return cut_long_text(
            self.tokenizer, text, self.config.query_prefix, self.max_length(side), self._tokenizer_lock
        )

    # ------------------------------------------------------------------ identity
    def fingerprint(self, routing: Routing | None = None) -> dict[str, Any]:
        """What makes two encoders produce the same document vectors under ``routing`` (default: the
        model's), as index manifests store it. The weights' hashes are computed once."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self)
        return with_routing(self._fingerprint, routing or self.config.routing)

    # ------------------------------------------------------------------ saving
    def save(self, out_dir: str | Path, *, save_lang: Sequence[str] = ()) -> Path:
        """Write a model folder (:func:`clir.model.folder.save_model`); returns it."""
        return save_model(self, out_dir, save_lang=save_lang)


# ---------------------------------------------------------------------- resolving --model
def load_encoder(
    spec: str | Path,
    overrides: dict[str, Any] | None = None,
    *,
    device: str | None = None,
) -> DualEncoder:
    """Load what ``--model`` names (see :func:`clir.model.resolve.resolve_model`): a clir model folder, a
    registered name (``multilingual-e5-small``), a local Hugging Face backbone folder, a model YAML, or a hub
    id. ``overrides`` (pooling, normalize, prefixes, ...) win over the folder's settings, Tevatron-style."""
    ref = resolve_model(spec).require_local()
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    config = from_dict(ModelConfig, merge_settings(ref.settings, overrides), prefix="model")
    return DualEncoder(config, model_dir=ref.folder, device=device, source=str(spec))
