"""Learning-rate schedules as a multiplier of the peak rate: warmup + cosine, WSD, constant.

Lengths are in steps or tokens (``ScheduleConfig.unit``); a value below 1 is a fraction of the run.
The multiplier is a pure function of progress, so a resumed run needs no scheduler state.
"""
from __future__ import annotations

import math

from recurlm.train.config import ScheduleConfig


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
