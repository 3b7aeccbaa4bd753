"""xLSTM's matrix-memory LSTM (mLSTM): ``mlstm``."""
from __future__ import annotations

from functools import partial

import torch

from recurlm.kernels.dispatch import autocast_off, check_boundaries, resolve_impl, run_varlen
from recurlm.kernels.mlstm.chunk import chunk_mlstm
from recurlm.kernels.mlstm.naive import naive_mlstm
from recurlm.kernels.mlstm.state import MLSTMState

__all__ = ["mlstm", "MLSTMState"]


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: torch.Tensor, f: torch.Tensor,
                  resets: torch.Tensor | None, cu_seqlens: torch.Tensor | None) -> None:
    if q.dim() != 4 or q.shape[1] == 0:
        raise ValueError(f"q must be [B, T, H, K] with T >= 1, got {tuple(q.shape)}")
    batch, seq_len, heads, _ = q.shape
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, T, H, V] = [{batch}, {seq_len}, {heads}, V], got {tuple(v.shape)}")
    for name, gate in (("i", i), ("f", f)):
        if gate.shape != q.shape[:3]:
            raise ValueError(f"{name} must be [B, T, H] = {tuple(q.shape[:3])}, got {tuple(gate.shape)}")
    check_boundaries(batch, seq_len, resets, cu_seqlens)


@autocast_off
def mlstm(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: torch.Tensor, f: torch.Tensor,
          initial_state: MLSTMState | tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
          output_final_state: bool = False, resets: torch.Tensor | None = None,
          cu_seqlens: torch.Tensor | None = None, impl: str = "auto", eps: float = 1e-6,
          ) -> tuple[torch.Tensor, MLSTMState | None]:
    """mLSTM with exponential input gate, sigmoid forget gate and max-stabilised state.

    Per head, with lf_t = logsigmoid(f_t) and q scaled by K^-1/2 (as ``mlstm_kernels``):

        m_t = max(lf_t + m_{t-1}, i_t)                                 (stabiliser, log scale)
        C_t = exp(lf_t + m_{t-1} - m_t) C_{t-1} + exp(i_t - m_t) k_t v_t^T     [K, V]
        n_t = exp(lf_t + m_{t-1} - m_t) n_{t-1} + exp(i_t - m_t) k_t           [K]
        h_t = (C_t^T q_t) / (max(|n_t . q_t|, exp(-m_t)) + eps)                [V]

    This is ``mlstm_kernels``' native recurrent step (and its chunkwise kernel) exactly, with the
    same fresh state C = 0, n = 0, m = 0. (Its parallel kernel omits the fresh state's m = 0 from
    the stabiliser, which only moves the eps term.) A document reset at token t replaces the state
    entering t by the fresh state, so a packed row equals its documents run alone.

    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V]; i, f: [B, T, H] input and forget gate
            preactivations. float32, bfloat16, float16 or float64.
        initial_state: ``MLSTMState(C [B, H, K, V], n [B, H, K], m [B, H])`` ([N, ...] with
            cu_seqlens), e.g. the final state of the previous window.
        output_final_state: also return the state after the last token.
        resets: [B, T] bool, True where a document starts (discards the incoming state).
        cu_seqlens: [N + 1] offsets of N sequences packed in one row (B = 1). Example: q [1, 7, H, K],
            cu_seqlens = [0, 3, 7] -> final state with leading dim 2 (after tokens 2 and 6).
        impl: "auto" (Triton on CUDA, chunk elsewhere), "naive", "chunk" or "triton".
        eps: added to the denominator.

    Returns:
        h [B, T, H, V] in q.dtype, and ``MLSTMState`` in float32 (float64 for float64 inputs) if
        ``output_final_state`` else None. Differentiable in all inputs including initial_state.
    """
    _check_inputs(q, k, v, i, f, resets, cu_seqlens)
    impl = resolve_impl(impl, q)
    if impl == "triton":
        from recurlm.kernels.mlstm.triton import triton_mlstm as fn
    else:
        fn = naive_mlstm if impl == "naive" else chunk_mlstm
    fn = partial(fn, eps=eps)
    if initial_state is not None:
        initial_state = MLSTMState(*initial_state)
    if cu_seqlens is None:
        return fn(q, k, v, i, f, initial_state=initial_state, output_final_state=output_final_state,
                  resets=resets)
    # padded steps with k = v = 0, i = -inf and f = +inf (logsigmoid 0) leave the state unchanged
    inf = float("inf")
    return run_varlen(fn, [q, k, v, i, f], [0.0, 0.0, 0.0, -inf, inf], cu_seqlens,
                      initial_state=initial_state, output_final_state=output_final_state)


def flops(batch: int, seq_len: int, heads: int, dk: int, dv: int | None = None,
          chunk_size: int = 64) -> int:
    """Forward FLOPs of the chunkwise form (matmuls only, 2 per multiply-add): per chunk of L tokens
    the scores q k^T (L L K), scores @ v (L L V), the inter-chunk read q C (L K V) and the state
    update k^T v (L K V)."""
    dv = dk if dv is None else dv
    L = min(chunk_size, seq_len)
    per_token = L * dk + L * dv + 2 * dk * dv
    return 2 * batch * heads * seq_len * per_token
