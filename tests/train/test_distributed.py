"""DeepSpeed across processes on CPU (gloo): ZeRO-1/2/3 at 2 ranks reach the losses of one process
with the same global batch; activation checkpointing changes nothing; a killed-and-resumed
2-rank run repeats the uninterrupted one bitwise; checkpoints resume at another world size.

Every run is a real ``recurlm-train`` (``launch=local`` starts torchrun) on the tiny job."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from recurlm.configs import compose
from recurlm.data import prepare

pytestmark = pytest.mark.distributed
STEPS = 6


@pytest.fixture(scope="module")
def runner(tmp_path_factory, tiny_overrides, subprocess_env):
    root = tmp_path_factory.mktemp("dist")
    base = [*tiny_overrides, f"data.cache_dir={root / 'cache'}", f"train.steps={STEPS}", "train.checkpoint_every=3"]
    prepare(compose(base).data, progress=False)  # both ranks then read the cache
    done = {}

    def run(name, *overrides, nproc=1, run_dir=None):
        run_dir = run_dir or str(root / name)
        key = (name, overrides, nproc)
        if key not in done:
            launch = ["launch=local", f"launch.nproc_per_node={nproc}"] if nproc > 1 else []
            cmd = [sys.executable, "-m", "recurlm.train", *base, f"run_dir={run_dir}", *launch, *overrides]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=subprocess_env)
            assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
            with open(os.path.join(run_dir, "metrics.jsonl")) as f:
                done[key] = {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}
        return done[key]

    run.root = root
    return run


def assert_close(a, b, rtol=1e-4):
    """fp32 sums in another order (reduce-scatter, partitioned AdamW) drift by ~1e-5 over a few steps."""
    assert a.keys() == b.keys()
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=rtol), (step, a[step], b[step])


def zero(stage):
    """Overrides for ZeRO ``stage``. At stage 3 every parameter is partitioned: DeepSpeed keeps
    parameters under 1e5 elements (all of a tiny model's) whole on every rank by default."""
    persistence = ["+deepspeed.overrides={zero_optimization:{stage3_param_persistence_threshold:0}}"]
    return (f"deepspeed=zero{stage}", *(persistence if stage == 3 else []))


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stage_at_two_ranks_matches_one_process(runner, stage):
    single = runner("single")
    assert_close(runner(f"zero{stage}", *zero(stage), nproc=2), single)


def test_activation_checkpointing_keeps_the_losses(runner):
    assert_close(runner("recompute", "deepspeed.checkpoint_blocks=[-1]"), runner("single"), rtol=1e-6)


@pytest.mark.parametrize("stage", [1, 3])
def test_killed_and_resumed_two_rank_run_is_bitwise_identical(runner, stage):
    straight = runner(f"zero{stage}", *zero(stage), nproc=2)
    run_dir = str(runner.root / f"resume{stage}")
    first = runner(f"resume{stage}-a", *zero(stage), "train.exit_after_steps=3", nproc=2, run_dir=run_dir)
    assert sorted(first) == [1, 2, 3]
    resumed = runner(f"resume{stage}-b", *zero(stage), "resume=auto", nproc=2, run_dir=run_dir)
    assert resumed == straight  # the metrics file holds both halves


def fork_at_step(runner, source, name, step=3):
    """A copy of run ``source`` as it was after ``step``: its checkpoint and nothing later."""
    target = runner.root / name
    shutil.copytree(runner.root / source / "checkpoints" / str(step), target / "checkpoints" / str(step))
    (target / "checkpoints" / "latest").write_text(str(step))
    return str(target)


def test_two_rank_checkpoint_resumes_on_one_rank(runner):
    straight = runner("zero1", "deepspeed=zero1", nproc=2)
    runner("resume1-a", "deepspeed=zero1", "train.exit_after_steps=3", nproc=2, run_dir=str(runner.root / "resume1"))
    run_dir = fork_at_step(runner, "resume1", "elastic-2to1")
    resumed = runner("elastic-2to1", "deepspeed=zero1", "resume=auto", run_dir=run_dir)
    assert_close(resumed, {s: straight[s] for s in (4, 5, 6)})


def test_one_rank_checkpoint_resumes_on_two_ranks(runner):
    straight = runner("single-zero1", "deepspeed=zero1")
    runner("one-a", "deepspeed=zero1", "train.exit_after_steps=3", run_dir=str(runner.root / "one"))
    run_dir = fork_at_step(runner, "one", "elastic-1to2")
    resumed = runner("elastic-1to2", "deepspeed=zero1", "resume=auto", nproc=2, run_dir=run_dir)
    assert_close(resumed, {s: straight[s] for s in (4, 5, 6)})


def test_deepspeed_launcher_runs_the_same_job_as_torchrun(runner):
    torchrun = runner("zero1", "deepspeed=zero1", nproc=2)
    assert runner("ds-launcher", "deepspeed=zero1", "launch.launcher=deepspeed", nproc=2) == torchrun
