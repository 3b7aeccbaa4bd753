"""RWKV-6 (Finch) time mixing with data-dependent per-channel decay and a bonus: see :func:`rwkv6`."""
from __future__ import annotations

import torch

from recurlm.kernels.dispatch import autocast_off
from recurlm.kernels.gla import dispatch_gated, flops as gla_flops
from recurlm.kernels.gla.chunk import CHUNK_SIZE
from recurlm.kernels.rwkv6.chunk import chunk_rwkv6
from recurlm.kernels.rwkv6.naive import naive_rwkv6
from recurlm.kernels.rwkv6.triton import triton_rwkv6

__all__ = ["rwkv6"]


@autocast_off
def rwkv6(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    resets: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RWKV-6 recurrence (fla's ``chunk_rwkv6`` / ``naive_recurrent_rwkv6`` convention)::

        o_t = scale * (S_{t-1} + diag(u) k_t v_t^T)^T r_t     S: [K, V] per (batch, head)
        S_t = diag(exp(w_t)) S_{t-1} + k_t v_t^T

    i.e. the receptance reads the state before the current token plus the current token weighted
    by the bonus u. RWKV-6 models pass w = -exp(decay logits) (so w < 0).

    Args:
        r: [B, T, H, K] receptance (query).
        k: [B, T, H, K] keys.
        v: [B, T, H, V] values.
        w: [B, T, H, K] log decays, w <= 0 (stable down to -20 and below).
        u: [H, K] bonus ("time_first" / ``time_faaaa``).
        scale: multiplies r; default K ** -0.5 (as fla; RWKV-6 models usually pass 1.0).
        initial_state: [N, H, K, V] state before token 0 (N = B, or the number of sequences with
            ``cu_seqlens``); None means zeros.
        output_final_state: also return the state after the last token.
        resets: [B, T] bool, True where a document starts: S_{t-1} is dropped before token t (also
            for its own read), ``resets[:, 0]`` drops ``initial_state``.
        cu_seqlens: [N + 1] int boundaries of N sequences packed in one row (B must be 1).
        impl: "auto" | "naive" | "chunk" | "triton" (see :mod:`recurlm.kernels.dispatch`).

    Returns:
        o: [B, T, H, V] in r's dtype.
        final_state: [N, H, K, V] float32 (float64 for float64 inputs), or None.

    Example (varlen)::

        >>> r, k, w = (torch.randn(1, 10, 2, 8) for _ in range(3))
        >>> w, v, u = -w.exp(), torch.randn(1, 10, 2, 4), torch.randn(2, 8)
        >>> o, ht = rwkv6(r, k, v, w, u, output_final_state=True, cu_seqlens=torch.tensor([0, 3, 10]))
        >>> o.shape, ht.shape
        (torch.Size([1, 10, 2, 4]), torch.Size([2, 2, 8, 4]))
    """
    if u.shape != r.shape[2:]:
        raise ValueError(f"rwkv6: u must be [H, K] = {tuple(r.shape[2:])}, got {tuple(u.shape)}")
    return dispatch_gated("rwkv6", impl, {"naive": naive_rwkv6, "chunk": chunk_rwkv6}, triton_rwkv6,
                          r, k, v, w, scale, initial_state, output_final_state, resets, cu_seqlens, u=u)


def flops(batch: int, seq_len: int, heads: int, head_dim: int, value_dim: int | None = None,
          chunk_size: int = CHUNK_SIZE) -> int:
    """Forward FLOPs of the chunkwise form: GLA's (see :func:`recurlm.kernels.gla.flops`)
    plus the bonus term (r . (u * k)) v: 3 K + 2 V per token and head."""
    value_dim = head_dim if value_dim is None else value_dim
    bonus = batch * heads * seq_len * (3 * head_dim + 2 * value_dim)
    return gla_flops(batch, seq_len, heads, head_dim, value_dim, chunk_size) + bonus
