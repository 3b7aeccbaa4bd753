"""sLSTM for large heads: per token, a batched GEMM for the recurrent matmul and a fused Triton cell.

The fused kernel of ``recurlm.kernels.slstm.triton`` keeps a head's recurrent weights R[h]
(D x 4D) and, in the backward, their gradient on chip; that stops fitting registers and shared
memory as D grows (``FUSED_MAX_HEAD_DIM``). Here the recurrent matmul of every head runs as one
batched GEMM per token (``torch.bmm`` over heads: [H, B, D] x [H, D, 4D], on tensor cores, any D),
and the pointwise cell of that token is one Triton kernel over (batch * head, blocks of D):

    forward, token t:   raw_t = x_t + bias + R^T h_{t-1}      (bmm; h_{t-1} = 0 after a reset)
                        (c, n, m, h)_t = cell(raw_t, (c, n, m)_{t-1})        (_step_fwd_kernel)
    backward, token t:  draw_t, d(c, n, m)_{t-1} = cell adjoint               (_step_bwd_kernel)
                        dh_{t-1} = R draw_t                   (bmm; 0 across a reset)
    after the walk:     dR = sum_t h_{t-1} draw_t^T           (one einsum over all tokens)

The cell math is the fused kernel's (``_cell_forward`` / ``_cell_backward``), so both paths compute
the same recurrence; the cost is two launches per token and direction, and the states written to
global memory every token (which the fused kernel writes as well, for the backward).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from recurlm.kernels.slstm.triton import (_cell_backward, _cell_forward, _discard_state, _load_gates, _load_state,
                                          _store_gates, _store_state, backward_cotangents, outputs, state_buffers)

BLOCK_MAX = 256
"""Units of a head per program of the cell kernels (fewer for smaller heads)."""


@triton.jit
def _step_offsets(t, T, H: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr):
    """Program (batch * head, unit block) -> batch row, unit offsets and mask, the offset of
    (c, n, m, h)_{t-1} in [B, T + 1, H, D] and of token t's first gate in [B, T, 4, H, D]."""
    i_bh = tl.program_id(0)
    i_b, i_h = i_bh // H, i_bh % H
    od = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = od < D
    return i_bh, i_b, od, mask, ((i_b * (T + 1) + t) * H + i_h) * D + od, ((i_b * T + t) * 4 * H + i_h) * D + od


@triton.jit(do_not_specialize=["t"])
def _step_fwd_kernel(raw, resets, c_seq, n_seq, m_seq, h_seq, t, T,
                     H: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr, HAS_RESETS: tl.constexpr):
    i_bh, i_b, od, mask, prev, gates = _step_offsets(t, T, H, D, BLOCK)
    c, n, m, h = _load_state(c_seq, n_seq, m_seq, h_seq, prev, mask)
    if HAS_RESETS:
        c, n, m, h, _ = _discard_state(resets, i_b * T + t, c, n, m, h)
    i_raw, f_raw, z_raw, o_raw = _load_gates(raw, gates, mask, H * D)
    c, n, m, h = _cell_forward(i_raw, f_raw, z_raw, o_raw, c, n, m)
    _store_state(c_seq, n_seq, m_seq, h_seq, prev + H * D, mask, c, n, m, h)


@triton.jit(do_not_specialize=["t"])
def _step_bwd_kernel(raw, resets, c_seq, n_seq, m_seq, h_seq, dh_seq, final_positions, dcT, dnT, dmT, dhT,
                     dh_rec, dc_carry, dn_carry, dm_carry, draw, t, T,
                     H: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr, HAS_RESETS: tl.constexpr):
    i_bh, i_b, od, mask, prev, gates = _step_offsets(t, T, H, D, BLOCK)
    here = i_bh * D + od                                     # [B, H, D]
    at_final = tl.load(final_positions + i_b) == t
    dc, dn, dm, dh = _load_state(dc_carry, dn_carry, dm_carry, dh_rec, here, mask)
    dc_final, dn_final, dm_final, dh_final = _load_state(dcT, dnT, dmT, dhT, here, mask)
    dc += tl.where(at_final, dc_final, 0.0)
    dn += tl.where(at_final, dn_final, 0.0)
    dm += tl.where(at_final, dm_final, 0.0)
    dh += tl.where(at_final, dh_final, 0.0) + tl.load(dh_seq + (i_b * T + t) * H * D + (i_bh % H) * D + od,
                                                      mask=mask, other=0.0)
    c_prev, n_prev, m_prev, h_prev = _load_state(c_seq, n_seq, m_seq, h_seq, prev, mask)
    if HAS_RESETS:
        c_prev, n_prev, m_prev, h_prev, _ = _discard_state(resets, i_b * T + t, c_prev, n_prev, m_prev, h_prev)
    c, n, m, h = _load_state(c_seq, n_seq, m_seq, h_seq, prev + H * D, mask)
    i_raw, f_raw, z_raw, o_raw = _load_gates(raw, gates, mask, H * D)
    di_raw, df_raw, dz_raw, do_raw, dc, dn, dm = _cell_backward(
        i_raw, f_raw, z_raw, o_raw, c_prev, n_prev, m_prev, c, n, m, h, dc, dn, dm, dh)
    _store_gates(draw, gates, mask, H * D, di_raw, df_raw, dz_raw, do_raw)
    tl.store(dc_carry + here, dc, mask=mask)
    tl.store(dn_carry + here, dn, mask=mask)
    tl.store(dm_carry + here, dm, mask=mask)


