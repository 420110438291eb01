"""Shared pieces of the benchmarks: machine description, the RESULTS.md section writer, bench texts, timing.

Numbers on a shared 2-core machine are noisy, so every comparison alternates its contenders (A B A B ...),
reports medians, and records the load average before and after next to the figures."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parents[1]
RESULTS = BENCH_DIR / "RESULTS.md"
SHARED = Path(os.environ.get("CLIR_SHARED", REPO.parent / "shared"))
XQUAD = SHARED / "data" / "collections" / "xquad-r"
E5_DIR = Path(os.environ.get("CLIR_E5_DIR", REPO / ".cache" / "multilingual-e5-small-q4"))
#: the settings multilingual-e5-small was trained with (mean pooling, L2 norm, prefixes)
E5_SETTINGS: dict[str, Any] = {
    "pooling": "mean",
    "normalize": True,
    "query_prefix": "query: ",
    "passage_prefix": "passage: ",
}

HEADER = """# Benchmarks

Ratios against peers measured in the same run on the same machine (contenders alternate, medians reported).
Run all CPU benchmarks with `make bench` (`python -m eval.bench.run_all`), or one with
`python -m eval.bench.<name>`; each rewrites only its own `##` section of this file.
"""


def quiet_libraries() -> None:
    """Benchmarks print tables, not library chatter (tokenizer regex warnings, pooler-init notices)."""
    import logging
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore")
    for name in ("transformers", "sentence_transformers", "pyserini", "faiss"):
        logging.getLogger(name).setLevel(logging.ERROR)


# ---------------------------------------------------------------------------------------------- machine
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def mem_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return float("nan")


def load_avg() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def cpu_ticks() -> list[int] | None:
    """The machine's CPU time so far, in clock ticks over all cores: user, nice, system, idle, iowait, irq,
    softirq, steal (Linux /proc/stat; None elsewhere). Two readings give :func:`cpu_shares` between them."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            return [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None


def ticks_between(before: list[int] | None, after: list[int] | None) -> list[int] | None:
    """The CPU ticks spent between two :func:`cpu_ticks` readings, per kind (None where unknown)."""
    if not before or not after or len(before) != len(after):
        return None
    return [b - a for a, b in zip(before, after, strict=True)]


def cpu_shares(ticks: list[int] | None) -> dict[str, float]:
    """Steal (time the hypervisor gave this machine's virtual CPUs to others) and idle, as fractions of the
    CPU time in ``ticks`` (:func:`ticks_between`, summed over slices as they come); {} where unknown. On a
    shared VM, steal takes cores from under a benchmark without showing in any process's CPU time: it tells
    a slow slice from a slow server."""
    total = sum(ticks) if ticks and len(ticks) >= 8 else 0
    return {"steal": ticks[7] / total, "idle": ticks[3] / total} if ticks and total > 0 else {}


def add_ticks(parts: Sequence[list[int] | None]) -> list[int] | None:
    """Tick counts of several slices summed (None when any is unknown)."""
    if not parts or any(p is None for p in parts):
        return None
    return [sum(col) for col in zip(*parts, strict=True)]  # type: ignore[misc]


def cpu_has_amx() -> bool:
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def accelerator() -> str:
    """The GPU torch sees (name x count), or "none": with the CPU model and cores, all a report says of the
    machine (never its host name or folders)."""
    try:
        import torch

        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            return ", ".join(f"{n} x{names.count(n)}" for n in dict.fromkeys(names))
    except Exception:  # no torch, or a driver problem: report no accelerator rather than fail a benchmark
        pass
    return "none"


