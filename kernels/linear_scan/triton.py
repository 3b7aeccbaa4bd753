"""Triton kernels for the diagonal gated linear recurrence (CUDA; CPU tests via TRITON_INTERPRET=1).

    h_t = a_t * h_{t-1} + x_t,   a_t = exp(g_t)  (0 where ``resets[b, t]`` starts a document)

The recurrence is independent per channel, so each program owns one batch row and BLOCK_D
channels and walks the sequence: the work is O(T D), memory-bound, and every load is a contiguous
row of BLOCK_D channels. The backward kernel walks the sequence in reverse with the adjoint

    delta_t = dL/dh_t + a_{t+1} delta_{t+1},  delta_{T-1} += dL/dfinal_state,
    dL/dx_t = delta_t,  dL/dg_t = delta_t a_t h_{t-1},  dL/dh_{-1} = a_0 delta_0,

reading the float32 states saved by the forward. States are accumulated in float32; x and g may be
float32, float16 or bfloat16 (float64 is not supported: use impl="chunk").
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_D_MAX = 128


@triton.jit
def _decay(g_ptrs, resets_ptr, reset_offset, mask, HAS_RESETS: tl.constexpr):
    """a_t = exp(g_t) for BLOCK_D channels, exactly 0 if token t starts a document."""
    decay = tl.exp(tl.load(g_ptrs, mask=mask, other=0.0).to(tl.float32))
    if HAS_RESETS:
        decay = tl.where(tl.load(resets_ptr + reset_offset) != 0, 0.0, decay)
    return decay


@triton.jit
def _linear_scan_fwd_kernel(x_ptr, g_ptr, resets_ptr, h0_ptr, h_ptr, seq_len, dim,
                            HAS_RESETS: tl.constexpr, HAS_H0: tl.constexpr, BLOCK_D: tl.constexpr):
    i_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = offs_d < dim
    row = i_b * seq_len * dim + offs_d  # element (i_b, 0, offs_d) of a [B, T, D] tensor
    if HAS_H0:
        h = tl.load(h0_ptr + i_b * dim + offs_d, mask=mask, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BLOCK_D], dtype=tl.float32)
    for t in range(0, seq_len):
        x = tl.load(x_ptr + row + t * dim, mask=mask, other=0.0).to(tl.float32)
        decay = _decay(g_ptr + row + t * dim, resets_ptr, i_b * seq_len + t, mask, HAS_RESETS)
        h = decay * h + x
        tl.store(h_ptr + row + t * dim, h, mask=mask)


@triton.jit
def _linear_scan_bwd_kernel(g_ptr, resets_ptr, h0_ptr, h_ptr, dh_ptr, dfinal_ptr, dx_ptr, dg_ptr,
                            dh0_ptr, seq_len, dim, HAS_RESETS: tl.constexpr, HAS_H0: tl.constexpr,
                            BLOCK_D: tl.constexpr):
    i_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = offs_d < dim
    row = i_b * seq_len * dim + offs_d
    if HAS_H0:
        h0 = tl.load(h0_ptr + i_b * dim + offs_d, mask=mask, other=0.0).to(tl.float32)
    else:
        h0 = tl.zeros([BLOCK_D], dtype=tl.float32)
    # carry = a_{t+1} delta_{t+1}; at the last token it is the final state's gradient
    carry = tl.load(dfinal_ptr + i_b * dim + offs_d, mask=mask, other=0.0).to(tl.float32)
    for i in range(0, seq_len):
        t = seq_len - 1 - i
        delta = tl.load(dh_ptr + row + t * dim, mask=mask, other=0.0).to(tl.float32) + carry
        decay = _decay(g_ptr + row + t * dim, resets_ptr, i_b * seq_len + t, mask, HAS_RESETS)
        has_prev = tl.full([BLOCK_D], t, tl.int32) > 0  # a tensor mask: the interpreter's t is an int
        h_prev = tl.load(h_ptr + row + (t - 1) * dim, mask=mask & has_prev, other=0.0)
        h_prev = tl.where(has_prev, h_prev, h0)
        tl.store(dx_ptr + row + t * dim, delta, mask=mask)
        tl.store(dg_ptr + row + t * dim, delta * decay * h_prev, mask=mask)
        carry = decay * delta
    if HAS_H0:
        tl.store(dh0_ptr + i_b * dim + offs_d, carry, mask=mask)


def _launch_config(batch: int, dim: int) -> tuple[tuple[int, int], int]:
    block_d = min(triton.next_power_of_2(dim), BLOCK_D_MAX)
    return (batch, triton.cdiv(dim, block_d)), block_d


class TritonLinearScan(torch.autograd.Function):
    """Autograd wrapper around the forward and backward scan kernels."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, g: torch.Tensor, h0: torch.Tensor | None,
                resets: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        batch, seq_len, dim = x.shape
        x, g = x.contiguous(), g.contiguous()
        resets_u8 = None if resets is None else resets.to(torch.uint8).contiguous()
        h0 = None if h0 is None else h0.contiguous()
        h = torch.empty(batch, seq_len, dim, dtype=torch.float32, device=x.device)
        grid, block_d = _launch_config(batch, dim)
        _linear_scan_fwd_kernel[grid](x, g, resets_u8, h0, h, seq_len, dim, HAS_RESETS=resets is not None,
                                      HAS_H0=h0 is not None, BLOCK_D=block_d)
        ctx.save_for_backward(g, resets_u8, h0, h)
        ctx.x_dtype = x.dtype
        return h, h[:, -1].clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dh: torch.Tensor, dfinal: torch.Tensor):
        g, resets_u8, h0, h = ctx.saved_tensors
        batch, seq_len, dim = h.shape
        dx = torch.empty(h.shape, dtype=ctx.x_dtype, device=h.device)
        dg = torch.empty_like(g)
        dh0 = None if h0 is None else torch.empty_like(h0)
        grid, block_d = _launch_config(batch, dim)
        _linear_scan_bwd_kernel[grid](g, resets_u8, h0, h, dh.contiguous(), dfinal.contiguous(), dx, dg,
                                      dh0, seq_len, dim, HAS_RESETS=resets_u8 is not None,
                                      HAS_H0=h0 is not None, BLOCK_D=block_d)
        return dx, dg, dh0, None


def triton_linear_scan(x: torch.Tensor, g: torch.Tensor, initial_state: torch.Tensor | None = None,
                       output_final_state: bool = False, resets: torch.Tensor | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x, g [B, T, D] (float32/16, bfloat16); initial_state [B, D]; resets [B, T] bool ->
    (h [B, T, D] in x.dtype, final state [B, D] float32 or None)."""
    if x.dtype == torch.float64 or g.dtype == torch.float64:
        raise TypeError("the Triton linear scan accumulates in float32; use impl='chunk' for float64")
    h0 = None if initial_state is None else initial_state.float()
    h, final_state = TritonLinearScan.apply(x, g, h0, resets)
    return h.to(x.dtype), (final_state if output_final_state else None)
