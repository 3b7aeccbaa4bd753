"""Saving never costs the previous checkpoint: an exception at any stage of a save (torch reports a
full disk as RuntimeError), a full real file system, a failing ``latest`` write. The partial write
is removed and the report says which checkpoint is the newest, or that none exists."""
import errno
import os
import subprocess

import pytest
import torch

from recurlm.train import checkpoint as ckpt

TORCH_ENOSPC = "[enforce fail at inline_container.cc:672] . unexpected pos 2581120 vs 2581012"
"""What ``torch.save`` raises (as RuntimeError) when the disk fills mid-write."""


class TensorEngine:
    """Stands in for DeepSpeed's engine: writes one tensor file of ``nbytes`` with torch.save."""

    def __init__(self, nbytes=4096):
        self.nbytes = nbytes

    def save_checkpoint(self, save_dir, tag, save_latest, client_state):
        os.makedirs(os.path.join(save_dir, tag))
        torch.save({"module": {"w": torch.zeros(self.nbytes // 4)}},
                   os.path.join(save_dir, tag, "mp_rank_00_model_states.pt"))


def debris(root):
    return [n for n in os.listdir(root) if n.startswith((".tmp", ".trash")) or ".tmp-" in n]


def raiser(exc):
    def fail(*args, **kwargs):
        raise exc
    return fail


STAGES = {  # where a save can fail, and how to make it fail there
    "engine": lambda mp, engine, exc: mp.setattr(engine, "save_checkpoint", raiser(exc)),
    "rng": lambda mp, engine, exc: mp.setattr(ckpt.torch, "save", raiser(exc)),
    "trainer_state": lambda mp, engine, exc: mp.setattr(ckpt, "write_atomic", raiser(exc)),
    "fsync": lambda mp, engine, exc: mp.setattr(ckpt, "fsync_tree", raiser(exc)),
    "manifest": lambda mp, engine, exc: mp.setattr(ckpt, "write_manifest", raiser(exc)),
    "publish": lambda mp, engine, exc: mp.setattr(ckpt, "publish", raiser(exc)),
}


@pytest.mark.parametrize("exc", [RuntimeError(TORCH_ENOSPC), OSError(errno.ENOSPC, "No space left on device")],
                         ids=["torch-RuntimeError", "OSError"])
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_failure_at_any_stage_keeps_the_previous_checkpoint(tmp_path, monkeypatch, stage, exc):
    manager = ckpt.CheckpointManager(str(tmp_path))
    engine = TensorEngine()
    good = manager.save(engine, 1, {"step": 1}, "")
    STAGES[stage](monkeypatch, engine, exc)
    with pytest.raises(ckpt.CheckpointError) as err:
        manager.save(engine, 2, {"step": 2}, "")
    monkeypatch.undo()
    message = str(err.value)
    assert "saving step 2 failed" in message and type(exc).__name__ in message
    assert f"the newest checkpoint is still {good} (step 1)" in message
    assert debris(str(tmp_path)) == []  # the partial write is gone
    assert manager.latest() == good and ckpt.problem(good) is None
    assert (tmp_path / "latest").read_text() == "1"


def test_a_failed_only_save_says_no_checkpoint_exists(tmp_path, monkeypatch):
    manager = ckpt.CheckpointManager(str(tmp_path))
    monkeypatch.setattr(ckpt.torch, "save", raiser(RuntimeError(TORCH_ENOSPC)))
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint of this run exists"):
        manager.save(TensorEngine(), 1, {"step": 1}, "")
    assert os.listdir(tmp_path) == []


def test_a_failing_latest_write_leaves_no_temporary_and_resume_finds_the_new_step(tmp_path, monkeypatch):
    notes = []
    manager = ckpt.CheckpointManager(str(tmp_path), log=notes.append)
    manager.save(TensorEngine(), 1, {"step": 1}, "")
    real_replace = os.replace

    def full_disk_on_latest(src, dst):
        if os.path.basename(dst) == ckpt.LATEST:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", full_disk_on_latest)
    new = manager.save(TensorEngine(), 2, {"step": 2}, "")
    monkeypatch.undo()
    assert debris(str(tmp_path)) == []  # no latest.tmp-<pid>
    assert not (tmp_path / "latest").exists()  # it would name step 1
    assert manager.latest() == new and "could not update" in notes[0]


def test_low_free_space_applies_retention_before_the_save(tmp_path, monkeypatch):
    notes = []
    manager = ckpt.CheckpointManager(str(tmp_path), keep_last=2, log=notes.append)
    for step in (1, 2):
        manager.save(TensorEngine(), step, {"step": step}, "")
    seen = []
    real_save = TensorEngine.save_checkpoint

    def record(self, *args, **kwargs):
        seen.append(manager.published_steps())
        real_save(self, *args, **kwargs)

    monkeypatch.setattr(TensorEngine, "save_checkpoint", record)
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 100})())
    manager.save(TensorEngine(), 3, {"step": 3}, "")
    assert seen == [[2]]  # step 1 went before step 3 was written; the newest published stayed
    assert manager.published_steps() == [2, 3]
    assert "applied retention before saving step 3 (removed steps [1])" in notes[0]


