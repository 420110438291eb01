"""The one work-folder protocol (clir/workdir.py) that index builds, ``clir train`` and the MLM trainers share:
the lock on OUT, the record check as a typed result, and the swap into place with its recovery after a kill."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from clir.errors import ClirError, ResumeRefused
from clir.workdir import RecordCheck, WorkDir, WorkDirBusy, compare_records

REPO = Path(__file__).resolve().parents[1]


def _folder(path: Path, text: str) -> Path:
    path.mkdir(parents=True)
    (path / "content.txt").write_text(text)
    return path


# ---------------------------------------------------------------------- lock
def test_a_second_run_is_refused_while_the_lock_is_held(tmp_path):
    out = tmp_path / "deep" / "out"
    first = WorkDir(out)
    first.lock(what="build")
    assert first.locked and (tmp_path / "deep" / "out.lock").is_file()
    second = WorkDir(out)
    with pytest.raises(WorkDirBusy, match=r"another build is writing .*out\.lock"):
        second.lock(what="build")
    assert not second.locked
    first.unlock()
    assert not (tmp_path / "deep" / "out.lock").exists()  # the lock file goes with the lock
    second.lock()
    second.unlock()
    second.unlock()  # releasing twice is harmless


def test_the_lock_is_refused_across_processes(tmp_path):
    out = tmp_path / "out"
    held = WorkDir(out)
    held.lock()
    code = textwrap.dedent(
        f"""
        from pathlib import Path
        from clir.workdir import WorkDir, WorkDirBusy
        try:
            WorkDir(Path({str(out)!r})).lock()
        except WorkDirBusy:
            raise SystemExit(3)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 3
    held.unlock()
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


def test_mlm_runs_take_the_lock_too(tmp_path):
    """Language adapters and the MLM head lock OUT as index builds do: a second run writes nothing."""
    from clir.train import mlm

    out = tmp_path / "adapter"
    held = WorkDir(out)
    held.lock()
    other = WorkDir(out)
    with pytest.raises(WorkDirBusy):
        mlm.open_work(other, {"lr": 1}, resume=False, overwrite=False)
    assert not (tmp_path / "adapter.partial").exists()
    held.unlock()
    work = mlm.open_work(other, {"lr": 1}, resume=False, overwrite=False)
    assert other.locked and json.loads((work / mlm.RUN_FILE).read_text()) == {"lr": 1}
    other.unlock()


# ---------------------------------------------------------------------- record
def test_the_record_check_is_a_typed_result(tmp_path):
    work = WorkDir(tmp_path / "out")
    assert work.check_record("state.json", {"a": 1}) == RecordCheck(work.partial / "state.json", found=False)
    work.partial.mkdir()
    work.write_record("state.json", {"a": 1, "shard": (0, 2), "enc": {"dim": 8}})
    assert work.check_record("state.json", {"a": 1, "shard": [0, 2], "enc": {"dim": 8}}).same
    check = work.check_record("state.json", {"a": 2, "shard": (0, 2), "enc": {"dim": 8}, "new": None})
    assert check.found and not check.same
    assert check.keys == ["a"]  # a key the record lacks and the request leaves None matches
    assert [(d.recorded, d.requested) for d in check.differences] == [(1, 2)]
    refusal = check.refusal(work.partial, "start over")
    assert isinstance(refusal, ResumeRefused) and "different settings (a)" in str(refusal)

    (work.partial / "state.json").write_text("[1, 2]")
    assert work.check_record("state.json", {"a": 1}, what="a build state").problem == (
        "its state.json is not a build state"
    )
    (work.partial / "state.json").write_text('{"a": ')  # a torn write
    torn = work.check_record("state.json", {"a": 1})
    assert torn.found and torn.problem and not torn.same
    assert isinstance(torn.refusal(work.partial, "start over"), ResumeRefused)


def test_a_setting_the_record_predates_matches_its_default():
    assert compare_records({"a": 1}, {"a": 1, "b": 0}, defaults={"b": 0}) == ()
    (diff,) = compare_records({"a": 1}, {"a": 1, "b": 5}, defaults={"b": 0})
    assert (diff.key, diff.recorded, diff.requested) == ("b", None, 5)


