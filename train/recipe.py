"""Recipe settings: what a training phase does beyond plain next-token prediction."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class RecipeConfig:
    name: str = "none"
    """none, state_passing, noise_init, other_sequence_init or state_expansion."""
    init_from: Optional[str] = None
    """Start from these weights (a checkpoint or export dir) instead of a fresh init; optimizer and
    data position start anew (a post-training phase)."""
    noise_scale: float = 1.0
    """noise_init: standard deviation of the Gaussian initial states."""
