"""The sbatch scripts of recurlm jobs, rendered from ``launch/templates/``.

The bash lives in the templates (``train.sbatch``, ``eval.sbatch`` and the ``doctor_check.sh``
fragment); this module computes what differs between jobs: the ``#SBATCH`` options, the
environment, the run settings of each (array) element, the rendezvous port and the launcher
commands. ``recurlm.launch.slurm`` turns a job config into these scripts and submits them.

Templates hold ``{{name}}`` placeholders (bash itself never writes ``{{``). A placeholder alone on
its line takes a list of lines (none: the line goes); inside a line it takes a string. Values are
inserted as they are, never rescanned for placeholders.
"""
from __future__ import annotations

import os
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Mapping, Optional, Sequence, Union

from recurlm.launch.config import LaunchConfig
from recurlm.train.signals import EXIT_REQUEUE

SLURM_DIR = "slurm"
SECRETS_FILE = "secrets.env"
"""Beside the scripts, mode 0600: the secret-looking ``launch.slurm.env`` values the scripts source."""
_SECRET_NAME = re.compile(r"(^|_)(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)$", re.IGNORECASE)
TRAIN_SCRIPT = "train.sbatch"
EVAL_SCRIPT = "eval.sbatch"

# Overrides the generated command sets itself; the user's versions are dropped.
_OWNED_KEYS = ("launch", "run_dir", "resume")
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


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


def template_text(name: str) -> str:
    """The text of ``launch/templates/<name>`` (package data of the wheel)."""
    return (resources.files("recurlm.launch") / "templates" / name).read_text()


def render_template(name: str, values: Mapping[str, Union[str, Sequence[str]]]) -> str:
    """``launch/templates/<name>`` with every ``{{key}}`` replaced by ``values[key]`` (module docstring)."""
    text = template_text(name)
    used = set(_PLACEHOLDER.findall(text))
    if used != set(values):
        raise KeyError(f"template {name}: placeholders without a value {sorted(used - set(values))}, "
                       f"values without a placeholder {sorted(set(values) - used)}")
    lines: list[str] = []
    for line in text.split("\n"):
        alone = _PLACEHOLDER.fullmatch(line)
        if alone and not isinstance(values[alone[1]], str):
            lines += values[alone[1]]
        else:
            lines.append(_PLACEHOLDER.sub(lambda m: str(values[m[1]]), line))
    return "\n".join(lines)


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


def secrets(launch: LaunchConfig) -> dict[str, str]:
    """The ``launch.slurm.env`` entries whose names look like secrets."""
    return {key: str(value) for key, value in launch.slurm.env.items() if _SECRET_NAME.search(key)}


def _environment(launch: LaunchConfig, script_dir: str) -> list[str]:
    s = launch.slurm
    hidden = secrets(launch)
    env = {key: value for key, value in s.env.items() if key not in hidden}
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
    if hidden:
        lines += [f"# {', '.join(sorted(hidden))}: from a file only its owner reads, never from this script",
                  f"set -a; . {shlex.quote(os.path.join(script_dir, SECRETS_FILE))}; set +a"]
    return lines


def _port_lines(launch: LaunchConfig) -> list[str]:
    if launch.master_port:
        return [f"MASTER_PORT={launch.master_port}  # launch.master_port"]
    return ["# a port per job and restart (a restarted job never meets its previous rendezvous)",
            f"MASTER_PORT=$(( {launch.slurm.port_base} + (SLURM_JOB_ID % 1000) * 20 "
            f"+ (${{SLURM_RESTART_COUNT:-0}} % 10) * 2 ))"]


def python_executable(launch: LaunchConfig) -> str:
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


