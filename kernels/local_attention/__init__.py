"""Causal sliding-window (local) attention with grouped-query heads: ``local_attention``."""
from __future__ import annotations

import torch

from recurlm.kernels.dispatch import autocast_off, check_boundaries, pad_varlen, resolve_impl, unpad_varlen
from recurlm.kernels.local_attention.chunk import chunk_local_attention
from recurlm.kernels.local_attention.naive import naive_local_attention
from recurlm.kernels.local_attention.state import LocalAttentionState


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
                  initial_state: LocalAttentionState | None, resets: torch.Tensor | None,
                  cu_seqlens: torch.Tensor | None) -> None:
    if q.dim() != 4 or q.shape[1] == 0:
        raise ValueError(f"q must be [B, T, H, D] with T >= 1, got {tuple(q.shape)}")
    batch, seq_len, heads, head_dim = q.shape
    if k.dim() != 4 or k.shape != v.shape or k.shape[:2] != (batch, seq_len) or k.shape[3] != head_dim:
        raise ValueError(f"k and v must be [B, T, Hkv, D] = [{batch}, {seq_len}, Hkv, {head_dim}], "
                         f"got {tuple(k.shape)} and {tuple(v.shape)}")
    if heads % k.shape[2] != 0:
        raise ValueError(f"query heads {heads} must be a multiple of key/value heads {k.shape[2]}")
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an int >= 1, got {window!r}")
    num_states = check_boundaries(batch, seq_len, resets, cu_seqlens)
    if initial_state is not None:
        cache_shape = (num_states, window - 1, k.shape[2], head_dim)
        if (not isinstance(initial_state, LocalAttentionState) or initial_state.k.shape != cache_shape
                or initial_state.v.shape != cache_shape or initial_state.valid.shape != cache_shape[:2]
                or initial_state.valid.dtype != torch.bool):
            raise ValueError(f"initial_state must be a LocalAttentionState with k, v {cache_shape} and bool "
                             f"valid {cache_shape[:2]}")


@autocast_off
def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, scale: float | None = None,
                    initial_state: LocalAttentionState | None = None, output_final_state: bool = False,
                    resets: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None,
                    impl: str = "auto") -> tuple[torch.Tensor, LocalAttentionState | None]:
    """Causal sliding-window attention with grouped-query heads:

        o_t = sum_{s in W(t)} softmax_s(scale * q_t . k_s) v_s,
        W(t) = {s : t - window < s <= t, s in the same document as t},

    query head h reading key/value head h // (H / Hkv). The state is the key/value cache of the last
    window - 1 tokens (``LocalAttentionState``), so a sequence processed in pieces with state
    passing, or decoded one token at a time (T = 1), equals processing it whole.

    Args:
        q: [B, T, H, D]; k, v: [B, T, Hkv, D] with H % Hkv == 0; float32/bfloat16/float16/float64.
        window: tokens each query sees, itself included (window = 1: only itself).
        scale: score scale, default D ** -0.5.
        initial_state: cache from a previous call ([B, ...] or [N, ...] with cu_seqlens).
        output_final_state: also return the cache after the last token.
        resets: [B, T] bool, True where a document starts: that token and the ones after it see no
            earlier token (cached ones included).
        cu_seqlens: [N + 1] int offsets of N sequences packed into one row (B = 1), each with its
            own cache. Example: q [1, 7, H, D], cu_seqlens = [0, 3, 7], initial_state with k
            [2, window - 1, Hkv, D] -> the final state's k is [2, window - 1, Hkv, D].
        impl: "auto" (Triton on CUDA, chunk elsewhere), "naive", "chunk" or "triton".

    Returns:
        o [B, T, H, D] in q.dtype, and a ``LocalAttentionState`` (k, v in float32, float64 for
        float64 inputs) if ``output_final_state`` else None. Differentiable in q, k, v and the
        initial state's k and v.
    """
    _check_inputs(q, k, v, window, initial_state, resets, cu_seqlens)
    impl = resolve_impl(impl, q)
    if impl == "triton":
        from recurlm.kernels.local_attention.triton import triton_local_attention as fn
    else:
        fn = naive_local_attention if impl == "naive" else chunk_local_attention
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if cu_seqlens is None:
        return fn(q, k, v, window, scale, initial_state, output_final_state, resets)
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    q, k, v = (pad_varlen(t, cu_seqlens) for t in (q, k, v))
    out, final_state = fn(q, k, v, window, scale, initial_state, output_final_state, lengths=lengths.long())
    return unpad_varlen(out, cu_seqlens), final_state


__all__ = ["LocalAttentionState", "local_attention"]


def flops(batch: int, seq_len: int, heads: int, head_dim: int, window: int) -> int:
    """Forward matmul FLOPs of the exact band (q.k and p.v, 2 per multiply-add), no cache."""
    attended = sum(min(t + 1, window) for t in range(seq_len))
    return 4 * batch * heads * head_dim * attended