@pytest.fixture
def small_fs(tmp_path):
    """small_fs(mib): a tmpfs of that size (root only), a disk that really fills up."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; the fault-injection tests above cover the same paths")
    mounts = []

    def mount(mib):
        path = tmp_path / f"small{len(mounts)}"
        path.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(path)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()})")
        mounts.append(path)
        return path

    yield mount
    for path in mounts:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def test_a_real_full_disk_keeps_the_previous_checkpoint(small_fs):
    root = str(small_fs(3) / "checkpoints")
    manager = ckpt.CheckpointManager(root, keep_last=2)
    for step in range(1, 6):  # 1 MiB each, 3 MiB of disk: the third fits only with retention applied first
        manager.save(TensorEngine(1 << 20), step, {"step": step}, "")
    assert manager.published_steps() == [4, 5]
    with pytest.raises(ckpt.CheckpointError) as err:  # 4 MiB can never fit: torch's own error
        manager.save(TensorEngine(4 << 20), 6, {"step": 6}, "")
    assert "RuntimeError" in str(err.value) or "No space left" in str(err.value)
    assert f"the newest checkpoint is still {manager.path(5)} (step 5)" in str(err.value)
    assert debris(root) == [] and manager.latest() == manager.path(5)
    assert ckpt.problem(manager.path(5)) is None


def test_final_save_failure_exits_non_zero_and_reports_no_checkpoint(tiny_job, tmp_path, monkeypatch, capsys):
    from recurlm.train.trainer import Trainer

    trainer = Trainer(tiny_job("train.steps=2", "logger.wandb.mode=disabled", "eval.tasks=[]"))
    monkeypatch.setattr(trainer.engine, "save_checkpoint", raiser(OSError(errno.ENOSPC, "No space left on device")))
    result = trainer.run()
    assert result.exit_code != 0 and result.checkpoint is None
    err = capsys.readouterr()
    assert "no checkpoint of this run exists" in err.out + err.err
    assert "checkpoint:  none: no checkpoint of this run exists (saving failed)" in err.err
    assert debris(os.path.join(result.run_dir, "checkpoints")) == []


def test_trainer_on_a_small_disk_finishes_by_applying_retention_early(tiny_job, small_fs):
    from recurlm.train.trainer import train

    # the tiny model's checkpoint takes 2.1 MiB with its optimizer state: 5 MiB hold two, and the third
    # fits only if retention (keep_last=2) removes the oldest before it is written
    result = train(tiny_job("train.steps=4", "train.checkpoint_every=1", "train.keep_last=2",
                            "logger.wandb.mode=disabled", "eval.tasks=[]", run_dir=str(small_fs(5) / "run")))
    assert result.exit_code == 0 and result.checkpoint.endswith("/4")
    assert ckpt.CheckpointManager(os.path.dirname(result.checkpoint)).published_steps() == [3, 4]
    assert ckpt.problem(result.checkpoint) is None
    # the same run on a disk too small for even one checkpoint: exits non-zero, says none exists
    failed = train(tiny_job("train.steps=2", "logger.wandb.mode=disabled", "eval.tasks=[]",
                            run_dir=str(small_fs(1) / "run")))
    assert failed.exit_code != 0 and failed.checkpoint is None
    assert debris(os.path.join(failed.run_dir, "checkpoints")) == []
