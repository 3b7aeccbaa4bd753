"""Sequential reference for the diagonal gated linear recurrence (the test oracle).

    h_t = s_t exp(g_t) * h_{t-1} + x_t,        h_{-1} = initial_state (or 0),  s_t = sign (or 1),

with the decay of a token where a document starts (``resets[b, t]``) set to exactly zero.
One Python step per token: obviously right, slow, and exact in float64.
"""
from __future__ import annotations

import torch

from recurlm.kernels.dispatch import compute_dtype


def naive_linear_scan(x: torch.Tensor, g: torch.Tensor, initial_state: torch.Tensor | None = None,
                      output_final_state: bool = False, resets: torch.Tensor | None = None,
                      sign: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x, g [B, T, D]; initial_state [B, D]; resets [B, T] bool; sign [B, T, D] of +-1 (the
    transition's sign) -> (h [B, T, D] in x.dtype, final state [B, D] in the compute dtype or None)."""
    dtype = compute_dtype(x.dtype)
    batch, seq_len, dim = x.shape
    h = x.new_zeros(batch, dim, dtype=dtype) if initial_state is None else initial_state.to(dtype)
    outputs = []
    for t in range(seq_len):
        decay = g[:, t].to(dtype).exp()
        if sign is not None:
            decay = sign[:, t].to(dtype) * decay
        if resets is not None:
            decay = torch.where(resets[:, t, None], torch.zeros_like(decay), decay)
        h = decay * h + x[:, t].to(dtype)
        outputs.append(h)
    return torch.stack(outputs, dim=1).to(x.dtype), (h if output_final_state else None)
