"""sLSTM in Triton: forward and backward, exact gradients, two paths chosen by head dim.

- head dim <= ``FUSED_MAX_HEAD_DIM`` (64): the fused kernel below (FlashRNN-style);
- larger heads (xLSTM 125m and up: 192-640): ``recurlm.kernels.slstm.triton_steps``, a batched
  GEMM per token for the recurrent matmul and a Triton kernel for the cell; it runs at any head dim.
``impl="auto"`` on CUDA takes ``triton_slstm``, hence this choice. Why the fused kernel stops at 64:
its backward holds eight [D, D] tiles per program (``recurlm-doctor compile``, docs/gpu.md).

Fused kernel: one program per (batch row, head) loads that head's recurrent weights R[h] (four [D, D] gate
blocks) on chip once and walks the sequence; each step is four on-chip matrix-vector products
plus the pointwise cell. The forward saves the gate preactivations and the states (c, n, m, h)
of every token (index 0 holds the initial state); the backward walks back with the explicit step
adjoint of ``recurlm.kernels.slstm.chunk`` and accumulates dR[h] on chip, one partial per batch
row (summed by the caller, so the result is deterministic).

A fresh state (no initial state, or a reset) is c = n = h = 0 with m = -inf: then
m_t = max(i_t, logsigmoid(f_t) - inf) = i_t and f'_t = 0 exactly, without special cases.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from recurlm.kernels.slstm.state import SLSTMState, initial_slstm_state


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    return 2.0 * _sigmoid(2.0 * x) - 1.0


@triton.jit
def _load_gates(ptr, offsets, mask, gate_stride):
    """The four gate vectors (i, f, z, o) at ``offsets`` of a [B, T, 4, H, D] tensor."""
    return (tl.load(ptr + offsets, mask=mask, other=0.0),
            tl.load(ptr + offsets + gate_stride, mask=mask, other=0.0),
            tl.load(ptr + offsets + 2 * gate_stride, mask=mask, other=0.0),
            tl.load(ptr + offsets + 3 * gate_stride, mask=mask, other=0.0))


@triton.jit
def _store_gates(ptr, offsets, mask, gate_stride, g_i, g_f, g_z, g_o):
    """Store four gate vectors (i, f, z, o) at ``offsets`` of a [B, T, 4, H, D] tensor."""
    tl.store(ptr + offsets, g_i, mask=mask)
    tl.store(ptr + offsets + gate_stride, g_f, mask=mask)
    tl.store(ptr + offsets + 2 * gate_stride, g_z, mask=mask)
    tl.store(ptr + offsets + 3 * gate_stride, g_o, mask=mask)


@triton.jit
def _load_gate_blocks(R, i_h, od, mask_dd, D: tl.constexpr):
    """R [H, D, 4, D] -> the four [D, D] blocks R[i_h, :, g, :] (rows: input unit d)."""
    base = R + i_h * D * 4 * D + od[:, None] * 4 * D + od[None, :]
    return (tl.load(base, mask=mask_dd, other=0.0), tl.load(base + D, mask=mask_dd, other=0.0),
            tl.load(base + 2 * D, mask=mask_dd, other=0.0), tl.load(base + 3 * D, mask=mask_dd, other=0.0))


@triton.jit
def _program_head(H: tl.constexpr, D: tl.constexpr, BD: tl.constexpr):
    """Program (batch * head) -> batch row, head, unit offsets [BD] and masks [BD], [BD, BD]."""
    i_bh = tl.program_id(0)
    od = tl.arange(0, BD)
    mask_d = od < D
    return i_bh, i_bh // H, i_bh % H, od, mask_d, mask_d[:, None] & mask_d[None, :]


@triton.jit
def _load_state(c_ptr, n_ptr, m_ptr, h_ptr, offsets, mask):
    """(c, n, m, h) vectors at ``offsets`` (padded lanes: n = 1, the rest 0, so they stay finite)."""
    return (tl.load(c_ptr + offsets, mask=mask, other=0.0), tl.load(n_ptr + offsets, mask=mask, other=1.0),
            tl.load(m_ptr + offsets, mask=mask, other=0.0), tl.load(h_ptr + offsets, mask=mask, other=0.0))


@triton.jit
def _discard_state(resets, reset_index, c, n, m, h):
    """The fresh state (c = n = h = 0, m = -inf) where a document starts at ``reset_index``."""
    fresh = tl.load(resets + reset_index) != 0
    return (tl.where(fresh, 0.0, c), tl.where(fresh, 0.0, n), tl.where(fresh, float("-inf"), m),
            tl.where(fresh, 0.0, h), fresh)


@triton.jit
def _store_state(c_ptr, n_ptr, m_ptr, h_ptr, offsets, mask, c, n, m, h):
    tl.store(c_ptr + offsets, c, mask=mask)
    tl.store(n_ptr + offsets, n, mask=mask)
    tl.store(m_ptr + offsets, m, mask=mask)
    tl.store(h_ptr + offsets, h, mask=mask)


@triton.jit
def _cell_forward(i_raw, f_raw, z_raw, o_raw, c, n, m):
    """One sLSTM cell step from the gate preactivations (recurrent part included) -> (c, n, m, h)."""
    log_f_plus_m = tl.minimum(f_raw, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(f_raw))) + m
    m = tl.maximum(i_raw, log_f_plus_m)
    i_gate = tl.exp(i_raw - m)
    f_gate = tl.exp(log_f_plus_m - m)
    c = f_gate * c + i_gate * _tanh(z_raw)
    n = f_gate * n + i_gate
    return c, n, m, _sigmoid(o_raw) * c / n


@triton.jit
def _cell_backward(i_raw, f_raw, z_raw, o_raw, c_prev, n_prev, m_prev, c, n, m, h, dc, dn, dm, dh):
    """Adjoint of ``_cell_forward`` (the step adjoint of ``recurlm.kernels.slstm.chunk``).

    dc, dn, dm: gradients reaching the step's state from later steps; dh: the total gradient of
    h_t. Returns the preactivation gradients (di, df, dz, do) and the gradients carried to
    (c, n, m)_{t-1}; the one to h_{t-1} is R times the preactivation gradients (the caller's)."""
    log_f_plus_m = tl.minimum(f_raw, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(f_raw))) + m_prev
    i_gate = tl.exp(i_raw - m)
    f_gate = tl.exp(log_f_plus_m - m)
    z = _tanh(z_raw)
    o = _sigmoid(o_raw)
    do_raw = dh * c / n * o * (1.0 - o)
    dc += dh * o / n
    dn -= dh * h / n
    df_gate = (dc * c_prev + dn * n_prev) * f_gate
    di_gate = (dc * z + dn) * i_gate
    dm = dm - df_gate - di_gate
    i_wins = i_raw >= log_f_plus_m
    di_raw = di_gate + tl.where(i_wins, dm, 0.0)
    d_log_f_plus_m = df_gate + tl.where(i_wins, 0.0, dm)
    df_raw = d_log_f_plus_m * _sigmoid(-f_raw)
    dz_raw = dc * i_gate * (1.0 - z * z)
    return di_raw, df_raw, dz_raw, do_raw, dc * f_gate, dn * f_gate, d_log_f_plus_m


