"""The per-node task of a generated Slurm job: runs the node's launcher (torchrun or deepspeed) and
turns a preemption signal into a clean save.

    srun --nodes=N --ntasks=N --ntasks-per-node=1 python -m recurlm.launch.node -- torchrun ... -m recurlm.train ...

(``%SLURM_NODEID%`` in the command is replaced by this node's index, for ``deepspeed --node_rank``.)

Why a wrapper: the batch script's trap forwards SIGUSR1 through ``srun`` to the step, and Slurm may
deliver it to every process of the step. torchrun and the deepspeed launcher do not handle SIGUSR1
(its default action kills them, and slurmstepd then kills the orphaned workers mid-save). So the
launcher is started with SIGUSR1 ignored (inherited; the trainer installs its own handler), and this
wrapper forwards SIGUSR1/SIGTERM as SIGUSR1 to the training processes below the launcher, to each
once and only when it has its handler installed (a worker still starting gets it as soon as it
has; one already exiting is not killed by it). The trainer
finishes its step, saves, and exits with 75; the wrapper then exits 0 (see ``run``), otherwise
with the launcher's code.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Sequence

import psutil

POLL_SECONDS = 0.5


def _log(message: str) -> None:
    node = os.environ.get("SLURMD_NODENAME", os.uname().nodename)
    print(f"[recurlm.launch.node {node}] {message}", file=sys.stderr, flush=True)


def _ignore_usr1() -> None:
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def catches(pid: int, sig: int = signal.SIGUSR1) -> bool:
    """True when process ``pid`` has a handler installed for ``sig`` (``SigCgt`` in /proc status):
    only then is the signal a request; at start-up (ignored) or at interpreter exit (default
    action) it would be lost or would kill the process."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except OSError:
        pass
    return False


def training_processes(launcher: psutil.Process, marker: str = "recurlm.train") -> list[psutil.Process]:
    """Descendants of ``launcher`` whose command line names ``marker`` (not helpers such as W&B's
    service, which a stray signal could kill)."""
    found = []
    try:
        children = launcher.children(recursive=True)
    except psutil.NoSuchProcess:
        return found
    for proc in children:
        try:
            if any(marker in part for part in proc.cmdline()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def run(command: Sequence[str]) -> int:
    """Run the launcher; after SIGUSR1/SIGTERM, send SIGUSR1 once to each training process as soon
    as it has its handler installed. Returns the launcher's exit code (0 after a stop request)."""
    child = subprocess.Popen(list(command), preexec_fn=_ignore_usr1)
    launcher = psutil.Process(child.pid)
    requested: list[str] = []
    signalled: set[int] = set()

    def on_signal(signum, frame) -> None:
        if not requested:
            _log(f"got {signal.Signals(signum).name}: asking the training processes to save and exit")
        requested.append(signal.Signals(signum).name)

    for sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, on_signal)
    while True:
        try:
            code = child.wait(timeout=POLL_SECONDS)
            break
        except subprocess.TimeoutExpired:
            pass
        if requested:
            for proc in training_processes(launcher):
                if proc.pid not in signalled and catches(proc.pid):
                    try:
                        proc.send_signal(signal.SIGUSR1)
                    except psutil.NoSuchProcess:
                        continue
                    signalled.add(proc.pid)
                    _log(f"sent SIGUSR1 to training process {proc.pid}")
    if requested:
        # the trainer saved and exited 75, which the launcher may report as a failure; exit 0 so that
        # srun --kill-on-bad-exit does not kill peers still saving (the batch script knows it stopped)
        _log(f"launcher exited with {code} after {requested[0]}; reporting 0")
        return 0
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "--":
        args = args[1:]
    if not args:
        print("usage: python -m recurlm.launch.node -- <launcher command ...>", file=sys.stderr)
        return 2
    # per-node values the batch script cannot write into one srun command line
    node_rank = os.environ.get("SLURM_NODEID", "0")
    args = [a.replace("%SLURM_NODEID%", node_rank) for a in args]
    code = run(args)
    return 128 - code if code < 0 else code  # killed by a signal: the shell's convention


if __name__ == "__main__":
    sys.exit(main())
