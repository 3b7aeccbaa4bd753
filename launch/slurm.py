"""Render sbatch scripts for recurlm runs and submit them (the scripts' text: ``recurlm.launch.sbatch``
and its templates ``launch/templates/``).

One run (``recurlm-train launch=slurm ...`` / ``recurlm-launch submit ...``) becomes
``<run_dir>/slurm/train.sbatch``; a sweep (``recurlm-launch sweep ...``) becomes one job array
``<sweep_dir>/slurm/train.sbatch`` whose element ``i`` trains in ``<sweep_dir>/<i>/``. Each script:

1. runs the configured set-up lines and exports the configured environment; values of
   ``launch.slurm.env`` keys that look like secrets (``*_KEY``, ``*_TOKEN``, ``*_SECRET``,
   ``*_PASSWORD``, e.g. ``WANDB_API_KEY``) are never written into the script: they go to
   ``slurm/secrets.env`` (mode 0600), which the script sources;
2. takes the rendezvous host from ``scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1`` and
   a port derived from the job id and restart count;
3. runs ``recurlm-doctor`` on every rank (kernels vs references, one all_reduce), then training:
   one launcher per node, ``srun --nodes=N --ntasks=N --ntasks-per-node=1 python -m
   recurlm.launch.node -- torchrun ... -m recurlm.train <overrides> launch=none run_dir=<abs> resume=auto``;
4. traps USR1 (``--signal=B:USR1@<s>`` before the time limit, or ``scancel --signal=USR1 --batch``,
   or a preemption), forwards it to the trainer (which saves and exits 75), then
   ``scontrol requeue $SLURM_JOB_ID``: the restarted job resumes from ``checkpoints/latest``.

Every submitted job is recorded in ``<run_dir>/slurm/jobs.jsonl`` (read by ``recurlm-launch status``);
Slurm's logs go to ``<run_dir>/slurm/logs/<jobid>.out`` (``<array id>_<i>.out`` for sweeps).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

from recurlm.launch.sbatch import (SECRETS_FILE, SLURM_DIR, TRAIN_SCRIPT, Element, Rendered, eval_script, is_array,
                                    train_script, worker_overrides)
from recurlm.train.config import JobConfig
from recurlm.train.run_dir import default_run_dir

JOBS_FILE = "jobs.jsonl"


class SubmitError(RuntimeError):
    """sbatch refused a job; the message is Slurm's own error."""


def default_job_run_dir(job: JobConfig) -> str:
    return os.path.abspath(job.run_dir or default_run_dir(job.model.family, job.model.size))


def render_train(job: JobConfig, elements: list[Element], script_dir: str, name: str,
                 array_parallelism: Optional[int] = None) -> Rendered:
    """The sbatch script of one run (one element) or of a sweep (a job array over ``elements``)."""
    return train_script(job.launch, elements, script_dir, name, array_parallelism)


def render_eval(job: JobConfig, elements: list[Element], script_dir: str, name: str) -> Optional[Rendered]:
    """The evaluation job (array for sweeps) run after training, or None without ``eval_command``."""
    return eval_script(job.launch, elements, script_dir, name)


# -- submission -----------------------------------------------------------------------------------
def sbatch(script: str, dependency: Optional[str] = None) -> str:
    """Submit ``script``; returns the job id. Raises SubmitError with Slurm's message."""
    if shutil.which("sbatch") is None:
        raise SubmitError("sbatch not found: is this a Slurm login node? (see .ci/slurm-up.sh for a local cluster)")
    cmd = ["sbatch", "--parsable"] + ([f"--dependency={dependency}"] if dependency else []) + [script]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip()
        raise SubmitError(f"sbatch rejected {script}:\n{message}")
    return result.stdout.strip().split(";")[0]


