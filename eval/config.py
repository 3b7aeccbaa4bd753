"""What to evaluate, during training and with ``recurlm-eval``."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EvalConfig:
    tasks: list[str] = field(default_factory=lambda: ["ppl"])
    """Tasks to run: ppl, ppl_by_position, passkey, mqar, state_tracking, lm_eval:<task>."""
    every: int = 0
    """During training: run ``tasks`` every this many steps (0: only at the end)."""
    out_dir: str = ""
    """Results directory; empty = <run_dir>/eval/<step>/."""
    batch_size: int = 8
    """Sequences per evaluation batch."""
    max_batches: int = 16
    """Batches for ppl."""
    length_multiple: int = 16
    """ppl_by_position: evaluate up to this many times the training length."""
