"""Typed configuration of a training job (Hydra structured configs; one docstring per field).

The ``model`` and ``data`` nodes are typed by their own packages (``recurlm.models`` family
configs, ``recurlm.data.config.DataConfig``); ``launch``, ``eval`` and ``recipe`` by theirs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

OPTIMIZERS = ("adamw", "fused_adam", "cpu_adam")
SCHEDULES = ("cosine", "wsd", "constant")
PRECISIONS = ("fp32", "bf16", "fp16")
WANDB_MODES = ("online", "offline", "disabled")


@dataclass
class OptimConfig:
    name: str = "adamw"
    """Optimizer: adamw (torch AdamW, no extension build) or fused_adam / cpu_adam (DeepSpeed's)."""
    lr: float = 3e-3
    """Peak learning rate."""
    weight_decay: float = 0.1
    """Decoupled weight decay for matrices; vectors and tagged parameters get none."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """Adam betas."""
    eps: float = 1e-8
    """Adam epsilon."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 disables)."""

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optim.name must be one of {OPTIMIZERS}, got {self.name!r}")


@dataclass
class ScheduleConfig:
    name: str = "cosine"
    """cosine (warmup + cosine decay), wsd (warmup-stable-decay) or constant (warmup + flat)."""
    unit: str = "steps"
    """Unit of warmup / decay lengths: steps or tokens."""
    warmup: float = 0.05
    """Warmup length: a fraction of the run if < 1, else an absolute count in ``unit``."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak."""
    decay: float = 0.2
    """wsd: length of the final decay phase (fraction of the run if < 1, else a count in ``unit``)."""
    decay_start: Optional[float] = None
    """wsd: start the decay here (in ``unit``) instead of at the end minus ``decay``; lets a decay
    phase start from any checkpoint of a stable-LR run."""

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"schedule.name must be one of {SCHEDULES}, got {self.name!r}")
        if self.unit not in ("steps", "tokens"):
            raise ValueError(f"schedule.unit must be steps or tokens, got {self.unit!r}")


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 0
    """ZeRO stage: 0 (data parallel), 1 (optimizer states), 2 (+ gradients), 3 (+ parameters)."""
    offload_optimizer: bool = False
    """Keep optimizer states in CPU memory (ZeRO-2/3; builds DeepSpeedCPUAdam on first use)."""
    offload_param: bool = False
    """ZeRO-3: keep parameters in CPU memory."""
    precision: str = "fp32"
    """fp32, bf16 or fp16 (fp16 uses dynamic loss scaling)."""
    checkpoint_blocks: list[int] = field(default_factory=list)
    """Block indices whose activations are recomputed in backward; [-1] means every block."""
    zero_init: bool = True
    """ZeRO-3: build the model inside deepspeed.zero.Init so no rank materialises it whole."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Raw DeepSpeed config entries merged last, recursively (for anything not exposed above), e.g.
    ``{zero_optimization: {stage3_param_persistence_threshold: 0}}`` keeps the stage set above."""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"deepspeed.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"deepspeed.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.offload_optimizer and self.zero_stage < 2:
            raise ValueError("deepspeed.offload_optimizer needs zero_stage 2 or 3")
        if self.offload_param and self.zero_stage != 3:
            raise ValueError("deepspeed.offload_param needs zero_stage 3")
        if self.precision == "bf16" and self.zero_stage == 0:
            raise ValueError("deepspeed.precision=bf16 needs zero_stage >= 1: without ZeRO, DeepSpeed's bf16 mode "
                             "updates bf16 weights with no float32 master copy (use deepspeed=zero1 or gpu_zero2_bf16)")


@dataclass
class WandbConfig:
    mode: str = "offline"
    """online, offline (default: no network needed; `wandb sync` later) or disabled."""
    project: str = "recurlm"
    """W&B project."""
    entity: Optional[str] = None
    """W&B entity (team or user)."""
    group: Optional[str] = None
    """Run group (sweeps and job arrays set it)."""
    tags: list[str] = field(default_factory=list)
    """Run tags."""
    log_artifacts: bool = False
    """Upload exported checkpoints as W&B artifacts."""

    def __post_init__(self) -> None:
        if self.mode not in WANDB_MODES:
            raise ValueError(f"logger.wandb.mode must be one of {WANDB_MODES}, got {self.mode!r}")


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """Weights & Biases settings."""
    log_every: int = 10
    """Log metrics every this many optimizer steps."""
    progress: bool = True
    """Show a progress bar (rank 0)."""
    spike_window: int = 50
    """Steps in the window of the loss-spike detector."""
    spike_zscore: float = 6.0
    """A loss this many standard deviations above the window mean is logged as a spike."""


