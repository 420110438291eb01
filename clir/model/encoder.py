"""The dual encoder: a BERT-family backbone, pooling, prefixes, adapter modes and language routing.

Adapter modes (Yang et al. 2022):
- ``full``: plain backbone, every weight trains;
- ``task``: one task adapter, backbone frozen;
- ``madx``: ``Stack(language adapter, task adapter)``, only the task adapter trains.

At inference, each side (query, doc) routes the language adapter: ``source`` keeps the training language's
adapter, ``target`` swaps in the adapter of the text's language, ``none`` drops it."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import shutil
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from clir.atomic import swap_into_place
from clir.config import ModelConfig, Routing, from_dict, to_dict
from clir.config.model import Route
from clir.errors import ClirError
from clir.model.resolve import MODEL_FILE, merge_settings, resolve_model

log = logging.getLogger(__name__)

Side = Literal["query", "passage"]

_cpu_bf16: bool | None = None


def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX): there bf16 autocast is ~1.7x faster."""
    global _cpu_bf16
    if _cpu_bf16 is None:
        try:
            flags = Path("/proc/cpuinfo").read_text()
            _cpu_bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
        except OSError:
            _cpu_bf16 = False
    return _cpu_bf16


def _hash_tensors(named: Sequence[tuple[str, Any]]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(named, key=lambda x: x[0]):
        h.update(name.encode())
        # hash the array's buffer directly: .tobytes() would first copy it (~0.5 GB, ~1 s for e5-small)
        h.update(t.detach().to("cpu").contiguous().float().numpy().data)
    return h.hexdigest()


def _is_local(source: str) -> bool:
    return Path(source).expanduser().exists()


class DualEncoder:
    """Encodes queries and passages into one vector space; see the module docstring for the modes.

    Thread-safe for encoding: one lock serialises forward passes, since adapter routing is model state."""

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
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._lock = threading.RLock()
        self._fingerprint: dict[str, Any] | None = None
        # bf16/fp16 copies of Linear weights for encode(), kept between calls (see _cast_params)
        self._cast_cache: dict[tuple[int, Any], dict[str, tuple[Any, int, int, Any]]] = {}
        if self.device.type == "cpu":
            # Denormal floats in padded BERT batches cost up to 4x on x86 CPUs; flushing them is harmless.
            torch.set_flush_denormal(True)

        full_dir = self.model_dir / "backbone" if self.model_dir and config.adapter_mode == "full" else None
        tok_dir = (
            self.model_dir / "tokenizer"
            if self.model_dir and (self.model_dir / "tokenizer").is_dir()
            else None
        )
        self.tokenizer = self._load_tokenizer(str(tok_dir or full_dir or config.backbone))
        if config.adapter_mode == "full" and not config.tied:
            q_dir = self.model_dir / "query" if self.model_dir else None
            p_dir = self.model_dir / "passage" if self.model_dir else None
            self.query_model = self._load_backbone(
                str(q_dir) if q_dir and q_dir.is_dir() else config.backbone
            )
            self.passage_model = self._load_backbone(
                str(p_dir) if p_dir and p_dir.is_dir() else config.backbone
            )
        else:
            src = str(full_dir) if full_dir and full_dir.is_dir() else config.backbone
            self.query_model = self._load_backbone(src)
            self.passage_model = self.query_model
        self._lang_loaded: set[str] = set()
        self._position_limit: int | None = None
        self._check_lengths()
        if config.adapter_mode != "full":
            self._init_adapters()
        for m in self.models():
            m.to(self.device)
            m.eval()

    # ------------------------------------------------------------------ loading
    def _check_lengths(self) -> None:
        """Token limits above the model's position table fail inside the model (or pass unnoticed on short
        texts): refused here, before any text is encoded."""
        mc = self.query_model.config
        limit = getattr(mc, "max_position_embeddings", None)
        if not limit:
            return
        if "roberta" in str(getattr(mc, "model_type", "")) or "camembert" in str(mc.model_type):
            limit -= (mc.pad_token_id or 0) + 1  # RoBERTa positions start after the padding index
        self._position_limit = limit
        defaults = {f.name: f.default for f in dataclasses.fields(self.config)}
        for key in ("max_query_length", "max_passage_length"):
            value = getattr(self.config, key)
            if value is None or 1 <= value <= limit or value == defaults.get(key):
                continue  # a default above a small model's limit is capped when tokenizing
            raise ClirError(f"{key.replace('_', '-')} {value} is outside 1..{limit}, this model's limit")

    @staticmethod
    def _load_tokenizer(path: str):
        from transformers import AutoTokenizer

        from clir.model.resolve import local_path

        path = local_path(path)
        try:
            return AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as e:
            raise ClirError(_hub_message("tokenizer", path, e)) from None

    @staticmethod
    def _load_backbone(path: str):
        from transformers import AutoModel

        from clir.model.resolve import local_path

        path = local_path(path)
        try:
            return AutoModel.from_pretrained(path, add_pooling_layer=False)
        except TypeError:  # encoders without a pooler argument
            return AutoModel.from_pretrained(path)
        except (OSError, ValueError) as e:
            raise ClirError(_hub_message("backbone", path, e)) from None

    def task_adapter_names(self) -> list[str]:
        if self.config.adapter_mode == "full":
            return []
        return ["task"] if self.config.tied else ["task_query", "task_passage"]

    def _init_adapters(self) -> None:
        import adapters

        model = self.query_model
        adapters.init(model)
        arch = self.config.task_adapter.to_adapters_config()
        for name in self.task_adapter_names():
            saved = self.model_dir / "adapters" / name if self.model_dir else None
            if saved and saved.is_dir():
                model.load_adapter(str(saved), load_as=name, set_active=False)
            else:
                model.add_adapter(name, config=arch)
        if self.config.adapter_mode == "madx":
            self.load_language_adapter(self.config.source_lang)

    def language_adapter_source(self, lang: str) -> str:
        bundled = self.model_dir / "adapters" / f"lang_{lang}" if self.model_dir else None
        if bundled and bundled.is_dir():
            return str(bundled)
        if lang not in self.config.language_adapters:
            known = ", ".join(sorted(self.config.language_adapters)) or "none"
            raise ClirError(
                f"no language adapter for {lang!r} (configured: {known}); add it under language_adapters "
                f"(an AdapterHub/Hugging Face id or a folder made by `clir train-language-adapter --lang {lang}`)"
            )
        return self.config.language_adapters[lang]

    def load_language_adapter(self, lang: str) -> None:
        """Load the language adapter for ``lang`` (lazily: only languages that are routed to get loaded)."""
        if lang in self._lang_loaded:
            return
        source = self.language_adapter_source(lang)
        model = self.query_model
        with self._lock:
            if source == "new":
                # a fresh, untrained language adapter (for MLM training or ablations)
                model.add_adapter(lang, config=self.config.language_adapter.to_adapters_config())
            else:
                try:
                    model.load_adapter(source, load_as=lang, set_active=False)
                except Exception as e:  # the adapters/hub stack raises many types; all mean "could not load"
                    raise ClirError(_adapter_message(lang, source, e)) from None
            model.to(self.device)
            self._lang_loaded.add(lang)
            self._fingerprint = None

    @contextlib.contextmanager
    def routed(self, query: Route | None = None, doc: Route | None = None) -> Iterator[DualEncoder]:
        """This encoder with another language-adapter routing for the block (one side or both), the old one
        restored after. The block holds the encoder, so no other thread encodes under the wrong routing."""
        with self._lock:
            old = self.config.routing
            self.config.routing = Routing(query=query or old.query, doc=doc or old.doc)
            self._fingerprint = None
            try:
                yield self
            finally:
                self.config.routing = old
                self._fingerprint = None

    def exclusive(self) -> contextlib.AbstractContextManager[Any]:
        """Hold the encoder for a group of calls (tokenizing included: Hugging Face fast tokenizers raise
        "Already borrowed" when two threads use one at once). Re-entrant."""
        return self._lock

    def weights_changed(self) -> None:
        """Say that weights were updated in place (training), so the fingerprint is computed afresh."""
        self._fingerprint = None

    def loaded_languages(self) -> list[str]:
        return sorted(self._lang_loaded)

    def unload_language_adapter(self, lang: str) -> None:
        """Drop a loaded language adapter (not the source one), so that the fingerprint an index records names
        only the adapters its documents went through."""
        if lang not in self._lang_loaded or lang == self.config.source_lang:
            return
        with self._lock:
            self.query_model.active_adapters = None
            self.query_model.delete_adapter(lang)
            self._lang_loaded.discard(lang)
            self._fingerprint = None

    # ------------------------------------------------------------------ routing
    def language_adapter_for(self, side: Side, lang: str | None) -> str | None:
        """The one rule for which language adapter sits under the task adapter when ``side`` encodes text in
        ``lang``: None without one (full/task modes, ``none`` routing), the source language's for ``source``
        routing, the text's own for ``target``."""
        cfg = self.config
        if cfg.adapter_mode != "madx":
            return None
        route = cfg.routing.query if side == "query" else cfg.routing.doc
        if route == "none":
            return None
        if route == "source":
            return cfg.source_lang
        if not lang:
            raise ClirError(
                f"{side} routing is 'target' but the text's language is unknown: pass --doc-lang/--query-lang "
                "or give documents a 'lang' field"
            )
        return lang

    def adapter_setup(self, side: Side, lang: str | None):
        """The ``adapters`` composition active for ``side`` encoding text in ``lang`` (None in full mode)."""
        from adapters.composition import Stack

        cfg = self.config
        if cfg.adapter_mode == "full":
            return None
        task = "task" if cfg.tied else f"task_{side}"
        la = self.language_adapter_for(side, lang)
        if la is None:
            return Stack(task)
        self.load_language_adapter(la)
        return Stack(la, task)

    def _activate(self, side: Side, lang: str | None):
        model = self.query_model if side == "query" else self.passage_model
        if self.config.adapter_mode != "full":
            model.active_adapters = self.adapter_setup(side, lang)
        return model

    # ------------------------------------------------------------------ encoding
    @property
    def dim(self) -> int:
        return int(self.query_model.config.hidden_size)

    def models(self) -> list[Any]:
        return (
            [self.query_model]
            if self.passage_model is self.query_model
            else [self.query_model, self.passage_model]
        )

    def _autocast_dtype(self):
        """The autocast dtype the precision setting picks on this device (None: plain fp32)."""
        import torch

        p = self.config.precision
        if p == "fp32" or (p == "auto" and self.device.type == "cpu" and not cpu_has_bf16()):
            return None
        if p == "fp16" or (p == "auto" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported()):
            return torch.float16
        return torch.bfloat16

    def _autocast(self):
        import torch

        dtype = self._autocast_dtype()
        return contextlib.nullcontext() if dtype is None else torch.autocast(self.device.type, dtype=dtype)

    def _cast_params(self, model, dtype) -> dict[str, Any]:
        """Low-precision copies of ``model``'s Linear weights and biases, reused across encode() calls.

        Autocast casts every Linear weight again on each call (its cast cache dies with the context): for
        e5-small on this 2-core CPU ~1.5 of the ~14 CPU-ms a one-query encode costs (eval/bench/RESULTS.md),
        which search and serving pay per request. Autocast leaves tensors that
        are already in its dtype alone and casts fp32 ones with the same rounding, so feeding these copies
        (torch.func.functional_call) gives bit-identical vectors. A copy is renewed when its parameter is
        replaced, moved or updated in place (training bumps ``_version``)."""
        import torch

        key = (id(model), dtype)
        old = self._cast_cache.get(key, {})
        new: dict[str, tuple[Any, int, int, Any]] = {}
        for mod_name, mod in model.named_modules():
            if not isinstance(mod, torch.nn.Linear):
                continue
            for pname in ("weight", "bias"):
                p = getattr(mod, pname, None)
                if p is None or p.dtype != torch.float32:
                    continue
                name = f"{mod_name}.{pname}" if mod_name else pname
                # parameters made under inference_mode (a language adapter loaded lazily by encode) keep
                # no version counter: those are cast afresh each call (-1 never matches)
                version = -1 if p.is_inference() else p._version
                hit = old.get(name)
                if (
                    hit is None
                    or version < 0
                    or hit[0] is not p
                    or hit[1] != version
                    or hit[2] != p.data_ptr()
                ):
                    hit = (p, version, p.data_ptr(), p.detach().to(dtype))
                new[name] = hit
        self._cast_cache[key] = new  # rebuilt each call: copies of removed modules are dropped
        return {name: hit[3] for name, hit in new.items()}

    def pool(self, hidden, mask):
        """Pool token states into one vector per text (and L2-normalise if configured)."""
        import torch

        if self.config.pooling == "cls":
            out = hidden[:, 0]
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            out = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        out = out.float()
        if self.config.normalize:
            out = torch.nn.functional.normalize(out, dim=-1)
        return out

    def tokenize(self, texts: Sequence[str], side: Side, *, padding: bool = True):
        cfg = self.config
        prefix = cfg.query_prefix if side == "query" else cfg.passage_prefix
        max_len = cfg.max_query_length if side == "query" else cfg.max_passage_length
        max_len = min(max_len, self._position_limit or max_len)
        return self.tokenizer(
            [prefix + t for t in texts],
            max_length=max_len,
            truncation=True,
            padding=padding,
            return_tensors="pt" if padding else None,
        )

    def _pad(self, feats: list[dict[str, list[int]]]):
        """Right-pad a list of tokenised texts into tensors on the device (cheaper than tokenizer.pad)."""
        import torch

        width = max(len(f["input_ids"]) for f in feats)
        pad_id = self.tokenizer.pad_token_id or 0
        out = {}
        for key in feats[0]:
            fill = pad_id if key == "input_ids" else 0
            arr = np.full((len(feats), width), fill, dtype=np.int64)
            for row, f in enumerate(feats):
                arr[row, : len(f[key])] = f[key]
            out[key] = torch.from_numpy(arr).to(self.device)
        return out

    def forward(self, batch, side: Side, lang: str | None = None):
        """Differentiable encoding of a tokenised batch (training path)."""
        model = self._activate(side, lang)
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
    ) -> np.ndarray:
        """Encode ``texts``: length-sorted batches (order restored), inference mode, autocast."""
        import torch

        from clir.progress import progress

        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:  # HF fast tokenizers are not re-entrant ("Already borrowed" across threads)
            enc = self.tokenize(texts, side, padding=False)
        ids = enc["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))  # longest first: OOM shows up at once
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        bar = None
        if show_progress or (show_progress is None and len(texts) >= 10 * batch_size):
            bar = progress(total=len(texts), desc=f"encode {side}s", unit="text")
        with self._lock, torch.inference_mode(), self._autocast():
            model = self._activate(side, lang)
            dtype = self._autocast_dtype()
            cast = self._cast_params(model, dtype) if dtype is not None else {}
            for b in batches:
                padded = self._pad([{k: enc[k][i] for k in keys} for i in b])
                if cast:
                    out_b = torch.func.functional_call(model, cast, args=(), kwargs=padded, strict=False)
                else:
                    out_b = model(**padded)
                hidden = out_b.last_hidden_state
                out[b] = self.pool(hidden, padded["attention_mask"]).cpu().numpy()
                if bar is not None:
                    bar.update(len(b))
        if bar is not None:
            bar.close()
        return out

    def encode_queries(self, texts: Sequence[str], lang: str | None = "en", **kw: Any) -> np.ndarray:
        return self.encode(texts, "query", lang, **kw)

    def encode_passages(self, texts: Sequence[str], lang: str | None = None, **kw: Any) -> np.ndarray:
        return self.encode(texts, "passage", lang, **kw)

    def count_tokens(self, text: str, side: Side = "query") -> tuple[int, bool]:
        """(tokens kept, truncated?) for ``text`` on ``side`` — lets callers report truncation."""
        cfg = self.config
        prefix = cfg.query_prefix if side == "query" else cfg.passage_prefix
        max_len = cfg.max_query_length if side == "query" else cfg.max_passage_length
        max_len = min(max_len, self._position_limit or max_len)
        n = len(self.tokenizer(prefix + text, truncation=False)["input_ids"])
        return min(n, max_len), n > max_len

    # ------------------------------------------------------------------ identity
    def fingerprint(self) -> dict[str, Any]:
        """What makes two encoders produce the same document vectors (stored in index manifests)."""
        if self._fingerprint is None:
            cfg = self.config
            base = [
                (n, p)
                for m in self.models()
                for n, p in m.named_parameters()
                if "adapters." not in n and "invertible_adapters" not in n
            ]
            adapters_hash: dict[str, str] = {}
            if cfg.adapter_mode != "full":
                for name in [*self.task_adapter_names(), *sorted(self._lang_loaded)]:
                    params = [
                        (n, p)
                        for n, p in self.query_model.named_parameters()
                        if f".{name}." in n or n.endswith(f".{name}")
                    ]
                    adapters_hash[name] = _hash_tensors(params)
            self._fingerprint = {
                "backbone": cfg.backbone,
                "backbone_weights": _hash_tensors(base),
                "dim": self.dim,
                "pooling": cfg.pooling,
                "normalize": cfg.normalize,
                "query_prefix": cfg.query_prefix,
                "passage_prefix": cfg.passage_prefix,
                "max_query_length": cfg.max_query_length,
                "max_passage_length": cfg.max_passage_length,
                "tied": cfg.tied,
                "adapter_mode": cfg.adapter_mode,
                "adapters": adapters_hash,
                "source_lang": cfg.source_lang if cfg.adapter_mode == "madx" else None,
                "routing": {"query": cfg.routing.query, "doc": cfg.routing.doc}
                if cfg.adapter_mode == "madx"
                else None,
            }
        return dict(self._fingerprint)

    # ------------------------------------------------------------------ saving
    def save(self, out_dir: str | Path, *, save_lang: Sequence[str] = ()) -> Path:
        """Write a model folder: settings YAML + adapter weights (or full weights in ``full`` mode).

        Local language adapters and any in ``save_lang`` are copied in, so the folder stands alone.
        Written to ``OUT.partial`` and renamed, so a crash never leaves a half model under the final name."""
        import yaml

        out = Path(out_dir)
        tmp = out.with_name(out.name + ".partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        cfg = self.config
        data = to_dict(cfg)
        if cfg.adapter_mode == "full":
            if cfg.tied:
                self.query_model.save_pretrained(tmp / "backbone")
                self.tokenizer.save_pretrained(tmp / "backbone")
            else:
                self.query_model.save_pretrained(tmp / "query")
                self.passage_model.save_pretrained(tmp / "passage")
                self.tokenizer.save_pretrained(tmp / "tokenizer")
        else:
            (tmp / "adapters").mkdir()
            for name in self.task_adapter_names():
                self.query_model.save_adapter(str(tmp / "adapters" / name), name)
            lang_to_copy = set(save_lang)
            for lang, src in cfg.language_adapters.items():
                if lang in self._lang_loaded and (_is_local(src) or src == "new"):
                    lang_to_copy.add(lang)
            for lang in sorted(lang_to_copy):
                self.load_language_adapter(lang)
                self.query_model.save_adapter(str(tmp / "adapters" / f"lang_{lang}"), lang)
                data["language_adapters"][lang] = f"adapters/lang_{lang}"
        (tmp / MODEL_FILE).write_text(
            yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8"
        )
        swap_into_place(tmp, out)
        return out


def _hub_message(what: str, path: str, err: Exception) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return (
        f"could not load the {what} {path!r}: {first}. If this is a Hugging Face hub id and this machine is "
        "offline, download it elsewhere (`huggingface-cli download ID --local-dir DIR`) and pass --model DIR; "
        "`clir models list` shows models that work offline (e.g. multilingual-e5-small)"
    )


def _adapter_message(lang: str, source: str, err: Exception) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return (
        f"could not load the language adapter for {lang!r} from {source!r}: {first}. If AdapterHub / the "
        "Hugging Face hub is unreachable, download the adapter elsewhere (its folder holds adapter_config.json "
        f"and pytorch_adapter.bin or safetensors) and map it locally (language_adapters: {{{lang}: /path/to/folder}}), "
        f"or train one here with `clir train-language-adapter --lang {lang}`"
    )


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
