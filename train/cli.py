"""``recurlm-train``: compose the Hydra config from command-line overrides and train.

    recurlm-train                                   # the embedded default run (HGRN2 on the stdlib corpus)
    recurlm-train model=griffin model.size=tiny train.steps=100 deepspeed=zero2
    recurlm-train --cfg job [overrides]             # print the composed config and exit
    recurlm-train launch=local launch.nproc_per_node=2 ...   # start the workers here
    recurlm-train launch=slurm ...                  # render and submit an sbatch script
    torchrun --nproc-per-node 2 -m recurlm.train ...         # or start the workers yourself
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Sequence

from recurlm.configs import ConfigError, compose, to_yaml


def _usage() -> str:
    return __doc__ + "\nGroups: model, data, optim, schedule, deepspeed, logger, launch, recipe, eval.\n"


def local_launch_command(overrides: Sequence[str], launcher: str, nproc: int, port: int) -> list[str]:
    """The command that starts ``nproc`` workers on this machine running ``recurlm.train``."""
    worker_args = [o for o in overrides if not o.startswith("launch")] + ["launch=none"]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
                f"--master-port={port}", "-m", "recurlm.train", *worker_args]
    if launcher == "deepspeed":
        return ["deepspeed", f"--num_gpus={nproc}", f"--master_port={port}", "--module", "recurlm.train",
                *worker_args]
    raise ConfigError(f"launch.launcher must be torchrun or deepspeed, got {launcher!r}")


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


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    # the deepspeed launcher passes --local_rank=N; the rank also arrives in $LOCAL_RANK
    args = [a for a in args if not a.startswith(("--local_rank", "--local-rank"))]
    if any(a in ("-h", "--help") for a in args):
        print(_usage())
        return 0
    print_cfg = False
    if "--cfg" in args:
        i = args.index("--cfg")
        print_cfg = True
        del args[i:i + 2]
    try:
        job = compose(args)
    except ConfigError as err:
        print(f"recurlm-train: configuration error:\n{err}", file=sys.stderr)
        return 2
    if print_cfg:
        print(to_yaml(job))
        return 0

    mode = job.launch.mode
    if mode == "local":
        from recurlm.train.distributed import free_port
        from recurlm.train.run_dir import default_run_dir

        if not job.run_dir:  # every worker must agree on one run directory
            args.append(f"run_dir={default_run_dir(job.model.family, job.model.size)}")
        cmd = local_launch_command(args, job.launch.launcher, job.launch.nproc_per_node,
                                   job.launch.master_port or free_port())
        print("launching:", " ".join(cmd), flush=True)
        return run_workers(cmd)
    if mode == "slurm":
        from recurlm.launch.slurm import submit_from_train

        return submit_from_train(job, args)
    if mode != "none":
        print(f"recurlm-train: launch.mode must be none, local or slurm, got {mode!r}", file=sys.stderr)
        return 2

    from recurlm.train.signals import EXIT_REQUEUE, Preempted
    from recurlm.train.trainer import TrainingAborted, train

    try:
        result = train(job)
    except TrainingAborted as err:
        print(f"recurlm-train: {err}", file=sys.stderr)
        return 3
    except Preempted as stop:  # during start-up: nothing trained in this process, so nothing to save
        print(f"recurlm-train: stopped by {stop.signal_name} while {stop.phase}; no checkpoint saved (nothing "
              f"was trained in this process); exiting with {EXIT_REQUEUE} for requeue", file=sys.stderr, flush=True)
        return EXIT_REQUEUE
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