@triton.jit
def _slstm_fwd_kernel(x, R, resets, raw, c_seq, n_seq, m_seq, h_seq, T,
                      H: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, HAS_RESETS: tl.constexpr):
    i_bh, i_b, i_h, od, mask_d, mask_dd = _program_head(H, D, BD)
    R_i, R_f, R_z, R_o = _load_gate_blocks(R, i_h, od, mask_dd, D)
    state = (i_b * (T + 1) * H + i_h) * D + od           # [B, T + 1, H, D], index 0 = initial
    c, n, m, h = _load_state(c_seq, n_seq, m_seq, h_seq, state, mask_d)
    for t in range(T):
        if HAS_RESETS:
            c, n, m, h, _ = _discard_state(resets, i_b * T + t, c, n, m, h)
        gates = ((i_b * T + t) * 4 * H + i_h) * D + od   # [B, T, 4, H, D]
        i_raw, f_raw, z_raw, o_raw = _load_gates(x, gates, mask_d, H * D)
        i_raw += tl.sum(h[:, None] * R_i, axis=0)
        f_raw += tl.sum(h[:, None] * R_f, axis=0)
        z_raw += tl.sum(h[:, None] * R_z, axis=0)
        o_raw += tl.sum(h[:, None] * R_o, axis=0)
        _store_gates(raw, gates, mask_d, H * D, i_raw, f_raw, z_raw, o_raw)
        c, n, m, h = _cell_forward(i_raw, f_raw, z_raw, o_raw, c, n, m)
        state += H * D
        _store_state(c_seq, n_seq, m_seq, h_seq, state, mask_d, c, n, m, h)


