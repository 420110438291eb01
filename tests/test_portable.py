"""Portable reports (clir/portable.py): committed results name paths relative to the repository (or the id
they were given) and the machine by CPU, cores and accelerator, never a host's or a user's folders."""

from __future__ import annotations

import json
from pathlib import Path

from clir.portable import host_paths, portable, portable_path, portable_text, repo_root

ROOT = Path(__file__).resolve().parents[1]
#: what gets committed as results: experiment outputs, the benchmark page and its raw numbers
REPORTS = [
    ROOT / "eval" / "results",
    ROOT / "eval" / "bench" / "RESULTS.md",
    ROOT / "eval" / "bench" / "results",
    ROOT / "shipped",  # trained adapters' metadata and model cards
]
TEXT_SUFFIXES = {".md", ".json", ".jsonl", ".yaml", ".yml", ".txt", ".tsv", ".csv", ".trec"}


def _report_files() -> list[Path]:
    """What a commit would hold under REPORTS: tracked files and untracked ones git does not ignore (an
    experiment's indexes and runs are ignored: they name this machine's model folders and stay here)."""
    import subprocess

    paths = [str(p.relative_to(ROOT)) for p in REPORTS if p.exists()]
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", "--", *paths],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode()
        files = [ROOT / f for f in listed.split("\0") if f]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every file under REPORTS
        files = [f for p in REPORTS for f in ([p] if p.is_file() else sorted(p.rglob("*")))]
    return [f for f in files if f.is_file() and f.suffix in TEXT_SUFFIXES]


def test_committed_reports_hold_no_absolute_host_path():
    files = _report_files()
    assert any(f.name == "RESULTS.md" for f in files) and any(f.name == "metrics.json" for f in files)
    found = {
        str(f.relative_to(ROOT)): sorted(set(host_paths(f.read_text(encoding="utf-8"))))[:3] for f in files
    }
    assert {k: v for k, v in found.items() if v} == {}


def test_committed_reports_name_no_host():
    """Machines are described by CPU model, cores and accelerator: no host name field anywhere."""
    for f in _report_files():
        if f.suffix != ".json":
            continue
        text = f.read_text(encoding="utf-8")
        for key in ('"hostname"', '"host"', '"node"', '"user"', '"cwd"'):
            assert key not in text, (f, key)


def test_host_paths_finds_what_the_check_must_catch():
    text = "run `/work/wt/x/models/a` with --out /tmp/out (data: /home/me/d, /root/c, /Users/u/e)"
    assert host_paths(text) == ["/work/wt/x/models/a", "/tmp/out", "/home/me/d", "/root/c", "/Users/u/e"]
    assert host_paths("https://host/work/x irds:clir/ud/de ../shared/data models/a …/out") == []


def test_portable_paths(tmp_path, monkeypatch):
    assert repo_root() == ROOT
    assert portable_path(ROOT / "models" / "paper-small" / "e5-full") == "models/paper-small/e5-full"
    assert portable_path(ROOT.parent / "shared" / "data" / "mono") == "../shared/data/mono"
    monkeypatch.setenv("CLIR_SHARED", str(tmp_path / "elsewhere"))
    assert portable_path(tmp_path / "elsewhere" / "data" / "train") == "../shared/data/train"
    monkeypatch.setenv("IR_DATASETS_HOME", str(tmp_path / "irds"))
    assert portable_path(tmp_path / "irds" / "clir" / "ud") == "$IR_DATASETS_HOME/clir/ud"
    assert portable_path(Path.home() / ".cache" / "m") == "~/.cache/m"
    assert portable_path("/srv/x/some-model") == "…/some-model"
    for unchanged in ("irds:clir/xquad-r/de", "multilingual-e5-small", "models/a", "intfloat/e5", "new"):
        assert portable_path(unchanged) == unchanged


def test_portable_text_and_documents():
    cmd = f"clir experiment --config {ROOT}/configs/eval/x.yaml --out={ROOT}/eval/results/x"
    assert portable_text(cmd) == "clir experiment --config configs/eval/x.yaml --out=eval/results/x"
    md = f"- indexes: `{ROOT}/eval/results/x/indexes` ([plot]({ROOT}/a.png)) https://ir-datasets.com/a/b"
    assert (
        portable_text(md) == "- indexes: `eval/results/x/indexes` ([plot](a.png)) https://ir-datasets.com/a/b"
    )
    doc = {"rows": [{"source": f"{ROOT}/models/m", "mrr": 0.5}], "variant": "madx/q-source_d-target"}
    assert portable(doc) == {
        "rows": [{"source": "models/m", "mrr": 0.5}],
        "variant": "madx/q-source_d-target",
    }
    assert portable_text(portable_text(cmd)) == portable_text(cmd)  # idempotent


def test_benchmark_writers_are_portable(tmp_path):
    from eval.bench import common

    common.write_section(
        "A section", f"model `{ROOT}/.cache/e5` on {common.machine_line()}", tmp_path / "R.md"
    )
    text = (tmp_path / "R.md").read_text(encoding="utf-8")
    assert "model `.cache/e5`" in text and host_paths(text) == []
    out = common.save_json("search", {"model": ROOT / ".cache" / "e5", "machine": common.machine()}, tmp_path)
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert saved["model"] == ".cache/e5"
    assert {"cpu", "cores", "accelerator"} <= set(saved["machine"])


def test_shipped_checksums_cover_every_file():
    """`SHA256SUMS` of a shipped folder lists every file in it with its current hash (users check
    downloads with `sha256sum -c`; a stale list would fail them)."""
    import hashlib

    for sums in (ROOT / "shipped").rglob("SHA256SUMS"):
        folder = sums.parent
        listed = {}
        for line in sums.read_text(encoding="utf-8").splitlines():
            digest, name = line.split(maxsplit=1)
            listed[name.lstrip("*").removeprefix("./")] = digest
        files = {
            str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != "SHA256SUMS"
        }
        assert set(listed) == files, f"{sums}: listed and present files differ"
        for name, digest in listed.items():
            assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, f"{sums}: {name}"
