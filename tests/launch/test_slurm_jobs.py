"""Generated jobs on the real local Slurm cluster (.ci/slurm-up.sh: node1, node2).

Two 2-node jobs start together (each node has room for both): an uninterrupted reference run with
the doctor, a continuation-chain job and a dependent export job, and a run that is signalled
(``scancel --signal=USR1 --batch``) mid-training, saves, requeues itself and resumes. Their final
losses must agree exactly. A sweep (job array) with a dependent job per element follows.
"""
import glob
import json
import os
import subprocess
import time

import pytest

from recurlm import cli
from recurlm.launch.slurm import status_lines

pytestmark = pytest.mark.slurm
STEPS = 300  # long enough to signal the run mid-training (~0.05-0.2 s per step here)
JOB_TIMEOUT = 420  # seconds; Slurm's timers jitter and the machine is shared


def final(slurm, run_dir: str) -> tuple[float, float]:
    """(training loss, validation loss) logged at the last step."""
    m = slurm.metrics(run_dir)
    loss = [x["loss"] for x in m if x.get("step") == STEPS and "loss" in x]
    val = [x["val_loss"] for x in m if x.get("step") == STEPS and "val_loss" in x]
    assert loss and val, f"{run_dir} has no metrics at step {STEPS}"
    return loss[-1], val[-1]


@pytest.fixture(scope="module")
def two_runs(slurm_cluster, tiny, tmp_path_factory):
    """Submit the reference run and the run to interrupt; signal the second one mid-training."""
    slurm = slurm_cluster
    root = tmp_path_factory.mktemp("two-node")
    common = [*tiny, f"train.steps={STEPS}", "launch=slurm", "launch.slurm.nodes=2", "launch.slurm.time=00:15:00"]
    reference, preempted = str(root / "reference"), str(root / "preempted")
    assert cli.train_main([*common, f"run_dir={reference}", "launch.slurm.chain=1",
                           "launch.slurm.eval_command=recurlm-convert export $RUN_DIR"]) == 0
    assert cli.train_main([*common, f"run_dir={preempted}", "launch.slurm.doctor=false"]) == 0
    victim = slurm.jobs_of(preempted)[0]["job_id"]

    deadline = time.monotonic() + JOB_TIMEOUT
    while time.monotonic() < deadline:  # wait until it is really training, then signal it
        steps = [x["step"] for x in slurm.metrics(preempted) if "loss" in x]
        if steps and steps[-1] >= 20:
            break
        assert slurm.in_queue([victim]), f"job {victim} ended before it could be signalled"
        time.sleep(0.5)
    else:
        pytest.fail(f"job {victim} did not reach step 20 in {JOB_TIMEOUT} s")
    subprocess.run(["scancel", "--signal=USR1", "--batch", victim], check=True)

    all_jobs = [j["job_id"] for run in (reference, preempted) for j in slurm.jobs_of(run)]
    slurm.wait_until_done(all_jobs, JOB_TIMEOUT)
    return {"reference": reference, "preempted": preempted, "victim": victim}


def test_two_node_job_trains_and_leaves_checkpoint_and_wandb(slurm_cluster, two_runs):
    slurm, run = slurm_cluster, two_runs["reference"]
    train_job = slurm.jobs_of(run)[0]
    assert train_job["kind"] == "train" and os.path.isfile(os.path.join(run, "slurm", "train.sbatch"))
    state = slurm.job_state(train_job["job_id"])
    log = slurm.read_log(os.path.join(run, "slurm", "logs", f"{train_job['job_id']}.out"))
    assert state["JobState"] == "COMPLETED", log[-3000:]
    assert state["NodeList"] == "node[1-2]" and state["NumNodes"] == "2"
    # the doctor ran on both ranks before training: kernels and an all_reduce across the nodes
    assert "ok   kernel gla chunk fwd+bwd [cpu]" in log
    assert "ok   all_reduce gloo over 2 ranks: sum 3 (expected 3)" in log
    assert "[recurlm-doctor rank 1" in log
    with open(os.path.join(run, "checkpoints", "latest")) as f:
        assert f.read().strip() == str(STEPS)
    with open(os.path.join(run, "checkpoints", str(STEPS), "trainer_state.json")) as f:
        assert json.load(f)["world_size"] == 2
    assert glob.glob(os.path.join(run, "wandb", "offline-run-*", "run-*.wandb"))
    assert "finished" in log


