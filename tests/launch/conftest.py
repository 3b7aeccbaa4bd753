"""Launch tests: tiny training jobs (tests/helpers/tiny_job.py) and a real local Slurm cluster.

Tests marked ``slurm`` need the cluster of ``.ci/slurm-up.sh`` (two emulated nodes). They are
skipped, saying why, only when ``sinfo`` is missing or the cluster does not answer.
"""
import json
import os
import shutil
import subprocess
import time
from types import SimpleNamespace

import pytest

from ..helpers.tiny_job import TINY_DATA, TINY_TRAIN

TINY = [*TINY_TRAIN, *TINY_DATA]


@pytest.fixture(scope="session")
def launch_cache(tmp_path_factory):
    """One data cache (tokenizer + shards) shared by every job of the session."""
    return str(tmp_path_factory.mktemp("launch-data-cache"))


@pytest.fixture(scope="session")
def tiny(launch_cache):
    """Overrides of a tiny training job with the shared data cache."""
    return [*TINY, f"data.cache_dir={launch_cache}"]


def cluster_problem() -> str | None:
    """Why the Slurm tests cannot run here, or None."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "Slurm client commands (sinfo, sbatch) are not installed: run .ci/slurm-up.sh"
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo timed out: slurmctld does not answer (run .ci/slurm-up.sh)"
    if out.returncode != 0:
        return f"the Slurm cluster is down ({out.stderr.strip()}): run .ci/slurm-up.sh"
    usable = [line for line in out.stdout.split("\n") if line.split()[-1:] and
              line.split()[-1].rstrip("*~#") in ("idle", "mix", "alloc", "comp")]
    if len({line.split()[0] for line in usable}) < 2:
        return f"need two usable Slurm nodes, sinfo says: {out.stdout.strip()!r}"
    return None


@pytest.fixture(scope="session")
def slurm_cluster():
    """Skips without a usable cluster; otherwise the helpers below, for polling jobs and reading runs."""
    problem = cluster_problem()
    if problem:
        pytest.skip(problem)
    return SimpleNamespace(jobs_of=jobs_of, in_queue=in_queue, wait_until_done=wait_until_done,
                           job_state=job_state, read_log=read_log, metrics=metrics)


def jobs_of(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "slurm", "jobs.jsonl")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def in_queue(job_ids: list[str]) -> list[str]:
    """The jobs among ``job_ids`` (array elements included) that are pending or running."""
    out = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", ",".join(job_ids)], capture_output=True, text=True)
    if out.returncode != 0:  # every id unknown: all finished long ago
        return []
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def wait_until_done(job_ids: list[str], timeout: float, poll: float = 2.0) -> None:
    """Poll squeue until none of ``job_ids`` is pending or running; fail with the queue otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not in_queue(job_ids):
            return
        time.sleep(poll)
    queue = subprocess.run(["squeue"], capture_output=True, text=True).stdout
    pytest.fail(f"jobs {job_ids} still queued after {timeout:.0f} s:\n{queue}")


def job_state(job_id: str) -> dict[str, str]:
    """Fields of ``scontrol show job -o <id>`` (finished jobs stay known for MinJobAge)."""
    import re

    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True)
    return dict(re.findall(r"(\w+)=(\S*)", out.stdout.splitlines()[0]))


def read_log(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def metrics(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
