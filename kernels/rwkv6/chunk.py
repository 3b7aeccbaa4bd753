"""Chunkwise RWKV-6: the shared chunkwise gated attention with the bonus ``u``.

The query at t reads the state *before* step t (exclusive cumulative decays, strictly causal
intra-chunk weights) plus the bonus term scale * (r_t . (u * k_t)) v_t; everything else, including
the stability argument and the reset masks, is :mod:`recurlm.kernels.gla.chunk`.
"""
from __future__ import annotations

import torch

from recurlm.kernels.gla.chunk import chunk_gla


def chunk_rwkv6(
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
    """RWKV-6 in chunkwise form: shapes as :func:`recurlm.kernels.rwkv6.naive.naive_rwkv6`."""
    return chunk_gla(r, k, v, w, scale, initial_state, resets, bonus=u)
