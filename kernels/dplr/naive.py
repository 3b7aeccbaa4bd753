"""Sequential reference of the generalized delta rule with a diagonal-plus-low-rank transition.

Per batch row and head, with the state S_t of shape [K, V] (flash-linear-attention's orientation):

    S_t = (diag(exp(gk_t)) + b_t a_t^T) S_{t-1} + k_t v_t^T
    o_t = S_t^T (scale * q_t)

A reset at token t replaces S_{t-1} by zero before the update, so S_t = k_t v_t^T.
This is one token at a time, obviously right and slow: the oracle of the chunkwise form.
"""
from __future__ import annotations

import torch


def dplr_naive(
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
    acc = torch.promote_types(out_dtype, torch.float32)
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
        read = torch.einsum("bhk,bhkv->bhv", a[:, t], state)  # a_t^T S_{t-1}
        state = (gk[:, t].exp()[..., None] * state
                 + b[:, t, ..., None] * read[..., None, :]
                 + k[:, t, ..., None] * v[:, t, ..., None, :])
        outputs.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * scale, state))
    o = torch.stack(outputs, dim=1).to(out_dtype)
    return o, (state if output_final_state else None)