def machine_summary() -> dict[str, Any]:
    """CPU model, cores and accelerator: how committed results name the machine."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "accelerator": accelerator()}


def machine() -> dict[str, Any]:
    import torch

    from clir.model.precision import cpu_has_bf16

    info: dict[str, Any] = {
        **machine_summary(),
        "memory_gib": round(mem_gib(), 1),
        "avx512_bf16": cpu_has_bf16(),
        "amx": cpu_has_amx(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("transformers", "sentence-transformers", "faiss-cpu", "pyserini", "onnxruntime"):
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return info


def machine_line() -> str:
    m = machine()
    libs = ", ".join(
        f"{k} {m[k]}"
        for k in ("torch", "transformers", "sentence-transformers", "faiss-cpu", "pyserini")
        if k in m
    )
    bf16 = "AVX512-BF16" if m["avx512_bf16"] else "no native bf16"
    if m.get("amx"):  # bf16 matrix products run on AMX tiles: ~3x AVX512-BF16 on e5-small here
        bf16 = "AMX, " + bf16
    gpu = "" if m["accelerator"] == "none" else f", accelerator {m['accelerator']}"
    return (
        f"{m['cpu']}, {m['cores']} cores ({bf16}){gpu}, {m['memory_gib']} GiB RAM, torch threads "
        f"{m['torch_threads']}; Python {m['python']}, {libs}"
    )


def conditions(load_before: str) -> str:
    """One line saying when and under what load a section's numbers were taken."""
    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (
        f"_Measured {now} on {machine_line()}. Load average (1/5/15 min) before: {load_before}, "
        f"after: {load_avg()}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')} (load from other "
        "jobs moves absolute numbers more than ratios)._"
    )


# ---------------------------------------------------------------------------------------------- RESULTS.md
def publish(title: str, body: str, *, no_write: bool) -> None:
    """A benchmark's table: printed (``--no-write``), or written as its section of RESULTS.md."""
    if no_write:
        print(body)
        return
    write_section(title, body)
    print(f"wrote the '{title}' section of {RESULTS}")


def write_section(title: str, body: str, path: Path = RESULTS, *, first: bool = False) -> Path:
    """Replace (or add: at the end, or at the top with ``first``) the ``## title`` section of RESULTS.md,
    keeping every other section intact (other benchmarks, the REST section another script writes).
    Paths in ``body`` are made portable (relative to the repository, ``../shared/...``: the file is committed).
    Written to a temp name, then renamed."""
    from clir.portable import portable_text

    text = path.read_text(encoding="utf-8") if path.is_file() else HEADER
    head, sections = _split_sections(text)
    new = f"## {title}\n\n{portable_text(body.strip())}\n"
    for i, (name, _) in enumerate(sections):
        if name == title:
            sections[i] = (name, new)
            break
    else:
        sections.insert(0 if first else len(sections), (title, new))
    out = head.rstrip() + "\n\n" + "\n".join(s.rstrip() + "\n" for _, s in sections)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(out, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _split_sections(text: str) -> tuple[str, list[tuple[str, str]]]:
    parts = re.split(r"(?m)^(?=## )", text)
    head = HEADER
    if parts and not parts[0].startswith("## "):
        head = parts.pop(0)
    return head, [(p.splitlines()[0][3:].strip(), p) for p in parts]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(x: Any) -> str:
        if isinstance(x, float):
            return f"{x:.4g}" if abs(x) < 1000 else f"{x:,.0f}"
        return str(x)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(x) for x in r) + " |" for r in rows]
    return "\n".join(lines)


def load_json(name: str) -> Any:
    """The raw numbers a benchmark saved last (None when it has not run)."""
    path = BENCH_DIR / "results" / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def save_json(name: str, data: Any, folder: Path = BENCH_DIR / "results") -> Path:
    """Raw numbers next to RESULTS.md (``eval/bench/results/<name>.json``) for anyone re-plotting; paths in
    them portable, as in RESULTS.md."""
    from clir.portable import portable

    out = folder / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    doc = portable(json.loads(json.dumps(data, default=str)))
    out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return out


