"""How a job is started: in this process, as local worker processes, or as a Slurm job.

``launch=slurm`` renders ``<run_dir>/slurm/train.sbatch`` from these settings and submits it
(``recurlm.launch.slurm``); every field below maps onto one ``#SBATCH`` option or one part of the
generated script. See docs/launch.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class SlurmConfig:
    nodes: int = 1
    """Nodes (``#SBATCH --nodes``); one launcher (torchrun / deepspeed) starts on each."""
    gpus_per_node: int = 0
    """GPUs per node (``--gpus-per-node``); 0 on CPU clusters."""
    cpus_per_task: int = 0
    """CPUs per node launcher (``--cpus-per-task``); 0 leaves Slurm's default."""
    mem: Optional[str] = None
    """Memory per node, e.g. 200G (``--mem``)."""
    time: str = "24:00:00"
    """Wall-time limit of one job (``--time``); longer runs continue by requeue or ``chain``."""
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
    job_name: Optional[str] = None
    """Job name (``--job-name``); empty = ``recurlm-<run dir name>``."""
    requeue: bool = True
    """Requeue on preemption / node failure (``--requeue``), and requeue itself after a signal-triggered
    save so that a run longer than ``time`` continues where it stopped (resume=auto)."""
    signal_seconds: int = 120
    """Ask Slurm for USR1 this many seconds before the time limit (``--signal=B:USR1@<s>``); the batch
    script forwards it to the trainer, which saves and exits 75; 0 disables."""
    chain: int = 0
    """Continuation chain: submit this many extra jobs, each ``--dependency=afterany`` on the previous,
    each resuming from the newest checkpoint (for clusters where requeue is not allowed)."""
    eval_command: Optional[str] = None
    """Shell command of an evaluation job submitted with ``--dependency=afterok`` on training (for sweeps:
    one per element, ``aftercorr``); ``{run_dir}`` is replaced by the run directory, e.g.
    ``recurlm-eval run_dir={run_dir}``. Empty: no eval job."""
    eval_time: str = "01:00:00"
    """Wall-time limit of the evaluation job."""
    extra_sbatch: list[str] = field(default_factory=list)
    """Extra ``#SBATCH`` lines, verbatim (without the ``#SBATCH`` prefix), e.g. ``--reservation=x``."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run before training on the batch node (module loads, virtualenv activation)."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment variables exported in the job (NCCL_*, GLOO_*, OMP_NUM_THREADS, ...)."""
    socket_ifname: Optional[str] = None
    """Network interface of the collectives: sets NCCL_SOCKET_IFNAME and GLOO_SOCKET_IFNAME."""
    nccl_debug: Optional[str] = None
    """NCCL_DEBUG level (WARN, INFO) for the job; empty leaves it unset."""
    python: Optional[str] = None
    """Python interpreter of the job; empty = the interpreter that submits (``sys.executable``)."""
    doctor: bool = True
    """Run ``recurlm-doctor`` (kernels of the model vs their references, an all_reduce over every rank)
    on all nodes before training; a failure ends the job at once with its report."""
    port_base: int = 20000
    """Rendezvous port = port_base + a number derived from the job id (and restart count)."""
    array_parallelism: int = 0
    """Sweeps: at most this many array elements at once (``--array=0-N%<p>``; 0 = no limit)."""
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

    def __post_init__(self) -> None:
        if self.mode not in ("none", "local", "slurm"):
            raise ValueError(f"launch.mode must be none, local or slurm, got {self.mode!r}")
        if self.launcher not in ("torchrun", "deepspeed"):
            raise ValueError(f"launch.launcher must be torchrun or deepspeed, got {self.launcher!r}")


SCHEMAS = [("launch", "launch_schema", LaunchConfig)]
"""``(group, name, dataclass)`` stored in Hydra's ConfigStore by ``recurlm.configs``."""