def test_chain_and_dependent_eval_job_run_after_training(slurm_cluster, two_runs):
    slurm, run = slurm_cluster, two_runs["reference"]
    jobs = {j["kind"]: j for j in slurm.jobs_of(run)}
    train, chain, evaluation = jobs["train"], jobs["chain"], jobs["eval"]
    assert chain["dependency"] == f"afterany:{train['job_id']}"
    assert evaluation["dependency"] == f"afterok:{chain['job_id']}"
    for job in (chain, evaluation):
        assert slurm.job_state(job["job_id"])["JobState"] == "COMPLETED"
    chain_log = slurm.read_log(os.path.join(run, "slurm", "logs", f"{chain['job_id']}.out"))
    assert "nothing to do" in chain_log  # the continuation found the run complete
    eval_log = slurm.read_log(os.path.join(run, "slurm", "logs", f"eval-{evaluation['job_id']}.out"))
    export = os.path.join(run, "checkpoints", str(STEPS), "export")
    assert export in eval_log and os.path.isdir(export) and os.listdir(export)
    # the eval job started only after the chain job had ended
    assert slurm.job_state(evaluation["job_id"])["StartTime"] >= slurm.job_state(chain["job_id"])["EndTime"]
    text = "\n".join(status_lines(run))
    assert "COMPLETED" in text and f"step {STEPS}" in text and "eval" in text


def test_signalled_job_saves_requeues_resumes_and_matches_the_uninterrupted_run(slurm_cluster, two_runs):
    slurm, run, victim = slurm_cluster, two_runs["preempted"], two_runs["victim"]
    state = slurm.job_state(victim)
    log = slurm.read_log(os.path.join(run, "slurm", "logs", f"{victim}.out"))
    assert state["JobState"] == "COMPLETED", log[-3000:]
    assert int(state["Restarts"]) >= 1, log[-3000:]
    assert "got SIGUSR1" in log, log[-3000:]
    saved = int(log.split("[preempted] step ")[1].split(":")[0])  # the trainer's own event line
    assert 20 <= saved < STEPS, "the signal must land mid-training"
    assert f"requeueing to resume from step {saved}" in log
    assert f"job {victim} restart 1] training from step {saved}" in log  # resumed, not restarted
    logged = [x["step"] for x in slurm.metrics(run) if "loss" in x]
    assert logged.count(saved + 1) == 1 and logged[-1] == STEPS  # each step trained once
    assert final(slurm, run) == final(slurm, two_runs["reference"])


def test_sweep_array_and_a_dependent_job_per_element(slurm_cluster, tiny, tmp_path):
    slurm = slurm_cluster
    sweep = str(tmp_path / "sweep")
    code = cli.launch_main(["sweep", "--sweep-dir", sweep, "--parallel", "2", "--grid", "optim.lr=1e-3,3e-3",
                            *tiny, "train.steps=8", "launch.slurm.time=00:10:00", "launch.slurm.doctor=false",
                            "launch.slurm.eval_command=recurlm-convert export $RUN_DIR"])
    assert code == 0
    jobs = slurm.jobs_of(sweep)
    slurm.wait_until_done([j["job_id"] for j in jobs], JOB_TIMEOUT)
    train, evaluation = jobs[0], jobs[1]
    assert evaluation["dependency"] == f"aftercorr:{train['job_id']}"
    lrs = []
    for i in range(2):
        element = os.path.join(sweep, str(i))
        element_jobs = {j["kind"]: j["job_id"] for j in slurm.jobs_of(element)}
        assert element_jobs == {"train": f"{train['job_id']}_{i}", "eval": f"{evaluation['job_id']}_{i}"}
        log = slurm.read_log(os.path.join(element, "slurm", "logs", f"{train['job_id']}_{i}.out"))
        assert slurm.job_state(element_jobs["train"])["JobState"] == "COMPLETED", log[-3000:]
        assert slurm.job_state(element_jobs["eval"])["JobState"] == "COMPLETED"
        assert os.path.isfile(os.path.join(element, "checkpoints", "8", "trainer_state.json"))
        assert os.listdir(os.path.join(element, "checkpoints", "8", "export"))
        with open(os.path.join(element, "config.yaml")) as f:
            lrs.append(next(line for line in f if line.strip().startswith("lr:")).split()[-1])
        assert f"{train['job_id']}_{i}" in "\n".join(status_lines(element))
    assert sorted(lrs) == ["0.001", "0.003"]


def test_a_wrong_partition_shows_slurms_error(slurm_cluster, tiny, tmp_path, capsys):
    code = cli.launch_main(["submit", *tiny, f"run_dir={tmp_path}/r", "launch.slurm.partition=no_such_partition"])
    assert code == 1
    err = capsys.readouterr().err
    assert "sbatch rejected" in err and "invalid partition" in err.lower()


def test_an_impossible_resource_request_shows_slurms_error(slurm_cluster, tiny, tmp_path, capsys):
    code = cli.launch_main(["submit", *tiny, f"run_dir={tmp_path}/r", "launch.slurm.mem=100G"])  # nodes have 4000M
    assert code == 1
    err = capsys.readouterr().err
    assert "sbatch rejected" in err and "Requested node configuration is not available" in err
