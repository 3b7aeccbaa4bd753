"""Chunked two-level scan for the diagonal gated linear recurrence: the CPU fast path.

    h_t = a_t * h_{t-1} + x_t,   a_t = exp(g_t)  (0 where a document starts)

Why not the masked decay-matrix form used for matrix-state ops: with a diagonal state the
intra-chunk operator exp(G_t - G_s) is a per-channel [C, C] matrix-vector product, so it costs C
times the FLOPs and memory of the scan itself and offers no matmul to the hardware. The two-level
scan does the same chunkwise split with O(T D) work, no exponent differences and no divisions:

1. intra-chunk: every chunk of C tokens is scanned from a zero state, all chunks in parallel
   (C vectorised steps over [B, T/C, D]); the within-chunk decay products A_t = prod_{s<=t} a_s
   come from ``cumprod`` (products of numbers in [0, 1] only ever underflow to 0, which is exact
   enough: log decays of -20 per token or resets stay finite);
2. inter-chunk: the states entering each chunk are the same recurrence over chunk ends
   (decay A_C, input local_C), solved by recursion; then h_t = local_t + A_t * h_start.

So T = 2048 with C = 64 takes 64 + 32 Python steps instead of 2048. The backward is the same scan
run backwards in time (a custom autograd Function, so no graph of hundreds of small ops is kept):

    delta_t = dL/dh_t + a_{t+1} delta_{t+1}   (delta_{T-1} also gets dL/dfinal_state)
    dL/dx_t = delta_t,  dL/dg_t = delta_t * a_t * h_{t-1},  dL/dh_{-1} = a_0 delta_0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from recurlm.kernels.dispatch import compute_dtype

DEFAULT_CHUNK_SIZE = 64


def _sequential_scan(x: torch.Tensor, a: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + x_t along dim 1, one step per index. x, a [B, T, ...]; h0 [B, ...]."""
    out = torch.empty_like(x)
    h = x[:, 0] if h0 is None else a[:, 0] * h0 + x[:, 0]
    out[:, 0] = h
    for t in range(1, x.shape[1]):
        h = a[:, t] * h + x[:, t]
        out[:, t] = h
    return out


def scan(x: torch.Tensor, a: torch.Tensor, h0: torch.Tensor | None, chunk_size: int) -> torch.Tensor:
    """Two-level chunked scan of h_t = a_t * h_{t-1} + x_t (no autograd of its own).

    x, a [B, T, D] (a = decays, already exp'd and reset-masked); h0 [B, D] or None -> h [B, T, D].
    """
    batch, seq_len, dim = x.shape
    if seq_len <= chunk_size:
        return _sequential_scan(x, a, h0)
    num_chunks = -(-seq_len // chunk_size)
    pad = num_chunks * chunk_size - seq_len
    # padded steps are identities (a = 1, x = 0) and are cut off at the end
    x = F.pad(x, (0, 0, 0, pad)).reshape(batch, num_chunks, chunk_size, dim)
    a = F.pad(a, (0, 0, 0, pad), value=1.0).reshape(batch, num_chunks, chunk_size, dim)
    local = _sequential_scan(x.transpose(1, 2), a.transpose(1, 2), None).transpose(1, 2)
    decay = a.cumprod(dim=2)  # [B, n, C, D]: product of decays from the chunk start to t
    chunk_ends = scan(local[:, :, -1], decay[:, :, -1], h0, chunk_size)  # [B, n, D]
    first = x.new_zeros(batch, 1, dim) if h0 is None else h0[:, None]
    chunk_starts = torch.cat([first, chunk_ends[:, :-1]], dim=1)
    h = local + decay * chunk_starts[:, :, None]
    return h.view(batch, num_chunks * chunk_size, dim)[:, :seq_len]


def decays(g: torch.Tensor, resets: torch.Tensor | None) -> torch.Tensor:
    """a = exp(g) [B, T, D], exactly 0 where ``resets`` [B, T] marks a document start."""
    a = g.exp()
    return a if resets is None else a.masked_fill(resets[..., None], 0.0)


class ChunkLinearScan(torch.autograd.Function):
    """Autograd wrapper: forward = chunked scan, backward = chunked scan backwards in time."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, g: torch.Tensor, h0: torch.Tensor | None,
                resets: torch.Tensor | None, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        a = decays(g, resets)
        h = scan(x, a, h0, chunk_size)
        ctx.save_for_backward(a, h, h0)
        ctx.chunk_size = chunk_size
        return h, h[:, -1].clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dh: torch.Tensor, dfinal: torch.Tensor):
        a, h, h0 = ctx.saved_tensors
        dh = dh.clone()
        dh[:, -1] += dfinal
        a_next = F.pad(a[:, 1:], (0, 0, 0, 1))  # a_{t+1}; nothing flows back past the end
        delta = scan(dh.flip(1), a_next.flip(1), None, ctx.chunk_size).flip(1)
        h_prev = F.pad(h[:, :-1], (0, 0, 1, 0)) if h0 is None else torch.cat([h0[:, None], h[:, :-1]], 1)
        dg = delta * a * h_prev
        dh0 = None if h0 is None else a[:, 0] * delta[:, 0]
        return delta, dg, dh0, None, None


def chunk_linear_scan(x: torch.Tensor, g: torch.Tensor, initial_state: torch.Tensor | None = None,
                      output_final_state: bool = False, resets: torch.Tensor | None = None,
                      chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x, g [B, T, D]; initial_state [B, D]; resets [B, T] bool -> (h [B, T, D] in x.dtype,
    final state [B, D] in the compute dtype (float32, float64 for float64 inputs) or None)."""
    if chunk_size < 2:
        raise ValueError(f"chunk_size must be >= 2, got {chunk_size}")
    dtype = compute_dtype(x.dtype)
    h0 = None if initial_state is None else initial_state.to(dtype)
    h, final_state = ChunkLinearScan.apply(x.to(dtype), g.to(dtype), h0, resets, chunk_size)
    return h.to(x.dtype), (final_state if output_final_state else None)