def test_mlm_resume_with_other_settings_is_a_resume_refusal(tmp_path):
    from clir.train import mlm

    work = mlm.prepare_work(tmp_path / "o", {"lr": 1, "seed": 0}, resume=False, overwrite=False)
    assert (work / mlm.RUN_FILE).read_text() == json.dumps({"lr": 1, "seed": 0}, indent=2) + "\n"
    with pytest.raises(ResumeRefused, match=r"different settings \(lr\).*other settings.*--resume"):
        mlm.prepare_work(tmp_path / "o", {"lr": 2, "seed": 0}, resume=True, overwrite=False)
    assert mlm.prepare_work(tmp_path / "o", {"lr": 1, "seed": 0}, resume=True, overwrite=False) == work


def test_train_resume_with_another_config_is_a_resume_refusal(tmp_path):
    from clir.config import DataConfig, ModelConfig, OptimConfig, TrainConfig, to_dict
    from clir.train.run_folder import check_same_run

    def cfg(**optim) -> TrainConfig:
        return TrainConfig(
            model=ModelConfig(backbone="bb"), data=DataConfig(triples="t.jsonl"), optim=OptimConfig(**optim)
        )

    saved = to_dict(cfg(seed=1))
    check_same_run(saved, cfg(seed=1), tmp_path)
    with pytest.raises(ResumeRefused, match=r"optim\.seed: 1 -> 2"):
        check_same_run(saved, cfg(seed=2), tmp_path)
    with pytest.raises(ResumeRefused, match="global batch"):
        check_same_run(saved, cfg(seed=1, batch_size=saved["optim"]["batch_size"] + 1), tmp_path)


# ---------------------------------------------------------------------- swap
_KILLED_SWAP = """
import os, sys
from pathlib import Path
from clir.workdir import WorkDir

real = os.replace
def replace(src, dst):
    real(src, dst)
    if str(dst).endswith(".old"):
        os._exit(9)  # killed between the two renames
os.replace = replace
out = Path(sys.argv[1])
WorkDir(out).finish(out.with_name("out.partial") / "final", record="state.json")
"""


def _killed_swap(tmp_path: Path) -> Path:
    out = _folder(tmp_path / "out", "old")
    partial = tmp_path / "out.partial"
    _folder(partial / "final", "new")
    (partial / "state.json").write_text("{}")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", _KILLED_SWAP, str(out)], env=env)
    assert proc.returncode == 9
    # the kill left both versions whole: no OUT, the previous one as OUT.old, the new one still staged
    assert not out.exists()
    assert (tmp_path / "out.old" / "content.txt").read_text() == "old"
    assert (partial / "final" / "content.txt").read_text() == "new"
    return out


def test_a_swap_killed_midway_restores_the_previous_version(tmp_path):
    out = _killed_swap(tmp_path)
    WorkDir(out).recover()
    assert (out / "content.txt").read_text() == "old" and not (tmp_path / "out.old").exists()


def test_a_swap_killed_midway_can_be_finished(tmp_path):
    out = _killed_swap(tmp_path)
    work = WorkDir(out)
    work.recover(keep_old=True)  # the caller is about to swap the complete new version in
    assert not out.exists() and (tmp_path / "out.old").is_dir()
    work.finish(work.partial / "final", record="state.json")
    assert (out / "content.txt").read_text() == "new"
    assert not (tmp_path / "out.old").exists() and not work.partial.exists()


def test_an_old_version_beside_a_finished_swap_is_removed(tmp_path):
    out = _folder(tmp_path / "out", "new")
    _folder(tmp_path / "out.old", "old")
    WorkDir(out).recover()
    assert (out / "content.txt").read_text() == "new" and not (tmp_path / "out.old").exists()


def test_finish_replaces_out_whole_and_clears_the_staging(tmp_path):
    out = _folder(tmp_path / "out", "old")
    work = WorkDir(out)
    _folder(work.partial / "weights", "new")
    (work.partial / "run.json").write_text("{}")
    work.finish(work.partial / "weights", record="run.json")
    assert (out / "content.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_unwritable_parent_is_an_error_in_words(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ClirError, match="cannot write next to --out"):
        WorkDir(tmp_path / "file" / "out").lock()