def _launcher_values(launch: LaunchConfig) -> dict[str, Union[str, list[str]]]:
    """The template values of ``run_doctor`` and ``run_training``: one launcher per node under srun."""
    python = shlex.quote(python_executable(launch))
    k = launch.nproc_per_node
    torchrun = (f'{python} -m torch.distributed.run --nnodes="$NNODES" --nproc-per-node={k} '
                f'--rdzv-backend=c10d --rdzv-id="$SLURM_JOB_ID" --max-restarts=0')
    values: dict[str, Union[str, list[str]]] = {
        # a failing node ends the step at once (its peers would otherwise wait for a collective timeout)
        "srun": 'srun --nodes="$NNODES" --ntasks="$NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1',
        # a node that stopped on a signal exits 0 (recurlm.launch.node) so its peers can finish saving;
        # run_training execs: started as ``run_training &``, $! is srun itself, which forwards the
        # trap's USR1 to the nodes
        "node_launcher": f"{python} -u -m recurlm.launch.node --",
        "torchrun": torchrun,
    }
    if launch.launcher == "torchrun":
        return {**values, "hostfile": [], "module_flag": "-m",
                "training_launcher": f'{torchrun} --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT"'}
    # deepspeed (LaunchConfig admits no other launcher): its launcher needs a hostfile for several
    # nodes; --no_ssh starts this node's ranks only
    hostfile = ['HOSTFILE="$RUN_DIR/slurm/hostfile-$SLURM_JOB_ID"',
                f'scontrol show hostnames "$SLURM_JOB_NODELIST" | sed "s/$/ slots={k}/" > "$HOSTFILE"']
    runner = (f'{python} -m deepspeed.launcher.runner --hostfile="$HOSTFILE" --no_ssh --node_rank=%SLURM_NODEID% '
              f'--master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" --no_local_rank')
    return {**values, "hostfile": hostfile, "module_flag": "--module", "training_launcher": runner}


def is_array(elements: list[Element], array_parallelism: Optional[int]) -> bool:
    return len(elements) > 1 or array_parallelism is not None


def train_script(launch: LaunchConfig, elements: list[Element], script_dir: str, name: str,
                 array_parallelism: Optional[int] = None) -> Rendered:
    """The sbatch script of one run (one element) or of a sweep (a job array over ``elements``)."""
    s = launch.slurm
    array = is_array(elements, array_parallelism)
    if array:
        limit = s.array_parallelism if array_parallelism is None else array_parallelism
        spec = f"0-{len(elements) - 1}" + (f"%{limit}" if limit else "")
        output = os.path.join(os.path.dirname(elements[0].run_dir), "%a", SLURM_DIR, "logs", "%A_%a.out")
    else:
        spec = None
        output = os.path.join(elements[0].run_dir, SLURM_DIR, "logs", "%j.out")
    text = render_template(TRAIN_SCRIPT, {
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "script_path": os.path.join(script_dir, TRAIN_SCRIPT),
        "sbatch_options": _sbatch_header(launch, name, output, s.nodes, s.time, train=True, array=spec),
        "environment": _environment(launch, script_dir),
        "run_settings": _element_block(elements, array),
        "requeue_on_signal": "1" if s.requeue else "0",
        "master_port": _port_lines(launch),
        **_launcher_values(launch),
        "exit_requeue": str(EXIT_REQUEUE),
        "doctor_check": template_text("doctor_check.sh").splitlines() if s.doctor else [],
    })
    return Rendered(text, os.path.join(script_dir, TRAIN_SCRIPT), elements, secrets(launch))


def eval_script(launch: LaunchConfig, elements: list[Element], script_dir: str, name: str) -> Optional[Rendered]:
    """The evaluation job (array for sweeps) run after training, or None without ``eval_command``."""
    s = launch.slurm
    if not s.eval_command:
        return None
    array = len(elements) > 1
    if array:
        output = os.path.join(os.path.dirname(elements[0].run_dir), "%a", SLURM_DIR, "logs", "eval-%A_%a.out")
    else:
        output = os.path.join(elements[0].run_dir, SLURM_DIR, "logs", "eval-%j.out")
    text = render_template(EVAL_SCRIPT, {
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "sbatch_options": _sbatch_header(launch, name, output, 1, s.eval_time, train=False,
                                         array=f"0-{len(elements) - 1}" if array else None),
        "environment": _environment(launch, script_dir),
        "run_settings": _element_block(elements, array),
        "python_dir": shlex.quote(os.path.dirname(python_executable(launch))),
        "eval_command": s.eval_command.replace("{run_dir}", '"$RUN_DIR"'),
    })
    return Rendered(text, os.path.join(script_dir, EVAL_SCRIPT), elements, secrets(launch))