@dataclass
class TrainConfig:
    """The training loop (config group ``train``): length, batch geometry, evaluation, checkpoints."""

    steps: int = 300
    """Optimizer steps."""
    seq_len: int = 256
    """Training sequence length T."""
    global_batch_size: int = 8
    """Sequences per optimizer step, over all ranks and accumulation steps."""
    micro_batch_size: int = 0
    """Sequences per rank per forward; 0 = global_batch_size / world_size (no accumulation)."""
    eval_every: int = 50
    """Validation every this many steps (0: only at start and end)."""
    eval_batches: int = 8
    """Validation batches per evaluation."""
    checkpoint_every: int = 100
    """Save every this many steps (0: only at the end and on a signal)."""
    keep_last: int = 3
    """Keep the newest this many checkpoints."""
    keep_every: int = 0
    """Also keep every checkpoint whose step is a multiple of this (0: none)."""
    max_nonfinite_steps: int = 5
    """Stop after this many consecutive steps with a non-finite loss or gradient (each is skipped)."""
    rollback_on_nonfinite: bool = False
    """On that stop, reload the last good checkpoint and skip past the offending data instead.
    No checkpoint is saved while non-finite steps are in a row, so a rollback lands before them."""
    max_rollbacks: int = 3
    """With ``rollback_on_nonfinite``: stop (exit 3) instead of rolling back a further time once
    this many rollbacks happened in this process (the instability is not in the data)."""
    peak_flops: float = 0.0
    """Peak FLOP/s per device for MFU; 0 = measure a float32 matmul on CPU / use a table on GPU."""
    exit_after_steps: int = 0
    """Stop (with a checkpoint) after this many steps in this process (tests, preemption drills)."""
    cpu_threads: int = 0
    """torch intra-op threads per process on CPU (0: torch's default, one per core). Small models
    run faster on fewer threads, and a loaded machine punishes oversubscription."""

    def __post_init__(self) -> None:
        """The batch geometry that holds at any world size (``batch_geometry`` checks the rest)."""
        if self.seq_len < 1:
            raise ValueError(f"train.seq_len={self.seq_len}: must be >= 1")
        if self.global_batch_size < 1:
            raise ValueError(f"train.global_batch_size={self.global_batch_size}: must be >= 1")
        if self.micro_batch_size < 0 or (self.micro_batch_size and self.global_batch_size % self.micro_batch_size):
            raise ValueError(f"train.micro_batch_size={self.micro_batch_size} must be 0 or divide "
                             f"train.global_batch_size={self.global_batch_size}")


@dataclass
class JobConfig:
    model: Any = MISSING
    """The model family config (group ``model``)."""
    data: Any = MISSING
    """The dataset config (group ``data``)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer (group ``optim``)."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Learning-rate schedule (group ``schedule``)."""
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    """DeepSpeed engine (group ``deepspeed``)."""
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    """Metrics, W&B and progress (group ``logger``)."""
    launch: Any = MISSING
    """How the job is started (group ``launch``)."""
    recipe: Any = MISSING
    """Training recipe (group ``recipe``)."""
    eval: Any = MISSING
    """Evaluation during and after training (group ``eval``)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The training loop."""
    run_dir: str = ""
    """Where everything of the run goes; empty = outputs/<family>-<size>-<timestamp>."""
    resume: str = "auto"
    """auto (newest valid checkpoint in run_dir, else start), none, or a checkpoint path."""
    seed: int = 0
    """Seed of model init, data order and every RNG."""


SCHEMAS = [(None, "job_schema", JobConfig), ("optim", "optim_schema", OptimConfig),
           ("schedule", "schedule_schema", ScheduleConfig), ("deepspeed", "deepspeed_schema", DeepSpeedConfig),
           ("logger", "logger_schema", LoggerConfig)]
"""``(group, name, dataclass)`` of each schema this module types, stored in Hydra's ConfigStore by
``recurlm.configs``; the YAML options of a group extend its schema (``defaults: [<name>, _self_]``)."""
