"""``launch.mode=local``: start the workers of a job on this machine and wait for them.

The root entry point (``recurlm-train launch=local ...``) composes the job and calls
:func:`start_local`; the workers run ``python -m recurlm.train`` with the user's overrides and
``launch=none`` under torchrun or the deepspeed launcher.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Sequence

from recurlm.train.config import JobConfig
from recurlm.train.distributed import free_port
from recurlm.train.run_dir import default_run_dir


def local_launch_command(overrides: Sequence[str], launcher: str, nproc: int, port: int) -> list[str]:
    """The command that starts ``nproc`` workers on this machine running ``recurlm.train``."""
    worker_args = [o for o in overrides if not o.startswith("launch")] + ["launch=none"]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
                f"--master-port={port}", "-m", "recurlm.train", *worker_args]
    # deepspeed (LaunchConfig admits no other launcher)
    return ["deepspeed", f"--num_gpus={nproc}", f"--master_port={port}", "--module", "recurlm.train", *worker_args]


def worker_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of worker processes started by ``python -m`` (torchrun, deepspeed).

    ``PYTHONSAFEPATH=1`` keeps the working directory off ``sys.path``: started from a checkout,
    the repository root's folders (``kernels``, ``data``, ...) would otherwise shadow PyPI
    packages of the same name (transformers imports the ``kernels`` package)."""
    env = dict(os.environ if base is None else base)
    env["PYTHONSAFEPATH"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_workers(cmd: Sequence[str]) -> int:
    """Run the local launcher and wait for it, forwarding SIGTERM/SIGUSR1 to it as SIGTERM (torchrun
    passes SIGTERM on to its workers, which save and exit; SIGUSR1 would kill torchrun itself)."""
    proc = subprocess.Popen(list(cmd), env=worker_environment())

    def forward(signum, frame) -> None:
        proc.send_signal(signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, forward)
    return proc.wait()


def start_local(job: JobConfig, overrides: Sequence[str]) -> int:
    """Start ``job.launch.nproc_per_node`` workers of the composed ``job`` (its command-line
    ``overrides`` are passed on) and return the launcher's exit code."""
    overrides = list(overrides)
    if not job.run_dir:  # every worker must agree on one run directory
        overrides.append(f"run_dir={default_run_dir(job.model.family, job.model.size)}")
    cmd = local_launch_command(overrides, job.launch.launcher, job.launch.nproc_per_node,
                               job.launch.master_port or free_port())
    print("launching:", " ".join(cmd), flush=True)
    return run_workers(cmd)
