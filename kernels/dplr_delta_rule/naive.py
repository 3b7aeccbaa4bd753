"""Sequential reference of the generalized delta rule with a diagonal-plus-low-rank transition.

Per batch row and head, with the state S_t of shape [K, V] (flash-linear-attention's orientation):

    S_t = (diag(exp(gk_t)) + b_t a_t^T) S_{t-1} + k_t v_t^T
    o_t = S_t^T (scale * q_t)

A reset at token t replaces S_{t-1} by zero before the update, so S_t = k_t v_t^T.
This is one token at a time, obviously right and slow: the oracle of the chunkwise form.
"""
from __future__ import annotations

import torch

from recurlm.kernels.dispatch import compute_dtype


def naive_dplr_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    gk: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    resets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token-by-token recurrence.

    Args:
        q, k, a, b, gk: [B, T, H, K]; gk is the log decay (finite, usually < 0).
        v: [B, T, H, V].
        scale: multiplies q.
        initial_state: [B, H, K, V] or None (zeros).
        output_final_state: return S_T.
        resets: [B, T] bool or None; True zeroes the state entering that token.

    Returns:
        o [B, T, H, V] in q's dtype, and S_T [B, H, K, V] (float32, float64 for float64 inputs)
        or None. The state is accumulated in that dtype too.
    """
    out_dtype = q.dtype
    acc = compute_dtype(out_dtype)
    batch, seq_len, heads, dk = q.shape
    dv = v.shape[-1]
    q, k, v, a, b, gk = (x.to(acc) for x in (q, k, v, a, b, gk))
    if initial_state is None:
        state = q.new_zeros(batch, heads, dk, dv)
    else:
        state = initial_state.to(acc)
    outputs = []
    for t in range(seq_len):
        if resets is not None:
            state = torch.where(resets[:, t, None, None, None], torch.zeros_like(state), state)
        o_t, state = dplr_step(q[:, t], k[:, t], v[:, t], a[:, t], b[:, t], gk[:, t], scale, state)
        outputs.append(o_t)
    o = torch.stack(outputs, dim=1).to(out_dtype)
    return o, (state if output_final_state else None)


def dplr_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
              gk: torch.Tensor, scale: float, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One token: q, k, a, b, gk [B, H, K], v [B, H, V], state S_{t-1} [B, H, K, V] ->
    (o_t [B, H, V] in q's dtype, S_t [B, H, K, V]), computed in the wider of q's and the state's
    dtypes (decoding calls this directly)."""
    out_dtype, acc = q.dtype, torch.promote_types(q.dtype, state.dtype)
    q, k, v, a, b, gk, state = (x.to(acc) for x in (q, k, v, a, b, gk, state))
    read = (a[..., None, :] @ state).squeeze(-2)  # a_t^T S_{t-1}: [B, H, V]
    state = torch.addcmul(gk.exp()[..., None] * state + k[..., None] * v[..., None, :], b[..., None], read[..., None, :])
    return ((q[..., None, :] @ state).squeeze(-2) * scale).to(out_dtype), state
