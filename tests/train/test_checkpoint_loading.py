"""Loading: a damaged newest checkpoint is skipped by resume=auto (naming the file and why) and
refused by resume=<path>; debris of interrupted saves and deletions is cleared at start; a crafted
pickle in a checkpoint runs nothing, through resume= or recurlm-generate checkpoint=."""
import json
import os
import shutil

import pytest
import torch

from recurlm.configs import compose
from recurlm.train import checkpoint as ckpt
from recurlm.models.checkpoint_files import write_manifest
from recurlm.train.trainer import Trainer

from ..helpers.tiny_job import TINY_DATA, TINY_TRAIN

QUIET = ["logger.wandb.mode=disabled", "eval.tasks=[]"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_cache):
    """A finished 4-step run with checkpoints 2 and 4 (copied per test)."""
    from recurlm.train.trainer import train

    run_dir = str(tmp_path_factory.mktemp("loading") / "run")
    train(compose([*TINY_DATA, f"data.cache_dir={data_cache}", *TINY_TRAIN, *QUIET, f"run_dir={run_dir}",
                   "train.steps=4", "train.checkpoint_every=2"]))
    return run_dir


@pytest.fixture
def run_copy(trained, tmp_path, data_cache):
    run_dir = str(tmp_path / "run")
    shutil.copytree(trained, run_dir)

    def job(*overrides):
        return compose([*TINY_DATA, f"data.cache_dir={data_cache}", *TINY_TRAIN, *QUIET, f"run_dir={run_dir}",
                        "train.steps=6", "train.checkpoint_every=2", *overrides])

    job.run_dir = run_dir
    job.checkpoint = lambda step: os.path.join(run_dir, "checkpoints", str(step))
    return job


def events(run_dir, kind):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [r["message"] for r in map(json.loads, f) if r.get("event") == kind]


def truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def flip_bit(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 0x10]))


def same_size_garbage(path):
    size = os.path.getsize(path)
    with open(path, "w") as f:
        f.write("{" * size)


def empty_dir(path):
    shutil.rmtree(path)
    os.makedirs(path)


MODEL = "ds/state/mp_rank_00_model_states.pt"
DAMAGE = {  # case: (file or directory inside checkpoint 4, how it is damaged, words of the reason)
    "truncated-model": (MODEL, truncate, "bytes, its manifest says"),
    "truncated-rng": ("rng/rank0.pt", truncate, "bytes, its manifest says"),
    "broken-trainer-state": ("trainer_state.json", same_size_garbage, "does not match its sha256"),
    "emptied-ds-state": ("ds/state", empty_dir, "is missing"),
    "flipped-bit-in-weights": (MODEL, flip_bit, "does not match its sha256"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_newest_checkpoint_is_skipped_by_auto_and_refused_by_path(run_copy, case):
    target, damage, reason = DAMAGE[case]
    damage(os.path.join(run_copy.checkpoint(4), target))
    trainer = Trainer(run_copy("resume=auto"))
    trainer.close()
    assert trainer.step == 2  # the previous intact checkpoint
    skipped = [m for m in events(run_copy.run_dir, "checkpoint") if m.startswith("skipped")]
    file = target if case != "emptied-ds-state" else MODEL
    assert len(skipped) == 1 and os.path.join(run_copy.checkpoint(4), file) in skipped[0] and reason in skipped[0]
    assert events(run_copy.run_dir, "resumed") == [f"resumed from {run_copy.checkpoint(2)} (step 2)"]
    with pytest.raises(ckpt.CheckpointError, match=f"refusing checkpoint .*/4: .*{file}"):
        Trainer(run_copy(f"resume={run_copy.checkpoint(4)}"))


def test_debris_of_interrupted_saves_and_deletions_is_removed_at_start(run_copy):
    root = os.path.dirname(run_copy.checkpoint(4))
    shutil.copytree(run_copy.checkpoint(4), os.path.join(root, ".tmp-6"))  # a save killed mid-write
    shutil.copytree(run_copy.checkpoint(2), os.path.join(root, ".trash-1"))  # a deletion killed midway
    os.makedirs(os.path.join(root, "3", "ds"))  # an older recurlm's half-deleted checkpoint
    with open(os.path.join(root, "latest.tmp-4242"), "w") as f:
        f.write("6")
    trainer = Trainer(run_copy("resume=auto"))
    trainer.close()
    assert sorted(os.listdir(root)) == ["2", "4", "latest"]
    removed = [m for m in events(run_copy.run_dir, "checkpoint") if m.startswith("removed debris")]
    assert len(removed) == 4 and trainer.step == 4


class RunsCode:
    """Unpickling this runs a shell command: what a crafted checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant(checkpoint, relative, marker):
    """Replace one file of ``checkpoint`` with a crafted pickle and rewrite the manifest to match
    (a crafted checkpoint comes with a consistent manifest)."""
    torch.save({"module": RunsCode(marker)}, os.path.join(checkpoint, relative))
    write_manifest(checkpoint)


@pytest.mark.parametrize("relative", [MODEL, "rng/rank0.pt"])
def test_a_crafted_pickle_runs_nothing(run_copy, tmp_path, relative):
    from recurlm.eval.generate_cli import main as generate

    marker = tmp_path / "code-ran"
    crafted = run_copy.checkpoint(4)
    plant(crafted, relative, marker)
    torch.load(os.path.join(crafted, relative), weights_only=False)  # the file is live: loading it runs code
    assert marker.exists()
    marker.unlink()

    with pytest.raises(ckpt.CheckpointError, match=f"{relative}.*weights only"):
        Trainer(run_copy(f"resume={crafted}"))
    with pytest.raises(ckpt.CheckpointError, match=f"{relative}.*weights only"):
        generate([f"checkpoint={crafted}", "prompt=x", "max_new_tokens=1"])
    trainer = Trainer(run_copy("resume=auto"))  # skips it, resumes from step 2
    trainer.close()
    assert trainer.step == 2
    assert not marker.exists()