def _grid(batch: int, heads: int, dim: int) -> tuple[tuple[int, int], int]:
    block = min(triton.next_power_of_2(dim), BLOCK_MAX)
    return (batch * heads, triton.cdiv(dim, block)), block


def _drop_at_resets(h: torch.Tensor, resets: torch.Tensor | None, t: int) -> torch.Tensor:
    """h [B, H, D] with the rows whose token t starts a document set to 0."""
    return h if resets is None else torch.where(resets[:, t, None, None] != 0, 0.0, h)


class SLSTMStepsFunction(torch.autograd.Function):
    """Same inputs and outputs as the fused ``_SLSTMFunction`` (x holds x + bias, float32)."""

    @staticmethod
    def forward(ctx, x, R, resets, final_positions, has_initial_state, c0, n0, m0, h0):
        batch, seq_len, _, heads, dim = x.shape
        states = state_buffers(x, has_initial_state, c0, n0, m0, h0)
        raw = torch.empty_like(x)
        resets_arg = resets.to(torch.int8) if resets is not None else None
        recurrent = R.reshape(heads, dim, 4 * dim)
        grid, block = _grid(batch, heads, dim)
        for t in range(seq_len):
            h_prev = _drop_at_resets(states[3][:, t], resets_arg, t)
            product = torch.bmm(h_prev.transpose(0, 1), recurrent)               # [H, B, 4D]
            raw[:, t] = x[:, t] + product.view(heads, batch, 4, dim).permute(1, 2, 0, 3)
            _step_fwd_kernel[grid](raw, resets_arg if resets_arg is not None else raw, *states, t, seq_len,
                                   H=heads, D=dim, BLOCK=block, HAS_RESETS=resets is not None)
        ctx.save_for_backward(R, resets_arg, raw, final_positions, *states)
        ctx.has_initial_state = has_initial_state
        return outputs(states, final_positions)

    @staticmethod
    def backward(ctx, dh_seq, *d_final):
        R, resets, raw, final_positions, *states = ctx.saved_tensors
        batch, seq_len, _, heads, dim = raw.shape
        dh_seq, d_final = backward_cotangents(raw, dh_seq, d_final)
        draw = torch.empty_like(raw)
        carries = [raw.new_zeros(batch, heads, dim) for _ in range(3)]            # dc, dn, dm
        dh_rec = raw.new_zeros(batch, heads, dim)
        recurrent_t = R.reshape(heads, dim, 4 * dim).transpose(1, 2)              # [H, 4D, D]
        grid, block = _grid(batch, heads, dim)
        for t in reversed(range(seq_len)):
            _step_bwd_kernel[grid](raw, resets if resets is not None else raw, *states, dh_seq, final_positions,
                                   *d_final, dh_rec, *carries, draw, t, seq_len, H=heads, D=dim, BLOCK=block,
                                   HAS_RESETS=resets is not None)
            draw_t = draw[:, t].permute(2, 0, 1, 3).reshape(heads, batch, 4 * dim)
            dh_rec = _drop_at_resets(torch.bmm(draw_t, recurrent_t).transpose(0, 1).contiguous(), resets, t)
        h_prev = states[3][:, :seq_len]
        if resets is not None:
            h_prev = torch.where(resets[:, :, None, None] != 0, 0.0, h_prev)
        dR = torch.einsum("bthd,btghj->hdgj", h_prev, draw)
        d_state = (*carries, dh_rec) if ctx.has_initial_state else (None,) * 4
        return draw, dR, None, None, None, *d_state
