"""Weight-layout helpers shared by the converters."""
from __future__ import annotations

import torch


def conv_from_torch(w: torch.Tensor) -> torch.Tensor:
    """nn.Conv1d depthwise weight [R, 1, W] (cross-correlation) -> recurlm ShortConv [W, R] (tap j = x_{t-j})."""
    return w[:, 0, :].flip(-1).t().contiguous()


def conv_to_torch(w: torch.Tensor) -> torch.Tensor:
    """Inverse of conv_from_torch: [W, R] -> [R, 1, W]."""
    return w.t().flip(-1)[:, None, :].contiguous()
