"""Render sbatch scripts for recurlm runs and submit them.

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

from recurlm.launch.config import LaunchConfig
from recurlm.train.config import JobConfig

SLURM_DIR = "slurm"
SECRETS_FILE = "secrets.env"
"""Beside the scripts, mode 0600: the secret-looking ``launch.slurm.env`` values the scripts source."""
_SECRET_NAME = re.compile(r"(^|_)(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)$", re.IGNORECASE)
JOBS_FILE = "jobs.jsonl"
TRAIN_SCRIPT = "train.sbatch"
EVAL_SCRIPT = "eval.sbatch"
EXIT_REQUEUE = 75
"""The trainer's exit code after a signal-triggered save (recurlm.train.signals.EXIT_REQUEUE)."""

# Overrides the generated command sets itself; the user's versions are dropped.
_OWNED_KEYS = ("launch", "run_dir", "resume")


class SubmitError(RuntimeError):
    """sbatch refused a job; the message is Slurm's own error."""


@dataclass
class Element:
    """One training run of a job: its run directory and the overrides of its workers."""

    run_dir: str
    """Absolute run directory."""
    overrides: list[str]
    """Hydra overrides of ``recurlm.train`` (without launch / run_dir / resume)."""
    steps: int
    """``train.steps`` of the run: a restart finding a checkpoint at this step does nothing."""
    family: str = "hgrn2"
    """``model.family`` of the run: the doctor checks this model's kernels."""


@dataclass
class Rendered:
    """A rendered job: the script text and where it belongs."""

    text: str
    path: str
    elements: list[Element] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=dict)
    """Environment values the script sources from ``secrets.env`` instead of holding them."""


def worker_overrides(overrides: Sequence[str]) -> list[str]:
    """The user's overrides minus those the generated command sets (launch*, run_dir, resume)."""
    kept = []
    for item in overrides:
        key = item.lstrip("+~").split("=", 1)[0]
        if key.split(".", 1)[0] in _OWNED_KEYS:
            continue
        kept.append(item)
    return kept


def default_job_run_dir(job: JobConfig) -> str:
    from recurlm.train.run_dir import default_run_dir

    return os.path.abspath(job.run_dir or default_run_dir(job.model.family, job.model.size))


def _q(items: Sequence[str]) -> str:
    return " ".join(shlex.quote(str(i)) for i in items)


def _sbatch_header(launch: LaunchConfig, name: str, output: str, nodes: int, time_limit: str, train: bool,
                   array: Optional[str] = None) -> list[str]:
    """``#SBATCH`` lines: one task per node (the node's launcher starts its ranks)."""
    s = launch.slurm
    lines = [f"--job-name={name}", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1",
             f"--time={time_limit}", f"--output={output}",
             "--open-mode=append", f"--chdir={os.getcwd()}"]
    if s.cpus_per_task:
        lines.append(f"--cpus-per-task={s.cpus_per_task}")
    if s.gpus_per_node and train:
        lines.append(f"--gpus-per-node={s.gpus_per_node}")
    for flag, value in (("mem", s.mem), ("partition", s.partition), ("account", s.account), ("qos", s.qos),
                        ("constraint", s.constraint)):
        if value:
            lines.append(f"--{flag}={value}")
    if s.exclusive and train:
        lines.append("--exclusive")
    if train:
        lines.append("--requeue" if s.requeue else "--no-requeue")
        if s.signal_seconds > 0:
            lines.append(f"--signal=B:USR1@{s.signal_seconds}")
    if array:
        lines.append(f"--array={array}")
    lines += list(s.extra_sbatch)
    return [f"#SBATCH {line}" for line in lines]


def _secrets(launch: LaunchConfig) -> dict[str, str]:
    """The ``launch.slurm.env`` entries whose names look like secrets."""
    return {key: str(value) for key, value in launch.slurm.env.items() if _SECRET_NAME.search(key)}