# ---------------------------------------------------------------------------------------------- timing
def alternate(
    contenders: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Run each contender ``rounds`` times, interleaved (A B C A B C ...), after ``warmup`` untimed rounds;
    interleaving spreads the load of other jobs evenly over the contenders. Returns seconds per run."""
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for r in range(rounds):
        # alternate the order too, so no contender always runs right after the same one
        names = list(contenders) if r % 2 == 0 else list(reversed(contenders))
        for name in names:
            t = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - t)
    return times


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def spread(xs: Sequence[float]) -> str:
    """min-max of a list of rates, as a compact 'a-b' string for tables."""
    return f"{min(xs):.3g}-{max(xs):.3g}"


# ---------------------------------------------------------------------------------------------- texts
def require_shared() -> None:
    """Check the shared data is there; provision multilingual-e5-small into E5_DIR on first use (offline, with
    the shared folder's tool, as the test suite's e5_small fixture does)."""
    from clir.errors import ClirError

    if not XQUAD.is_dir():
        raise ClirError(f"benchmark data not found: {XQUAD} (set CLIR_SHARED to the shared folder)")
    if (E5_DIR / "model.safetensors").is_file():
        return
    import logging

    from clir.testing import provision_e5_small

    logging.getLogger(__name__).info("provisioning multilingual-e5-small into %s", E5_DIR)
    why = provision_e5_small(SHARED, E5_DIR)
    if why is not None:
        raise ClirError(
            f"multilingual-e5-small not found in {E5_DIR} and could not be built (set CLIR_E5_DIR): {why}"
        )


def xquad_de_index(path: Path, encoder: Any = None) -> Path:
    """The xquad-r/de index built with e5-small, shared by the search and REST benchmarks (built if absent)."""
    if (path / "manifest.json").is_file():
        return path
    import logging

    from clir.index import IndexArgs, build_index

    logging.getLogger(__name__).info("building %s (xquad-r/de with multilingual-e5-small)", path)
    args = IndexArgs(collection=str(XQUAD / "de"), model=str(E5_DIR), out=str(path), overrides=E5_SETTINGS)
    build_index(args, encoder=encoder)
    return path


def xquad_langs() -> list[str]:
    return sorted(p.name for p in XQUAD.iterdir() if (p / "docs.jsonl").is_file())


def read_docs(lang: str) -> list[dict[str, Any]]:
    with open(XQUAD / lang / "docs.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def sentence_texts(per_lang: int) -> list[str]:
    """``per_lang`` sentences from every xquad-r language, evenly spaced through each file and interleaved
    (a mixed-script collection: character counts and token counts disagree across scripts)."""
    out: list[list[str]] = []
    for lang in xquad_langs():
        docs = read_docs(lang)
        step = max(1, len(docs) // per_lang)
        out.append([d["text"] for d in docs[::step][:per_lang]])
    return [t for group in zip(*out, strict=False) for t in group]


def long_passages(n: int, tokenizer, min_tokens: int = 200, max_tokens: int = 300) -> list[str]:
    """``n`` passages of ~200-300 tokens: consecutive xquad-r sentences of one language joined together
    (the sentences come from the same Wikipedia paragraphs, so the joins read as real passages)."""
    langs = xquad_langs()
    per_lang = -(-n // len(langs))
    out: list[list[str]] = []
    for lang in langs:
        group: list[str] = []
        buf: list[str] = []
        for d in read_docs(lang):
            buf.append(d["text"])
            ntok = len(tokenizer(" ".join(buf), add_special_tokens=False)["input_ids"])
            if ntok >= min_tokens:
                if ntok <= max_tokens:
                    group.append(" ".join(buf))
                buf = []
                if len(group) == per_lang:
                    break
        out.append(group)
    return [t for g in zip(*out, strict=False) for t in g][:n]


def e5_encoder(precision: str = "auto", **overrides: Any):
    from clir.model import load_encoder

    return load_encoder(str(E5_DIR), {**E5_SETTINGS, "precision": precision, **overrides}, device="cpu")
