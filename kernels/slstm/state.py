"""The sLSTM recurrent state."""
from __future__ import annotations

from typing import NamedTuple

import torch


class SLSTMState(NamedTuple):
    """sLSTM state after a token, each [B, H, D]: cell c, normaliser n, stabiliser m (log scale) and
    hidden output h (the recurrent input of the next token). float32 (float64 for float64 inputs).
    xLSTM's ``sLSTMCell`` stacks the same four as [4, B, H * D] in the order (h, c, n, m)."""

    c: torch.Tensor
    n: torch.Tensor
    m: torch.Tensor
    h: torch.Tensor


def initial_slstm_state(state: SLSTMState | None, batch: int, heads: int, dim: int,
                        dtype: torch.dtype, device: torch.device) -> SLSTMState:
    """``state`` cast to ``dtype``, or zeros (a fresh state) of shape [B, H, D]."""
    if state is None:
        return SLSTMState(*(torch.zeros(batch, heads, dim, dtype=dtype, device=device) for _ in range(4)))
    for name, x in zip(SLSTMState._fields, state):
        if x.shape != (batch, heads, dim):
            raise ValueError(f"initial_state.{name} must be {(batch, heads, dim)}, got {tuple(x.shape)}")
    return SLSTMState(*(x.to(dtype) for x in state))
