"""Generalized delta rule with a diagonal-plus-low-rank transition (the op behind RWKV-7).

Per batch row and head, with the state S of shape [K, V] (flash-linear-attention's
``chunk_dplr_delta_rule`` conventions: same layout, state orientation and default scale):

    S_t = (diag(exp(gk_t)) + b_t a_t^T) S_{t-1} + k_t v_t^T
    o_t = S_t^T (scale * q_t)

i.e. S_t = diag(e^{gk_t}) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T: the low-rank term reads the
undecayed previous state. RWKV-7 uses a = -kk (L2-normalised key), b = kk * iclr (in-context
learning rate, a vector in (0, 1)), gk = log decay in (-e^{-0.5}, 0).

Implementations: ``naive`` (sequential, ``naive.py``), ``chunk`` (chunkwise WY form, ``chunk.py``,
the CPU path), ``triton`` (fla's Triton kernels, ``triton.py``); ``auto`` picks Triton on CUDA.

Varlen example (two sequences of lengths 3 and 5 flattened into one row)::

    cu_seqlens = torch.tensor([0, 3, 8])
    q, k, a, b, gk = (torch.randn(1, 8, H, K) for _ in range(5)); v = torch.randn(1, 8, H, V)
    o, s = dplr_delta_rule(q, k, v, a, b, -gk.sigmoid(), initial_state=torch.zeros(2, H, K, V),
                           output_final_state=True, cu_seqlens=cu_seqlens)
    # o: [1, 8, H, V]; s: [2, H, K, V], the final state of each sequence
"""
from __future__ import annotations

import torch

from recurlm.kernels.dispatch import autocast_off, pad_varlen, resolve_impl, run_varlen
from recurlm.kernels.dplr_delta_rule.chunk import chunk_dplr_delta_rule
from recurlm.kernels.dplr_delta_rule.naive import naive_dplr_delta_rule, dplr_step as _dplr_step

dplr_step = autocast_off(_dplr_step)
"""One token of the recurrence (decoding), outside autocast like every op: see ``naive.dplr_step``."""

__all__ = ["dplr_delta_rule", "dplr_step"]


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: torch.Tensor,
                  b: torch.Tensor, gk: torch.Tensor, initial_state: torch.Tensor | None,
                  resets: torch.Tensor | None, cu_seqlens: torch.Tensor | None) -> None:
    """Raise ValueError on inconsistent shapes or dtypes (messages name the offending tensor)."""
    if q.dim() != 4:
        raise ValueError(f"q must be [B, T, H, K], got shape {tuple(q.shape)}")
    for name, x in (("k", k), ("a", a), ("b", b), ("gk", gk)):
        if x.shape != q.shape:
            raise ValueError(f"{name} must have q's shape {tuple(q.shape)}, got {tuple(x.shape)}")
    batch, seq_len, heads, dk = q.shape
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, T, H, V] = [{batch}, {seq_len}, {heads}, V], got {tuple(v.shape)}")
    if seq_len == 0:
        raise ValueError("the sequence length must be at least 1")
    for name, x in (("q", q), ("k", k), ("v", v), ("a", a), ("b", b), ("gk", gk)):
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if resets is not None and (resets.dtype != torch.bool or resets.shape != (batch, seq_len)):
        raise ValueError(f"resets must be a bool tensor [{batch}, {seq_len}], got {resets.dtype} "
                         f"{tuple(resets.shape)}")
    n_states = batch
    if cu_seqlens is not None:
        if batch != 1:
            raise ValueError(f"with cu_seqlens the batch size must be 1, got {batch}")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens[0] != 0 \
                or cu_seqlens[-1] != seq_len or bool((cu_seqlens[1:] <= cu_seqlens[:-1]).any()):
            raise ValueError(f"cu_seqlens must increase strictly from 0 to T={seq_len}, got {cu_seqlens.tolist()}")
        n_states = cu_seqlens.numel() - 1
    if initial_state is not None and initial_state.shape != (n_states, heads, dk, v.shape[-1]):
        raise ValueError(f"initial_state must be [{n_states}, {heads}, {dk}, {v.shape[-1]}], "
                         f"got {tuple(initial_state.shape)}")