def record_job(run_dir: str, job_id: str, kind: str, script: str, dependency: Optional[str] = None) -> None:
    path = os.path.join(run_dir, SLURM_DIR, JOBS_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps({"job_id": job_id, "kind": kind, "script": script, "dependency": dependency,
                            "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")


def _write(rendered: Rendered) -> None:
    os.makedirs(os.path.dirname(rendered.path), exist_ok=True)
    for e in rendered.elements:
        os.makedirs(os.path.join(e.run_dir, SLURM_DIR, "logs"), exist_ok=True)
    with open(rendered.path, "w") as f:
        f.write(rendered.text)
    os.chmod(rendered.path, 0o755)
    if rendered.secrets:
        path = os.path.join(os.path.dirname(rendered.path), SECRETS_FILE)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
        with os.fdopen(fd, "w") as f:
            f.write("".join(f"{key}={shlex.quote(value)}\n" for key, value in rendered.secrets.items()))


@dataclass
class Submitted:
    """Job ids of one submission: training, continuation chain, evaluation."""

    train: str
    chain: list[str] = field(default_factory=list)
    eval: Optional[str] = None


def submit(job: JobConfig, elements: list[Element], root: str, name: str,
           array_parallelism: Optional[int] = None, dry_run: bool = False) -> Optional[Submitted]:
    """Render and submit the training job (+ chain, + eval job) of ``elements`` whose scripts go to
    ``<root>/slurm/``. ``dry_run`` prints the scripts and submits nothing."""
    launch = job.launch
    script_dir = os.path.join(root, SLURM_DIR)
    train = render_train(job, elements, script_dir, name, array_parallelism)
    evaluation = render_eval(job, elements, script_dir, name + "-eval")
    if dry_run or launch.slurm.dry_run:
        print(f"# ---- {train.path} (dry run: not written, not submitted)")
        print(train.text)
        if evaluation:
            print(f"# ---- {evaluation.path} (after training: --dependency=afterok / aftercorr)")
            print(evaluation.text)
        return None
    _write(train)
    array = is_array(elements, array_parallelism)
    train_id = sbatch(train.path)
    _record_everywhere(root, elements, train_id, "train", train.path, None, array)
    result = Submitted(train_id)
    previous = train_id
    for _ in range(launch.slurm.chain):  # continuation jobs: each resumes from the newest checkpoint
        dependency = f"afterany:{previous}"
        previous = sbatch(train.path, dependency)
        _record_everywhere(root, elements, previous, "chain", train.path, dependency, array)
        result.chain.append(previous)
    if evaluation:
        _write(evaluation)
        dependency = f"aftercorr:{previous}" if array and len(elements) > 1 else f"afterok:{previous}"
        result.eval = sbatch(evaluation.path, dependency)
        _record_everywhere(root, elements, result.eval, "eval", evaluation.path, dependency,
                           array and len(elements) > 1)
    return result


def _record_everywhere(root: str, elements: list[Element], job_id: str, kind: str, script: str,
                       dependency: Optional[str], array: bool) -> None:
    """Record a job in the submission root and, for arrays, each element's ``<id>_<i>`` in its run dir."""
    record_job(root, job_id, kind, script, dependency)
    if array:
        for i, e in enumerate(elements):
            if e.run_dir != root:
                record_job(e.run_dir, f"{job_id}_{i}", kind, script, dependency)


def single_run(job: JobConfig, overrides: Sequence[str]) -> tuple[Element, str]:
    """The element of a one-run job and its job name."""
    run_dir = default_job_run_dir(job)
    launch = job.launch
    name = launch.slurm.job_name or f"recurlm-{os.path.basename(run_dir)}"
    return Element(run_dir, worker_overrides(overrides), int(job.train.steps), str(job.model.family)), name


def submit_from_train(job: JobConfig, overrides: Sequence[str], dry_run: bool = False) -> int:
    """``recurlm-train launch=slurm ...`` (and ``recurlm-launch submit``): render
    ``<run_dir>/slurm/train.sbatch`` and submit it (``dry_run``: print it only).
    Returns the process exit code (0 submitted / printed, 1 Slurm refused)."""
    element, name = single_run(job, overrides)
    try:
        result = submit(job, [element], element.run_dir, name, dry_run=dry_run)
    except SubmitError as err:
        print(f"recurlm-launch: {err}", file=sys.stderr)
        return 1
    if result is not None:
        print_submission(result, element.run_dir, [element])
    return 0


def print_submission(result: Submitted, root: str, elements: list[Element]) -> None:
    print(f"submitted job {result.train}" + (f" (array of {len(elements)})" if len(elements) > 1 else ""))
    if result.chain:
        print(f"continuation chain: {' '.join(result.chain)}")
    if result.eval:
        print(f"evaluation job: {result.eval}")
    print(f"script:  {os.path.join(root, SLURM_DIR, TRAIN_SCRIPT)}")
    print(f"logs:    {os.path.join(root if len(elements) == 1 else os.path.join(root, '<i>'), SLURM_DIR, 'logs')}")
    print(f"status:  recurlm-launch status {root}")


# -- status ----------------------------------------------------------------------------------------
def read_jobs(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, SLURM_DIR, JOBS_FILE)
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _run(cmd: list[str]) -> tuple[int, str]:
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as err:
        return 1, str(err)
    return result.returncode, (result.stdout if result.returncode == 0 else result.stderr).strip()


def job_states(job_ids: Sequence[str]) -> dict[str, dict[str, str]]:
    """State of each job (and array element) Slurm still knows: squeue for queued/running jobs,
    ``scontrol show job`` for recently finished ones. Keys are job ids as Slurm prints them."""
    states: dict[str, dict[str, str]] = {}
    if not job_ids:
        return states
    base_ids = sorted({j.split("_")[0] for j in job_ids})
    for base in base_ids:
        code, out = _run(["scontrol", "show", "job", "-o", base])
        if code != 0:
            continue
        for line in out.splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            jid = fields.get("JobId", "")
            if fields.get("ArrayJobId") and fields.get("ArrayTaskId", "").isdigit():
                jid = f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}"
            elif fields.get("ArrayJobId"):
                jid = f"{fields['ArrayJobId']}_[{fields.get('ArrayTaskId', '')}]"
            states[jid] = {"state": fields.get("JobState", "?"), "reason": fields.get("Reason", ""),
                           "exit": fields.get("ExitCode", ""), "restarts": fields.get("Restarts", "0"),
                           "nodes": fields.get("NodeList", ""), "elapsed": fields.get("RunTime", ""),
                           "name": fields.get("JobName", "")}
    return states


def status_lines(run_dir: str) -> list[str]:
    """What ``recurlm-launch status <run_dir>`` prints: jobs of the run and training progress."""
    run_dir = os.path.abspath(run_dir)
    jobs = read_jobs(run_dir)
    lines = [f"run {run_dir}"]
    if not jobs:
        return lines + [f"  no Slurm jobs recorded ({os.path.join(run_dir, SLURM_DIR, JOBS_FILE)} missing)"]
    known = job_states([j["job_id"] for j in jobs])
    lines.append(f"  {'JOBID':<14}{'KIND':<7}{'STATE':<12}{'RESTARTS':<9}{'ELAPSED':<10}{'EXIT':<6}REASON/NODES")
    for j in jobs:
        jid = j["job_id"]
        matches = {k: v for k, v in known.items() if k == jid or (("_" not in jid) and k.startswith(jid + "_"))}
        if not matches:
            lines.append(f"  {jid:<14}{j['kind']:<7}{'(gone)':<12}  not known to slurmctld any more; "
                         f"see sacct -j {jid}")
            continue
        for k, v in sorted(matches.items()):
            where = v["reason"] if v["state"] == "PENDING" else v["nodes"]
            lines.append(f"  {k:<14}{j['kind']:<7}{v['state']:<12}{v['restarts']:<9}{v['elapsed']:<10}"
                         f"{v['exit']:<6}{where}")
    code, out = _run(["squeue", "-h", "-o", "%i %T %M %R", "-j", ",".join(j["job_id"] for j in jobs)])
    if code == 0 and out:
        lines.append("  squeue:")
        lines += [f"    {line}" for line in out.splitlines()]
    if shutil.which("sacct"):
        code, out = _run(["sacct", "-n", "-X", "-o", "JobID,State,Elapsed,ExitCode", "-j",
                          ",".join(j["job_id"] for j in jobs)])
        if code == 0 and out:
            lines.append("  sacct:")
            lines += [f"    {line}" for line in out.splitlines()]
    latest = os.path.join(run_dir, "checkpoints", "latest")
    if os.path.isfile(latest):
        lines.append(f"  newest checkpoint: step {open(latest).read().strip()}")
    metrics = os.path.join(run_dir, "metrics.jsonl")
    if os.path.isfile(metrics):
        with open(metrics) as f:
            last = [json.loads(x) for x in f if x.strip()]
        steps = [m for m in last if "loss" in m]
        if steps:
            lines.append(f"  last logged step {steps[-1].get('step')}: loss {float(steps[-1]['loss']):.4f}")
    logs = os.path.join(run_dir, SLURM_DIR, "logs")
    if os.path.isdir(logs):
        lines.append(f"  logs: {logs}/ ({', '.join(sorted(os.listdir(logs))) or 'empty'})")
    return lines
