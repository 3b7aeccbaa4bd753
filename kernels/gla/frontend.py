"""Argument checking and implementation dispatch shared by the per-key-channel gated ops.

``gla`` and ``rwkv6`` take the same token inputs (q/r, k, v [B, T, H, *] and a log decay g/w
[B, T, H, K]) and the same state arguments; this module validates them once and routes the call to
the naive, chunk or triton implementation (``impl``, see :mod:`recurlm.kernels.dispatch`).

The naive and chunk implementations are *batch* functions
``fn(q, k, v, g, scale, initial_state, resets, **op_args) -> (o, final_state)``; ``cu_seqlens``
reaches them through identity padding (k = 0, g = 0 leave the state unchanged). The triton
implementation takes every argument itself (fla is natively varlen).
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch

from recurlm.kernels.dispatch import pad_varlen, resolve_impl, run_varlen

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
