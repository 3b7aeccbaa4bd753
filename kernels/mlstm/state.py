"""The mLSTM recurrent state and its fresh-sequence value."""
from __future__ import annotations

from typing import NamedTuple

import torch


class MLSTMState(NamedTuple):
    """Stabilised mLSTM state after a token (true memory = C * exp(m), true normaliser = n * exp(m)).

    C: matrix memory [B, H, K, V]; n: normaliser [B, H, K]; m: max-stabiliser [B, H] (log scale).
    float32 (float64 for float64 inputs). A fresh sequence starts from C = 0, n = 0, m = 0, the
    convention of ``mlstm_kernels``' recurrent and chunkwise kernels.
    """

    C: torch.Tensor
    n: torch.Tensor
    m: torch.Tensor


def initial_mlstm_state(state: MLSTMState | None, batch: int, heads: int, dk: int, dv: int,
                        dtype: torch.dtype, device: torch.device) -> MLSTMState:
    """``state`` cast to ``dtype``, or the fresh state (zeros) of that shape."""
    if state is None:
        return MLSTMState(torch.zeros(batch, heads, dk, dv, dtype=dtype, device=device),
                          torch.zeros(batch, heads, dk, dtype=dtype, device=device),
                          torch.zeros(batch, heads, dtype=dtype, device=device))
    C, n, m = state
    expected = ((batch, heads, dk, dv), (batch, heads, dk), (batch, heads))
    if (tuple(C.shape), tuple(n.shape), tuple(m.shape)) != expected:
        raise ValueError(f"initial_state (C, n, m) must have shapes {expected}, got "
                         f"{(tuple(C.shape), tuple(n.shape), tuple(m.shape))}")
    return MLSTMState(C.to(dtype), n.to(dtype), m.to(dtype))