def _environment(launch: LaunchConfig, script_dir: str) -> list[str]:
    s = launch.slurm
    secrets = _secrets(launch)
    env = {key: value for key, value in s.env.items() if key not in secrets}
    if s.socket_ifname:
        env.setdefault("NCCL_SOCKET_IFNAME", s.socket_ifname)
        env.setdefault("GLOO_SOCKET_IFNAME", s.socket_ifname)
    if s.nccl_debug:
        env.setdefault("NCCL_DEBUG", s.nccl_debug)
    # python -m from the job's working directory (often the checkout) must not import the repository
    # root's folders in place of PyPI packages of the same name (kernels, data, ...)
    lines = ["export PYTHONSAFEPATH=1"]
    lines += ["# environment set-up (launch.slurm.setup, launch.slurm.env)"] + list(s.setup)
    lines += [f"export {key}={shlex.quote(str(value))}" for key, value in env.items()]
    if secrets:
        lines += [f"# {', '.join(sorted(secrets))}: from a file only its owner reads, never from this script",
                  f"set -a; . {shlex.quote(os.path.join(script_dir, SECRETS_FILE))}; set +a"]
    return lines


def _port_lines(launch: LaunchConfig) -> list[str]:
    if launch.master_port:
        return [f"MASTER_PORT={launch.master_port}  # launch.master_port"]
    return ["# a port per job and restart (a restarted job never meets its previous rendezvous)",
            f"MASTER_PORT=$(( {launch.slurm.port_base} + (SLURM_JOB_ID % 1000) * 20 "
            f"+ (${{SLURM_RESTART_COUNT:-0}} % 10) * 2 ))"]


def _python(launch: LaunchConfig) -> str:
    return launch.slurm.python or sys.executable


def _element_block(elements: list[Element], array: bool) -> list[str]:
    """Shell lines that set RUN_DIR, TRAIN_STEPS and OVERRIDES (per array element for sweeps)."""
    def assign(e: Element, indent: str) -> list[str]:
        return [f"{indent}RUN_DIR={shlex.quote(e.run_dir)}", f"{indent}TRAIN_STEPS={e.steps}",
                f"{indent}MODEL_FAMILY={shlex.quote(e.family)}", f"{indent}OVERRIDES=({_q(e.overrides)})"]

    if not array:
        return assign(elements[0], "")
    lines = ['case "$SLURM_ARRAY_TASK_ID" in']
    for i, e in enumerate(elements):
        lines += [f"    {i})"] + assign(e, "        ") + ["        ;;"]
    lines += ['    *) echo "no sweep element $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;', "esac"]
    return lines


def _launcher_fn(launch: LaunchConfig, python: str) -> list[str]:
    """Bash functions ``run_doctor`` and ``run_training``: one launcher per node under srun."""
    k = launch.nproc_per_node
    # a failing node ends the step at once (its peers would otherwise wait for a collective timeout);
    # a node that stopped on a signal exits 0 (recurlm.launch.node) so its peers can finish saving
    srun = 'srun --nodes="$NNODES" --ntasks="$NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1'
    node = f"{shlex.quote(python)} -u -m recurlm.launch.node --"
    torchrun = (f'{shlex.quote(python)} -m torch.distributed.run --nnodes="$NNODES" --nproc-per-node={k} '
                f'--rdzv-backend=c10d --rdzv-id="$SLURM_JOB_ID" --max-restarts=0')
    lines = [
        "run_doctor() {  # kernels of this model vs their references + an all_reduce over every rank",
        f'    {srun} {torchrun} --rdzv-endpoint="$MASTER_ADDR:$((MASTER_PORT + 1))" \\',
        f'        -m recurlm.launch.doctor --family "$MODEL_FAMILY" --timeout 120',
        "}",
    ]
    if launch.launcher == "torchrun":
        train = (f'{srun} {node} {torchrun} --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" \\\n'
                 f'        -m recurlm.train "${{OVERRIDES[@]}}" launch=none run_dir="$RUN_DIR" resume=auto')
    elif launch.launcher == "deepspeed":
        # deepspeed's launcher needs a hostfile for several nodes; --no_ssh starts this node's ranks only
        lines += ['HOSTFILE="$RUN_DIR/slurm/hostfile-$SLURM_JOB_ID"',
                  f'scontrol show hostnames "$SLURM_JOB_NODELIST" | sed "s/$/ slots={k}/" > "$HOSTFILE"']
        train = (f'{srun} {node} {shlex.quote(python)} -m deepspeed.launcher.runner --hostfile="$HOSTFILE" '
                 f'--no_ssh --node_rank=%SLURM_NODEID% '
                 f'--master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" --no_local_rank \\\n'
                 f'        --module recurlm.train "${{OVERRIDES[@]}}" launch=none run_dir="$RUN_DIR" resume=auto')
    else:
        raise ValueError(f"launch.launcher must be torchrun or deepspeed, got {launch.launcher!r}")
    # exec: started as ``run_training &``, $! is srun itself, which forwards the trap's USR1 to the nodes
    lines += ["run_training() {", f"    exec {train}", "}"]
    return lines