@autocast_off
def dplr_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    gk: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    resets: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    impl: str = "auto",
    gk_lower_bound: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Generalized (diagonal-plus-low-rank) delta rule; math in the module docstring.

    Args:
        q, k, a, b: [B, T, H, K].
        v: [B, T, H, V].
        gk: [B, T, H, K] log decay, finite (resets go through ``resets``); <= 0 keeps the chunkwise
            form stable for any magnitude (tested down to -20).
        scale: multiplies q; default K ** -0.5 (as fla).
        initial_state: [N, H, K, V] with N = B, or the number of sequences with cu_seqlens.
        output_final_state: also return the final state.
        resets: [B, T] bool; True where a document starts: the state entering that token is zeroed
            (``resets[:, 0]`` discards ``initial_state``).
        cu_seqlens: [N + 1] int offsets of N sequences flattened into one row (B == 1).
        impl: "auto" | "naive" | "chunk" | "triton" (see ``recurlm.kernels.dispatch``).
        gk_lower_bound: the caller's guarantee that ``gk_lower_bound <= gk < 0`` everywhere (RWKV-7:
            -e^-0.5), or None. The Triton path hands it to fla (``lower_bound``, and ``safe_gate``
            for bounds within fla's safe range [-5, 0)): fla's tensor-core scheme with chunks of 64
            instead of 16. Checked on CPU tensors (ValueError); not on CUDA, where the check would
            be a host sync per call.

    Returns:
        o: [B, T, H, V] in q's dtype.
        final_state: [N, H, K, V] (float32; float64 for float64 inputs) or None.
    """
    _check_inputs(q, k, v, a, b, gk, initial_state, resets, cu_seqlens)
    if gk_lower_bound is not None:
        if gk_lower_bound >= 0:
            raise ValueError(f"gk_lower_bound must be negative (gk is a log decay), got {gk_lower_bound}")
        if not gk.is_cuda and bool((gk < gk_lower_bound).any()):
            raise ValueError(f"gk goes below gk_lower_bound={gk_lower_bound}: min {gk.min().item():.4g}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    impl = resolve_impl(impl, q)
    if impl == "triton":
        # imports triton and fla only when used
        from recurlm.kernels.dplr_delta_rule.triton import triton_dplr_delta_rule

        return triton_dplr_delta_rule(q, k, v, a, b, gk, scale=scale, initial_state=initial_state,
                           output_final_state=output_final_state, resets=resets, cu_seqlens=cu_seqlens,
                           gk_lower_bound=gk_lower_bound)
    op = chunk_dplr_delta_rule if impl == "chunk" else naive_dplr_delta_rule
    if cu_seqlens is None:
        return op(q, k, v, a, b, gk, scale=scale, initial_state=initial_state,
                  output_final_state=output_final_state, resets=resets)
    # Zero-padded steps (k = v = a = b = 0, gk = 0) are identities, so each padded row ends in the
    # final state of its sequence.
    padded_resets = None if resets is None else pad_varlen(resets, cu_seqlens, False)
    return run_varlen(op, (q, k, v, a, b, gk), (0.0,) * 6, cu_seqlens, scale=scale,
                      initial_state=initial_state, output_final_state=output_final_state,
                      resets=padded_resets)


def flops(batch: int, seq_len: int, heads: int, dk: int, dv: int, chunk_size: int = 64,
          sub_chunk_size: int = 4) -> int:
    """Forward FLOPs (a multiply-add counts 2) of the chunkwise form in ``chunk.py`` on its factored
    path (every RWKV-7 input; the blockwise path for stronger decays does about half the product
    work in smaller matmuls).

    Per chunk of C tokens (chunk_size, or less for short inputs: sub_chunk_size times the smallest
    power of two reaching T) and head:
    decayed products of two readers (q, a) by two writers (k, b) 8*C^2*K, A_ak v 2*C^2*V, the
    unit-triangular solve C^2*(V + K), outputs 4*C^2*V + 2*C^2*K + 2*C*K*V, transition and write
    2*C*K^2 + 4*C*K*V, recurrence 2*K^2*V. Elementwise work (exps, masks) is not counted.
    """
    c = sub_chunk_size
    while c < min(chunk_size, seq_len):
        c *= 2
    n_chunks = -(-seq_len // c)
    per_chunk = (8 * c * c * dk + 2 * c * c * dv + c * c * (dv + dk)
                 + 4 * c * c * dv + 2 * c * c * dk + 2 * c * dk * dv
                 + 2 * c * dk * dk + 4 * c * dk * dv + 2 * dk * dk * dv)
    return batch * heads * n_chunks * per_chunk
