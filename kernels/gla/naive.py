"""Sequential reference for gated linear attention with a per-key-channel decay (the test oracle).

One recurrence serves two ops (written once, so the two references cannot drift apart):

- GLA (``bonus=None``): the query reads the state *after* the update::

      S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T          S_t: [K, V]
      o_t = scale * S_t^T q_t

- RWKV-6 (``bonus=u``): the query reads the state *before* the update, plus a bonus for the
  current token::

      o_t = scale * (S_{t-1} + diag(u) k_t v_t^T)^T q_t
      S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T

A reset at token t (``resets[b, t]``) sets S_{t-1} = 0 before either formula is applied.
"""
from __future__ import annotations

import torch

from recurlm.kernels.dispatch import compute_dtype


def naive_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor | None = None,
    resets: torch.Tensor | None = None,
    bonus: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GLA (``bonus=None``) or RWKV-6 (``bonus=u``) by a token-by-token loop over the recurrence in
    the module docstring.

    Args:
        q, k, g: [B, T, H, K] queries, keys, log decays (g <= 0).
        v: [B, T, H, V] values.
        scale: multiplies q.
        initial_state: [B, H, K, V] or None (zeros).
        resets: [B, T] bool or None: True where a document starts (the carried state is dropped).
        bonus: [H, K] RWKV-6 bonus ``u``, or None for GLA.

    Returns:
        o [B, T, H, V] in q's dtype, final state [B, H, K, V] in the accumulation dtype.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    dtype, out_dtype = compute_dtype(q.dtype), q.dtype
    q, k, v, g = (x.to(dtype) for x in (q, k, v, g))
    state = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(dtype)
    keep = torch.ones(B, T, dtype=dtype, device=q.device) if resets is None else (~resets).to(dtype)
    outputs = []
    # unbind (not q[:, t]) so that the backward stacks per-step gradients instead of writing each
    # into a fresh [B, T, ...] buffer
    for q_t, k_t, v_t, g_t, keep_t in zip(*(x.unbind(1) for x in (q, k, v, g, keep))):
        state = state * keep_t[:, None, None, None]
        kv = k_t[..., None] * v_t[..., None, :]  # [B, H, K, V]
        q_t = q_t * scale
        if bonus is not None:
            outputs.append(torch.einsum("bhk,bhkv->bhv", q_t, state + bonus.to(dtype)[..., None] * kv))
        state = g_t.exp()[..., None] * state + kv
        if bonus is None:
            outputs.append(torch.einsum("bhk,bhkv->bhv", q_t, state))
    o = torch.stack(outputs, dim=1) if outputs else v.new_zeros(B, 0, H, V)
    return o.to(out_dtype), state