def render_train(job: JobConfig, elements: list[Element], script_dir: str, name: str,
                 array_parallelism: Optional[int] = None) -> Rendered:
    """The sbatch script of one run (one element) or of a sweep (a job array over ``elements``)."""
    launch = job.launch
    s = launch.slurm
    array = len(elements) > 1 or array_parallelism is not None
    python = _python(launch)
    if array:
        limit = s.array_parallelism if array_parallelism is None else array_parallelism
        spec = f"0-{len(elements) - 1}" + (f"%{limit}" if limit else "")
        output = os.path.join(os.path.dirname(elements[0].run_dir), "%a", SLURM_DIR, "logs", "%A_%a.out")
    else:
        spec = None
        output = os.path.join(elements[0].run_dir, SLURM_DIR, "logs", "%j.out")
    header = _sbatch_header(launch, name, output, s.nodes, s.time, train=True, array=spec)
    requeue = "1" if s.requeue else "0"
    body = [
        "#!/bin/bash",
        f"# Generated by recurlm-launch on {time.strftime('%Y-%m-%d %H:%M:%S')}; resubmit by hand with",
        f"#   sbatch {os.path.join(script_dir, TRAIN_SCRIPT)}",
        *header,
        "",
        "set -uo pipefail",
        *_environment(launch, script_dir),
        "",
        *_element_block(elements, array),
        f"REQUEUE_ON_SIGNAL={requeue}",
        "NNODES=$SLURM_JOB_NUM_NODES",
        'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)',
        *_port_lines(launch),
        f"export MASTER_ADDR MASTER_PORT OMP_NUM_THREADS=${{OMP_NUM_THREADS:-1}}",
        "",
        *_launcher_fn(launch, python),
        "",
        "latest_step() { cat \"$RUN_DIR/checkpoints/latest\" 2>/dev/null || echo 0; }",
        "requeue_if_signalled() {  # after USR1: requeue; the next start resumes from checkpoints/latest",
        '    [ "$STOP" = USR1 ] && [ "$REQUEUE_ON_SIGNAL" = 1 ] || return 0',
        '    log "requeueing to resume from step $(latest_step)"',
        '    scontrol requeue "$SLURM_JOB_ID" || log "scontrol requeue failed (the job may already be requeued by Slurm)"',
        "    exit $EXIT_REQUEUE",
        "}",
        'log() { echo "[recurlm $(date +%H:%M:%S) job $SLURM_JOB_ID restart ${SLURM_RESTART_COUNT:-0}] $*"; }',
        "",
        "# USR1 (time limit, preemption, scancel --signal=USR1 --batch): the trainer saves and exits 75,",
        "# then this job requeues itself and its next start resumes from checkpoints/latest.",
        'STOP=""',
        "STEP_PID=\"\"",
        'on_signal() {',
        '    STOP=$1',
        '    log "got SIG$1: forwarding to the training processes (they save and exit $EXIT_REQUEUE)"',
        '    [ -n "$STEP_PID" ] && kill -USR1 "$STEP_PID" 2>/dev/null',
        '}',
        f"EXIT_REQUEUE={EXIT_REQUEUE}",
        "trap 'on_signal USR1' USR1",
        "trap 'on_signal TERM' TERM",
        "",
        'mkdir -p "$RUN_DIR/slurm/logs"',
        'log "run $RUN_DIR on $SLURM_JOB_NODELIST (rendezvous $MASTER_ADDR:$MASTER_PORT)"',
        'if [ "$(latest_step)" -ge "$TRAIN_STEPS" ]; then',
        '    log "already trained to step $(latest_step) of $TRAIN_STEPS: nothing to do"',
        "    exit 0",
        "fi",
    ]
    if s.doctor:
        body += [
            'if ! run_doctor; then',
            '    log "recurlm-doctor failed on this allocation (report above): not training"',
            "    exit 3",
            "fi",
            "requeue_if_signalled  # a signal during the doctor: do not start training now",
        ]
    body += [
        'log "training from step $(latest_step)"',
        "run_training &",
        "STEP_PID=$!",
        '[ -n "$STOP" ] && kill -USR1 "$STEP_PID" 2>/dev/null  # a signal that came before the launch',
        "# wait returns early when a trapped signal arrives: keep waiting for the training step",
        'while :; do wait "$STEP_PID"; kill -0 "$STEP_PID" 2>/dev/null || break; done',
        'wait "$STEP_PID"; RC=$?',
        'log "training step exited with $RC at checkpoint step $(latest_step) of $TRAIN_STEPS"',
        'if [ "$(latest_step)" -ge "$TRAIN_STEPS" ]; then',
        '    log "finished"',
        "    exit 0",
        "fi",
        "requeue_if_signalled",
        '[ "$RC" = 0 ] && RC=1  # stopped before the last step without a signal',
        "exit $RC",
        "",
    ]
    return Rendered("\n".join(body), os.path.join(script_dir, TRAIN_SCRIPT), elements, _secrets(launch))


