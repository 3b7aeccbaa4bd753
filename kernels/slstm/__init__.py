"""xLSTM's scalar LSTM with exponential gating (sLSTM): ``slstm``."""
from __future__ import annotations

import torch

from recurlm.kernels.dispatch import autocast_off, check_boundaries, pad_varlen, resolve_impl, unpad_varlen
from recurlm.kernels.slstm.chunk import chunk_slstm
from recurlm.kernels.slstm.naive import naive_slstm
from recurlm.kernels.slstm.state import SLSTMState

__all__ = ["slstm", "SLSTMState"]


def _check_inputs(x: torch.Tensor, R: torch.Tensor, bias: torch.Tensor | None,
                  resets: torch.Tensor | None, cu_seqlens: torch.Tensor | None) -> None:
    if x.dim() != 5 or x.shape[1] == 0 or x.shape[2] != 4:
        raise ValueError(f"x must be [B, T, 4, H, D] with T >= 1, got {tuple(x.shape)}")
    batch, seq_len, _, heads, dim = x.shape
    if R.shape != (heads, dim, 4, dim):
        raise ValueError(f"R must be [H, D, 4, D] = {(heads, dim, 4, dim)}, got {tuple(R.shape)}")
    if bias is not None and bias.shape != (4, heads, dim):
        raise ValueError(f"bias must be [4, H, D] = {(4, heads, dim)}, got {tuple(bias.shape)}")
    check_boundaries(batch, seq_len, resets, cu_seqlens)


@autocast_off
def slstm(x: torch.Tensor, R: torch.Tensor, bias: torch.Tensor | None = None,
          initial_state: SLSTMState | tuple[torch.Tensor, ...] | None = None,
          output_final_state: bool = False, resets: torch.Tensor | None = None,
          cu_seqlens: torch.Tensor | None = None, impl: str = "auto",
          ) -> tuple[torch.Tensor, SLSTMState | None]:
    """sLSTM: scalar LSTM with exponential input gate, normaliser and stabiliser, per-head
    (block-diagonal) recurrent weights. Matches xLSTM's ``sLSTMCell`` with ``backend="vanilla"``.

    Per head, with (i, f, z, o)_t = x_t + bias + R^T h_{t-1} (each [D]):

        m_t = max(i_t, logsigmoid(f_t) + m_{t-1})        (m_t = i_t for a fresh state)
        i'_t = exp(i_t - m_t),  f'_t = exp(logsigmoid(f_t) + m_{t-1} - m_t)
        c_t = f'_t c_{t-1} + i'_t tanh(z_t),   n_t = f'_t n_{t-1} + i'_t
        h_t = sigmoid(o_t) c_t / n_t

    A fresh state (token 0 without ``initial_state``, or a reset) has h_{t-1} = 0 and f'_t = 0.

    Args:
        x: [B, T, 4, H, D] input preactivations in gate order (i, f, z, o) (xLSTM's cell input
            [B, T, 4 * H * D] viewed as [B, T, 4, H, D]). float32, bfloat16, float16 or float64.
        R: [H, D, 4, D] recurrent weights, R[h, d, g, j] from input unit d to gate g's unit j
            (xLSTM's ``sLSTMCell.recurrent_kernel``).
        bias: [4, H, D] or None (xLSTM's ``sLSTMCell.bias`` [H, 4, D] permuted by (1, 0, 2)).
        initial_state: ``SLSTMState(c, n, m, h)``, each [B, H, D] ([N, H, D] with cu_seqlens).
        output_final_state: also return the state after the last token.
        resets: [B, T] bool, True where a document starts (the incoming state is discarded).
        cu_seqlens: [N + 1] offsets of N sequences packed in one row (B = 1). Example: x
            [1, 7, 4, H, D], cu_seqlens = [0, 3, 7] -> final states [2, H, D] (after tokens 2, 6).
        impl: "auto" (Triton on CUDA, chunk elsewhere), "naive", "chunk" or "triton". The Triton
            path is the fused kernel for head dims up to 64 and, above (xLSTM 125m and up), a
            per-token batched GEMM plus a Triton cell kernel (``recurlm.kernels.slstm.triton``).

    Returns:
        h [B, T, H, D] in x.dtype, and ``SLSTMState`` in float32 (float64 for float64 inputs) if
        ``output_final_state`` else None. Differentiable in x, R, bias and initial_state.
    """
    _check_inputs(x, R, bias, resets, cu_seqlens)
    impl = resolve_impl(impl, x)
    if impl == "triton":
        from recurlm.kernels.slstm.triton import triton_slstm as fn
    else:
        fn = naive_slstm if impl == "naive" else chunk_slstm
    if bias is None:
        bias = x.new_zeros(4, *x.shape[3:])
    if initial_state is not None:
        initial_state = SLSTMState(*initial_state)
    if cu_seqlens is None:
        return fn(x, R, bias, initial_state, output_final_state, resets)
    # one padded row per sequence; each final state is read at its sequence's last token
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    h, final_state = fn(pad_varlen(x, cu_seqlens), R, bias, initial_state, output_final_state,
                        final_positions=lengths.long() - 1)
    return unpad_varlen(h, cu_seqlens), final_state


def flops(batch: int, seq_len: int, heads: int, dim: int) -> int:
    """Forward FLOPs: the recurrent matmul (2 * D * 4 D per head and token) plus about 20 pointwise
    operations per unit and token (gates, stabiliser, cell, normaliser, output)."""
    return batch * seq_len * heads * (2 * dim * 4 * dim + 20 * dim)