@triton.jit
def _slstm_bwd_kernel(R, resets, raw, c_seq, n_seq, m_seq, h_seq, dh_seq, final_positions,
                      dcT, dnT, dmT, dhT, draw, dR, d_initial, T,
                      H: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, HAS_RESETS: tl.constexpr):
    i_bh, i_b, i_h, od, mask_d, mask_dd = _program_head(H, D, BD)
    R_i, R_f, R_z, R_o = _load_gate_blocks(R, i_h, od, mask_dd, D)
    dR_i = tl.zeros([BD, BD], dtype=tl.float32)
    dR_f = tl.zeros([BD, BD], dtype=tl.float32)
    dR_z = tl.zeros([BD, BD], dtype=tl.float32)
    dR_o = tl.zeros([BD, BD], dtype=tl.float32)
    dc_final, dn_final, dm_final, dh_final = _load_state(dcT, dnT, dmT, dhT, i_bh * D + od, mask_d)
    final_t = tl.load(final_positions + i_b)
    dc = tl.zeros([BD], dtype=tl.float32)
    dn = tl.zeros([BD], dtype=tl.float32)
    dm = tl.zeros([BD], dtype=tl.float32)
    dh = tl.zeros([BD], dtype=tl.float32)
    for step in range(T):
        t = T - 1 - step
        at_final = final_t == t
        dc += tl.where(at_final, dc_final, 0.0)
        dn += tl.where(at_final, dn_final, 0.0)
        dm += tl.where(at_final, dm_final, 0.0)
        dh += tl.where(at_final, dh_final, 0.0) + tl.load(dh_seq + (i_b * T + t) * H * D + i_h * D + od,
                                                          mask=mask_d, other=0.0)
        prev = (i_b * (T + 1) * H + i_h) * D + t * H * D + od
        c_prev, n_prev, m_prev, h_prev = _load_state(c_seq, n_seq, m_seq, h_seq, prev, mask_d)
        if HAS_RESETS:
            c_prev, n_prev, m_prev, h_prev, fresh = _discard_state(resets, i_b * T + t, c_prev, n_prev,
                                                                   m_prev, h_prev)
        c, n, m, h = _load_state(c_seq, n_seq, m_seq, h_seq, prev + H * D, mask_d)
        gates = ((i_b * T + t) * 4 * H + i_h) * D + od
        i_raw, f_raw, z_raw, o_raw = _load_gates(raw, gates, mask_d, H * D)

        di_raw, df_raw, dz_raw, do_raw, dc_carry, dn_carry, dm_carry = _cell_backward(
            i_raw, f_raw, z_raw, o_raw, c_prev, n_prev, m_prev, c, n, m, h, dc, dn, dm, dh)
        _store_gates(draw, gates, mask_d, H * D, di_raw, df_raw, dz_raw, do_raw)
        dR_i += h_prev[:, None] * di_raw[None, :]
        dR_f += h_prev[:, None] * df_raw[None, :]
        dR_z += h_prev[:, None] * dz_raw[None, :]
        dR_o += h_prev[:, None] * do_raw[None, :]
        dh = (tl.sum(R_i * di_raw[None, :], axis=1) + tl.sum(R_f * df_raw[None, :], axis=1)
              + tl.sum(R_z * dz_raw[None, :], axis=1) + tl.sum(R_o * do_raw[None, :], axis=1))
        if HAS_RESETS:
            dh = tl.where(fresh, 0.0, dh)
        dc, dn, dm = dc_carry, dn_carry, dm_carry
    out = dR + (i_bh * D + od[:, None]) * 4 * D + od[None, :]      # partial dR [B, H, D, 4, D]
    tl.store(out, dR_i, mask=mask_dd)
    tl.store(out + D, dR_f, mask=mask_dd)
    tl.store(out + 2 * D, dR_z, mask=mask_dd)
    tl.store(out + 3 * D, dR_o, mask=mask_dd)
    init = i_bh * D + od                                                # [4, B, H, D]
    BHD = tl.num_programs(0) * D
    tl.store(d_initial + init, dc, mask=mask_d)
    tl.store(d_initial + BHD + init, dn, mask=mask_d)
    tl.store(d_initial + 2 * BHD + init, dm, mask=mask_d)
    tl.store(d_initial + 3 * BHD + init, dh, mask=mask_d)


FUSED_MAX_HEAD_DIM = 64
"""Largest head dim ``triton_slstm`` runs with the fused kernel (above it: the steps path). At head
dim 128 the fused backward spilled 12 KB per thread (its eight [D, D] weight and gradient tiles
exceed one program's registers) and at 384-512 ptxas ran past 300 s (issue 16); at 16-64 it passes
``recurlm-doctor compile`` on sm_80 and sm_90 without spills (docs/gpu.md)."""


def _num_warps(block: int) -> int:
    """Warps per program: the backward holds eight [BD, BD] fp32 tiles (R and dR per gate)."""
    return 4 if block <= 32 else 8


