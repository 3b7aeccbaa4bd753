"""How a job is started: in this process, as local worker processes, or as a Slurm job."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class SlurmConfig:
    nodes: int = 1
    """Nodes (``#SBATCH --nodes``)."""
    gpus_per_node: int = 0
    """GPUs per node (``--gpus-per-node``); 0 on CPU clusters."""
    cpus_per_task: int = 0
    """CPUs per task (``--cpus-per-task``); 0 leaves Slurm's default."""
    mem: Optional[str] = None
    """Memory per node, e.g. 200G (``--mem``)."""
    time: str = "24:00:00"
    """Wall-time limit (``--time``)."""
    partition: Optional[str] = None
    """Partition (``--partition``)."""
    account: Optional[str] = None
    """Account (``--account``)."""
    qos: Optional[str] = None
    """Quality of service (``--qos``)."""
    constraint: Optional[str] = None
    """Node features (``--constraint``)."""
    exclusive: bool = False
    """Whole nodes (``--exclusive``)."""
    requeue: bool = True
    """Requeue on preemption / node failure (``--requeue``)."""
    signal_seconds: int = 120
    """Ask Slurm for USR1 this many seconds before the time limit; the trainer saves and requeues."""
    extra_sbatch: list[str] = field(default_factory=list)
    """Extra ``#SBATCH`` lines, verbatim (without the ``#SBATCH`` prefix)."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run before training (module loads, virtualenv activation)."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment variables exported in the job (NCCL_*, GLOO_SOCKET_IFNAME, ...)."""
    array_parallelism: int = 0
    """Sweeps: at most this many array elements at once (0 = no limit)."""
    dry_run: bool = False
    """Print the script and do not submit."""


@dataclass
class LaunchConfig:
    mode: str = "none"
    """none (run in this process), local (start nproc_per_node worker processes) or slurm."""
    launcher: str = "torchrun"
    """Per-node launcher for local and slurm modes: torchrun or deepspeed."""
    nproc_per_node: int = 1
    """Worker processes per node (GPUs per node on a GPU cluster)."""
    master_port: int = 0
    """Rendezvous port; 0 picks a free one (local) or derives it from the job id (slurm)."""
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    """Slurm job settings (mode=slurm)."""
