"""The optimizer and its learning rate: what the optimizer update of a training step runs.

- Parameter groups come from the model (``RecurrentLM.param_groups``): no weight decay on vectors
  and tagged parameters, and per-group ``lr_scale`` multipliers that ``set_lr`` applies.
- Without ZeRO (the default ``deepspeed=zero0``) the update is :class:`SkipNonFinite`: clip the
  global gradient norm, skip a step with non-finite gradients, else AdamW. ZeRO optimizers do the
  same themselves.
- Learning-rate schedules (:func:`lr_multiplier`) are a multiplier of the peak rate: warmup +
  cosine, WSD, constant. Lengths are in steps or tokens (``ScheduleConfig.unit``); a value below 1
  is a fraction of the run. The multiplier is a pure function of progress, so a resumed run needs
  no scheduler state.
"""
from __future__ import annotations

import math

import torch

from recurlm.models import RecurrentLM
from recurlm.train.config import OptimConfig, ScheduleConfig

def _length(value: float, total: float) -> float:
    return value * total if value < 1 else value


def lr_multiplier(cfg: ScheduleConfig, step: int, tokens: int, total_steps: int, tokens_per_step: int) -> float:
    """Multiplier in [min_lr_ratio, 1] of the peak learning rate before optimizer step ``step`` (0-based)."""
    now, total, increment = ((step, total_steps, 1) if cfg.unit == "steps"
                             else (tokens, total_steps * tokens_per_step, tokens_per_step))
    warmup = _length(cfg.warmup, total)
    if warmup > 0 and now < warmup:
        return min(1.0, (now + increment) / warmup)  # reaches the peak on the last warmup step
    floor = cfg.min_lr_ratio
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "cosine":
        progress = min(1.0, (now - warmup) / max(1.0, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    decay_len = _length(cfg.decay, total)  # wsd: ScheduleConfig admits no other name
    start = cfg.decay_start if cfg.decay_start is not None else total - decay_len
    if now < start:
        return 1.0
    progress = min(1.0, (now - start) / max(1.0, total - start))
    return 1.0 - (1 - floor) * progress  # linear decay to the floor


class SkipNonFinite(torch.optim.Optimizer):
    """The client optimizer without ZeRO: clips the global gradient norm and skips a step whose
    gradients are not all finite.

    DeepSpeed's ZeRO optimizers do both themselves; without ZeRO the client optimizer runs bare,
    so this wrapper gives the same behaviour (DeepSpeed counts ``overflow`` steps in
    ``engine.skipped_steps``) and records the pre-clip norm in ``grad_norm``."""

    def __init__(self, inner: torch.optim.Optimizer, max_norm: float):
        self.inner, self.max_norm = inner, max_norm
        self.overflow = False
        self.grad_norm: float | None = None
        self.defaults = inner.defaults

    @property
    def param_groups(self):
        return self.inner.param_groups

    @property
    def state(self):
        return self.inner.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state_dict) -> None:
        self.inner.load_state_dict(state_dict)

    @torch.no_grad()
    def step(self, closure=None):
        params = [p for g in self.inner.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.max_norm if self.max_norm > 0 else float("inf"))
        self.grad_norm = float(norm)  # the step's one host sync
        self.overflow = not math.isfinite(self.grad_norm)
        if self.overflow:
            self.inner.zero_grad(set_to_none=True)
            return None
        return self.inner.step(closure)


def make_optimizer(model: RecurrentLM, optim: OptimConfig, zero_stage: int) -> torch.optim.Optimizer:
    groups = model.param_groups(optim.weight_decay)
    for group in groups:
        group["lr"] = optim.lr * group["lr_scale"]
    if optim.name == "adamw":
        inner = torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps)
    elif optim.name == "fused_adam":
        from deepspeed.ops.adam import FusedAdam

        inner = FusedAdam(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, adam_w_mode=True)
    else:  # cpu_adam (OptimConfig refuses any other name)
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        inner = DeepSpeedCPUAdam(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, adamw_mode=True)
    return SkipNonFinite(inner, optim.grad_clip) if zero_stage == 0 else inner


def global_grad_norm(engine) -> float | None:
    """Pre-clip global gradient norm of the last step (inf for a skipped step)."""
    norm = getattr(engine.optimizer, "grad_norm", None)
    if norm is None:
        norm = engine.get_global_grad_norm()
    return None if norm is None else float(norm)


def set_lr(engine, peak_lr: float, multiplier: float) -> float:
    """Set every group's learning rate to peak * multiplier * its lr_scale; returns the base rate."""
    for group in engine.optimizer.param_groups:
        group["lr"] = peak_lr * multiplier * group.get("lr_scale", 1.0)
    return peak_lr * multiplier