def state_buffers(x: torch.Tensor, has_initial_state: bool, c0, n0, m0, h0) -> list[torch.Tensor]:
    """c, n, m, h [B, T + 1, H, D] for x [B, T, 4, H, D]; index 0 holds the initial state (m = -inf
    without one: a fresh state)."""
    batch, seq_len, _, heads, dim = x.shape
    states = [torch.empty(batch, seq_len + 1, heads, dim, dtype=x.dtype, device=x.device) for _ in range(4)]
    for buffer, value in zip(states, (c0, n0, m0 if has_initial_state else torch.full_like(m0, float("-inf")), h0)):
        buffer[:, 0] = value
    return states


def outputs(states: list[torch.Tensor], final_positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(h [B, T, H, D], c, n, m, h [B, H, D] after token ``final_positions[b]`` of each row)."""
    rows = torch.arange(states[0].shape[0], device=states[0].device)
    return (states[3][:, 1:], *(buffer[rows, final_positions + 1] for buffer in states))


def backward_cotangents(raw: torch.Tensor, dh_seq: torch.Tensor | None, d_final: tuple
                        ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The gradients autograd hands the backward: dh [B, T, H, D] and those of the final c, n, m, h
    [B, H, D], contiguous, zeros where it passes None (raw: the [B, T, 4, H, D] pre-activations)."""
    batch, seq_len, _, heads, dim = raw.shape
    d_final = [raw.new_zeros(batch, heads, dim) if d is None else d.contiguous() for d in d_final]
    dh_seq = raw.new_zeros(batch, seq_len, heads, dim) if dh_seq is None else dh_seq.contiguous()
    return dh_seq, d_final


class _SLSTMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, R, resets, final_positions, has_initial_state, c0, n0, m0, h0):
        batch, seq_len, _, heads, dim = x.shape
        states = state_buffers(x, has_initial_state, c0, n0, m0, h0)
        raw = torch.empty_like(x)
        resets_arg = resets.to(torch.int8) if resets is not None else x
        block = triton.next_power_of_2(dim)
        _slstm_fwd_kernel[(batch * heads,)](x, R, resets_arg, raw, *states, seq_len, H=heads, D=dim, BD=block,
                                            HAS_RESETS=resets is not None, num_warps=_num_warps(block))
        ctx.save_for_backward(R, resets_arg, raw, final_positions, *states)
        ctx.config = (resets is not None, has_initial_state)
        return outputs(states, final_positions)

    @staticmethod
    def backward(ctx, dh_seq, *d_final):
        R, resets, raw, final_positions, *states = ctx.saved_tensors
        has_resets, has_initial_state = ctx.config
        batch, seq_len, _, heads, dim = raw.shape
        dh_seq, d_final = backward_cotangents(raw, dh_seq, d_final)
        draw = torch.empty_like(raw)
        dR = raw.new_empty(batch, *R.shape)
        d_initial = raw.new_empty(4, batch, heads, dim)
        block = triton.next_power_of_2(dim)
        _slstm_bwd_kernel[(batch * heads,)](R, resets, raw, *states, dh_seq, final_positions, *d_final,
                                            draw, dR, d_initial, seq_len, H=heads, D=dim, BD=block,
                                            HAS_RESETS=has_resets, num_warps=_num_warps(block))
        d_state = tuple(d_initial) if has_initial_state else (None,) * 4
        return draw, dR.sum(0), None, None, None, *d_state


def triton_slstm(x: torch.Tensor, R: torch.Tensor, bias: torch.Tensor,
                 initial_state: SLSTMState | None = None, output_final_state: bool = False,
                 resets: torch.Tensor | None = None, final_positions: torch.Tensor | None = None,
                 ) -> tuple[torch.Tensor, SLSTMState | None]:
    """Same contract as ``naive_slstm``; runs in float32. Heads up to ``FUSED_MAX_HEAD_DIM`` run
    the fused kernel (one program per head walks the sequence with R[h] on chip), larger ones the
    steps path (per token a batched GEMM for the recurrent matmul and one Triton kernel for the
    cell, ``recurlm.kernels.slstm.triton_steps``), which runs at any head dim."""
    batch, seq_len, _, heads, dim = x.shape
    state = initial_slstm_state(initial_state, batch, heads, dim, torch.float32, x.device)
    if final_positions is None:
        final_positions = torch.full((batch,), seq_len - 1, dtype=torch.long, device=x.device)
    x_bias = (x.float() + bias.float()).contiguous()
    if dim > FUSED_MAX_HEAD_DIM:
        from recurlm.kernels.slstm.triton_steps import SLSTMStepsFunction as function
    else:
        function = _SLSTMFunction
    h, *final = function.apply(x_bias, R.float().contiguous(), resets, final_positions,
                               initial_state is not None, *(s.contiguous() for s in state))
    return h.to(x.dtype), (SLSTMState(*final) if output_final_state else None)
