"""Sequential reference for RWKV-6 (Finch): the shared gated recurrence with the bonus ``u``.

    o_t = scale * (S_{t-1} + diag(u) k_t v_t^T)^T r_t
    S_t = diag(exp(w_t)) S_{t-1} + k_t v_t^T

(see :mod:`recurlm.kernels.gla.naive`, which holds the loop for both ops).
"""
from __future__ import annotations

import torch

from recurlm.kernels.gla.naive import naive_gla


def naive_rwkv6(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor | None = None,
    resets: torch.Tensor | None = None,
    *,
    u: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RWKV-6 by the sequential loop. r, k, w: [B, T, H, K]; v: [B, T, H, V]; u: [H, K];
    initial_state: [B, H, K, V] or None; resets: [B, T] bool or None.
    Returns o [B, T, H, V] and the final state [B, H, K, V]."""
    return naive_gla(r, k, v, w, scale, initial_state, resets, bonus=u)