def render_eval(job: JobConfig, elements: list[Element], script_dir: str, name: str) -> Optional[Rendered]:
    """The evaluation job (array for sweeps) run after training, or None without ``eval_command``."""
    launch = job.launch
    s = launch.slurm
    if not s.eval_command:
        return None
    array = len(elements) > 1
    if array:
        output = os.path.join(os.path.dirname(elements[0].run_dir), "%a", SLURM_DIR, "logs", "eval-%A_%a.out")
    else:
        output = os.path.join(elements[0].run_dir, SLURM_DIR, "logs", "eval-%j.out")
    header = _sbatch_header(launch, name, output, 1, s.eval_time, train=False,
                            array=f"0-{len(elements) - 1}" if array else None)
    command = s.eval_command.replace("{run_dir}", '"$RUN_DIR"')
    body = [
        "#!/bin/bash",
        f"# Generated by recurlm-launch on {time.strftime('%Y-%m-%d %H:%M:%S')}: evaluation after training.",
        *header,
        "",
        "set -euo pipefail",
        *_environment(launch, script_dir),
        *_element_block(elements, array),
        f'export PATH={shlex.quote(os.path.dirname(_python(launch)))}:"$PATH"',
        'echo "[recurlm eval job $SLURM_JOB_ID] $RUN_DIR"',
        command,
        "",
    ]
    return Rendered("\n".join(body), os.path.join(script_dir, EVAL_SCRIPT), elements, _secrets(launch))


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
    is_array = len(elements) > 1 or array_parallelism is not None
    train_id = sbatch(train.path)
    _record_everywhere(root, elements, train_id, "train", train.path, None, is_array)
    result = Submitted(train_id)
    previous = train_id
    for _ in range(launch.slurm.chain):  # continuation jobs: each resumes from the newest checkpoint
        dependency = f"afterany:{previous}"
        previous = sbatch(train.path, dependency)
        _record_everywhere(root, elements, previous, "chain", train.path, dependency, is_array)
        result.chain.append(previous)
    if evaluation:
        _write(evaluation)
        dependency = f"aftercorr:{previous}" if is_array and len(elements) > 1 else f"afterok:{previous}"
        result.eval = sbatch(evaluation.path, dependency)
        _record_everywhere(root, elements, result.eval, "eval", evaluation.path, dependency,
                           is_array and len(elements) > 1)
    return result


def _record_everywhere(root: str, elements: list[Element], job_id: str, kind: str, script: str,
                       dependency: Optional[str], is_array: bool) -> None:
    """Record a job in the submission root and, for arrays, each element's ``<id>_<i>`` in its run dir."""
    record_job(root, job_id, kind, script, dependency)
    if is_array:
        for i, e in enumerate(elements):
            if e.run_dir != root:
                record_job(e.run_dir, f"{job_id}_{i}", kind, script, dependency)


def single_run(job: JobConfig, overrides: Sequence[str]) -> tuple[Element, str]:
    """The element of a one-run job and its job name."""
    run_dir = default_job_run_dir(job)
    launch = job.launch
    name = launch.slurm.job_name or f"recurlm-{os.path.basename(run_dir)}"
    return Element(run_dir, worker_overrides(overrides), job.train.steps, job.model.family), name


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
