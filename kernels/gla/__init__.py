"""Gated linear attention (GLA) with a per-key-channel decay: the op behind HGRN2 and GLA layers.

See :func:`gla`. ``gla`` and ``rwkv6`` take the same token inputs (q/r, k, v [B, T, H, *] and a
log decay g/w [B, T, H, K]) and the same state arguments; :func:`dispatch_gated` validates them
once and routes the call to the naive, chunk or triton implementation (``impl``, see
:mod:`recurlm.kernels.dispatch`).

The naive and chunk implementations are *batch* functions
``fn(q, k, v, g, scale, initial_state, resets, **op_args) -> (o, final_state)``; ``cu_seqlens``
reaches them through identity padding (k = 0, g = 0 leave the state unchanged). The triton
implementation takes every argument itself (fla is natively varlen).
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch

from recurlm.kernels.dispatch import autocast_off, pad_varlen, resolve_impl, run_varlen
from recurlm.kernels.gla.chunk import CHUNK_SIZE, chunk_gla
from recurlm.kernels.gla.naive import naive_gla
from recurlm.kernels.gla.triton import triton_gla

__all__ = ["gla"]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_gated_inputs(
    name: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    initial_state: torch.Tensor | None,
    resets: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
) -> None:
    """Raise ValueError unless q, k, g are [B, T, H, K], v is [B, T, H, V] and the state args fit."""
    if q.dim() != 4:
        raise ValueError(f"{name}: queries must be [B, T, H, K], got shape {tuple(q.shape)}")
    if k.shape != q.shape or g.shape != q.shape:
        raise ValueError(f"{name}: queries, keys and log decays must share a shape [B, T, H, K], got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(g.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"{name}: values must be [B, T, H, V] with B, T, H of the queries "
                         f"{tuple(q.shape[:3])}, got {tuple(v.shape)}")
    for label, x in (("queries", q), ("keys", k), ("values", v), ("log decays", g)):
        if x.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{name}: {label} must be floating point, got {x.dtype}")
    B, T, H, K = q.shape
    n_seqs = B
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError(f"{name}: with cu_seqlens the batch size must be 1, got {B}")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
            raise ValueError(f"{name}: cu_seqlens must be [N + 1], got shape {tuple(cu_seqlens.shape)}")
        if cu_seqlens[0].item() != 0 or cu_seqlens[-1].item() != T or bool((cu_seqlens.diff() <= 0).any()):
            raise ValueError(f"{name}: cu_seqlens must rise strictly from 0 to T={T}, got {cu_seqlens.tolist()}")
        n_seqs = cu_seqlens.numel() - 1
    if resets is not None and (resets.dtype != torch.bool or resets.shape != (B, T)):
        raise ValueError(f"{name}: resets must be bool [B, T] = [{B}, {T}], "
                         f"got {resets.dtype} {tuple(resets.shape)}")
    if initial_state is not None and initial_state.shape != (n_seqs, H, K, v.shape[-1]):
        raise ValueError(f"{name}: initial_state must be [N, H, K, V] = {(n_seqs, H, K, v.shape[-1])} "
                         f"(N = number of sequences), got {tuple(initial_state.shape)}")


def dispatch_gated(
    name: str,
    impl: str,
    batch_impls: Mapping[str, Callable],
    triton_impl: Callable,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float | None,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    resets: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    **op_args,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validate, default ``scale`` to K ** -0.5, and run the implementation ``impl`` resolves to.

    Args:
        batch_impls: {"naive": fn, "chunk": fn} batch functions (see the module docstring).
        triton_impl: ``fn(q, k, v, g, scale=, initial_state=, output_final_state=, resets=,
            cu_seqlens=, **op_args) -> (o, final_state | None)``.
        op_args: op-specific tensors passed to every implementation by name (e.g. RWKV-6's ``u``).

    Returns:
        o [B, T, H, V] in q's dtype, final state [N, H, K, V] (float32; float64 for float64
        inputs) or None unless ``output_final_state``.
    """
    check_gated_inputs(name, q, k, v, g, initial_state, resets, cu_seqlens)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    chosen = resolve_impl(impl, q)
    if chosen == "triton":
        return triton_impl(q, k, v, g, scale=scale, initial_state=initial_state,
                           output_final_state=output_final_state, resets=resets,
                           cu_seqlens=cu_seqlens, **op_args)
    fn = batch_impls[chosen]
    if cu_seqlens is None:
        o, final_state = fn(q, k, v, g, scale, initial_state, resets, **op_args)
    else:
        padded_resets = None if resets is None else pad_varlen(resets, cu_seqlens, False)
        o, final_state = run_varlen(fn, (q, k, v, g), (0.0, 0.0, 0.0, 0.0), cu_seqlens, scale=scale,
                                    initial_state=initial_state, resets=padded_resets, **op_args)
    return o, final_state if output_final_state else None


@autocast_off
def gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    resets: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated linear attention (fla's ``chunk_gla`` convention)::

        S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T        S_t: [K, V] per (batch, head)
        o_t = scale * S_t^T q_t

    HGRN2 uses it with q = the output-side query, k = 1 - forget gate, g = log forget gate.

    Args:
        q: [B, T, H, K] queries.
        k: [B, T, H, K] keys.
        v: [B, T, H, V] values.
        g: [B, T, H, K] log decays, g <= 0 (e.g. ``F.logsigmoid(x)``); any finite value down to
            -20 and below is handled stably.
        scale: multiplies q; default K ** -0.5.
        initial_state: [N, H, K, V] state before token 0 (N = B, or the number of sequences with
            ``cu_seqlens``); None means zeros. Any float dtype (accumulated in float32).
        output_final_state: also return the state after the last token.
        resets: [B, T] bool, True where a document starts: the carried state is dropped before
            that token (``resets[:, 0]`` drops ``initial_state``).
        cu_seqlens: [N + 1] int boundaries of N sequences packed in one row (B must be 1).
        impl: "auto" | "naive" | "chunk" | "triton" (see :mod:`recurlm.kernels.dispatch`).

    Returns:
        o: [B, T, H, V] in q's dtype.
        final_state: [N, H, K, V] float32 (float64 for float64 inputs), or None.

    Example (varlen)::

        >>> q, k, g = (torch.randn(1, 10, 2, 8) for _ in range(3))
        >>> g, v = torch.nn.functional.logsigmoid(g), torch.randn(1, 10, 2, 4)
        >>> cu_seqlens = torch.tensor([0, 3, 10])
        >>> o, ht = gla(q, k, v, g, output_final_state=True, cu_seqlens=cu_seqlens)
        >>> o.shape, ht.shape
        (torch.Size([1, 10, 2, 4]), torch.Size([2, 2, 8, 4]))
    """
    return dispatch_gated("gla", impl, {"naive": naive_gla, "chunk": chunk_gla}, triton_gla,
                          q, k, v, g, scale, initial_state, output_final_state, resets, cu_seqlens)


def flops(batch: int, seq_len: int, heads: int, head_dim: int, value_dim: int | None = None,
          chunk_size: int = CHUNK_SIZE) -> int:
    """Forward matmul FLOPs of the chunkwise form (2 per multiply-add).

    Per token and head: intra-chunk weights q k^T and their product with v over a chunk
    (2 C (K + V)), plus the inter-chunk state read q S and state update k^T v (2 * 2 K V).
    """
    value_dim = head_dim if value_dim is None else value_dim
    per_token = 2 * chunk_size * (head_dim + value_dim) + 4 * head_dim * value_dim
    return batch * heads * seq_len * per_token
