"""Fused sequential sLSTM in Triton (FlashRNN-style): forward and backward, exact gradients.

One program per (batch row, head) loads that head's recurrent weights R[h] (four [D, D] gate
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
def _load_gate_blocks(R, i_h, od, mask_dd, D: tl.constexpr):
    """R [H, D, 4, D] -> the four [D, D] blocks R[i_h, :, g, :] (rows: input unit d)."""
    base = R + i_h * D * 4 * D + od[:, None] * 4 * D + od[None, :]
    return (tl.load(base, mask=mask_dd, other=0.0), tl.load(base + D, mask=mask_dd, other=0.0),
            tl.load(base + 2 * D, mask=mask_dd, other=0.0), tl.load(base + 3 * D, mask=mask_dd, other=0.0))


@triton.jit
def _slstm_fwd_kernel(x, R, resets, raw, c_seq, n_seq, m_seq, h_seq, T,
                      H: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, HAS_RESETS: tl.constexpr):
    i_bh = tl.program_id(0)
    i_b = i_bh // H
    i_h = i_bh % H
    od = tl.arange(0, BD)
    mask_d = od < D
    R_i, R_f, R_z, R_o = _load_gate_blocks(R, i_h, od, mask_d[:, None] & mask_d[None, :], D)
    state = (i_b * (T + 1) * H + i_h) * D + od           # [B, T + 1, H, D], index 0 = initial
    c = tl.load(c_seq + state, mask=mask_d, other=0.0)
    n = tl.load(n_seq + state, mask=mask_d, other=1.0)
    m = tl.load(m_seq + state, mask=mask_d, other=0.0)
    h = tl.load(h_seq + state, mask=mask_d, other=0.0)
    for t in range(T):
        if HAS_RESETS:
            fresh = tl.load(resets + i_b * T + t) != 0
            c = tl.where(fresh, 0.0, c)
            n = tl.where(fresh, 0.0, n)
            m = tl.where(fresh, float("-inf"), m)
            h = tl.where(fresh, 0.0, h)
        gates = ((i_b * T + t) * 4 * H + i_h) * D + od   # [B, T, 4, H, D]
        i_raw = tl.load(x + gates, mask=mask_d, other=0.0) + tl.sum(h[:, None] * R_i, axis=0)
        f_raw = tl.load(x + gates + H * D, mask=mask_d, other=0.0) + tl.sum(h[:, None] * R_f, axis=0)
        z_raw = tl.load(x + gates + 2 * H * D, mask=mask_d, other=0.0) + tl.sum(h[:, None] * R_z, axis=0)
        o_raw = tl.load(x + gates + 3 * H * D, mask=mask_d, other=0.0) + tl.sum(h[:, None] * R_o, axis=0)
        tl.store(raw + gates, i_raw, mask=mask_d)
        tl.store(raw + gates + H * D, f_raw, mask=mask_d)
        tl.store(raw + gates + 2 * H * D, z_raw, mask=mask_d)
        tl.store(raw + gates + 3 * H * D, o_raw, mask=mask_d)
        log_f_plus_m = tl.minimum(f_raw, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(f_raw))) + m
        m = tl.maximum(i_raw, log_f_plus_m)
        i_gate = tl.exp(i_raw - m)
        f_gate = tl.exp(log_f_plus_m - m)
        c = f_gate * c + i_gate * _tanh(z_raw)
        n = f_gate * n + i_gate
        h = _sigmoid(o_raw) * c / n
        state += H * D
        tl.store(c_seq + state, c, mask=mask_d)
        tl.store(n_seq + state, n, mask=mask_d)
        tl.store(m_seq + state, m, mask=mask_d)
        tl.store(h_seq + state, h, mask=mask_d)


@triton.jit
def _slstm_bwd_kernel(R, resets, raw, c_seq, n_seq, m_seq, h_seq, dh_seq, final_positions,
                      dcT, dnT, dmT, dhT, draw, dR, d_initial, T,
                      H: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, HAS_RESETS: tl.constexpr):
    i_bh = tl.program_id(0)
    i_b = i_bh // H
    i_h = i_bh % H
    od = tl.arange(0, BD)
    mask_d = od < D
    mask_dd = mask_d[:, None] & mask_d[None, :]
    R_i, R_f, R_z, R_o = _load_gate_blocks(R, i_h, od, mask_dd, D)
    dR_i = tl.zeros([BD, BD], dtype=tl.float32)
    dR_f = tl.zeros([BD, BD], dtype=tl.float32)
    dR_z = tl.zeros([BD, BD], dtype=tl.float32)
    dR_o = tl.zeros([BD, BD], dtype=tl.float32)
    final = i_bh * D + od                                 # [B, H, D]
    dc_final = tl.load(dcT + final, mask=mask_d, other=0.0)
    dn_final = tl.load(dnT + final, mask=mask_d, other=0.0)
    dm_final = tl.load(dmT + final, mask=mask_d, other=0.0)
    dh_final = tl.load(dhT + final, mask=mask_d, other=0.0)
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
        c_prev = tl.load(c_seq + prev, mask=mask_d, other=0.0)
        n_prev = tl.load(n_seq + prev, mask=mask_d, other=0.0)
        m_prev = tl.load(m_seq + prev, mask=mask_d, other=0.0)
        h_prev = tl.load(h_seq + prev, mask=mask_d, other=0.0)
        if HAS_RESETS:
            fresh = tl.load(resets + i_b * T + t) != 0
            c_prev = tl.where(fresh, 0.0, c_prev)
            n_prev = tl.where(fresh, 0.0, n_prev)
            m_prev = tl.where(fresh, float("-inf"), m_prev)
            h_prev = tl.where(fresh, 0.0, h_prev)
        c = tl.load(c_seq + prev + H * D, mask=mask_d, other=0.0)
        n = tl.load(n_seq + prev + H * D, mask=mask_d, other=1.0)
        m = tl.load(m_seq + prev + H * D, mask=mask_d, other=0.0)
        h = tl.load(h_seq + prev + H * D, mask=mask_d, other=0.0)
        gates = ((i_b * T + t) * 4 * H + i_h) * D + od
        i_raw = tl.load(raw + gates, mask=mask_d, other=0.0)
        f_raw = tl.load(raw + gates + H * D, mask=mask_d, other=0.0)
        z_raw = tl.load(raw + gates + 2 * H * D, mask=mask_d, other=0.0)
        o_raw = tl.load(raw + gates + 3 * H * D, mask=mask_d, other=0.0)

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
        tl.store(draw + gates, di_raw, mask=mask_d)
        tl.store(draw + gates + H * D, df_raw, mask=mask_d)
        tl.store(draw + gates + 2 * H * D, dz_raw, mask=mask_d)
        tl.store(draw + gates + 3 * H * D, do_raw, mask=mask_d)
        dR_i += h_prev[:, None] * di_raw[None, :]
        dR_f += h_prev[:, None] * df_raw[None, :]
        dR_z += h_prev[:, None] * dz_raw[None, :]
        dR_o += h_prev[:, None] * do_raw[None, :]
        dh = (tl.sum(R_i * di_raw[None, :], axis=1) + tl.sum(R_f * df_raw[None, :], axis=1)
              + tl.sum(R_z * dz_raw[None, :], axis=1) + tl.sum(R_o * do_raw[None, :], axis=1))
        if HAS_RESETS:
            dh = tl.where(fresh, 0.0, dh)
        dc = dc * f_gate
        dn = dn * f_gate
        dm = d_log_f_plus_m
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


class _SLSTMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, R, resets, final_positions, has_initial_state, c0, n0, m0, h0):
        batch, seq_len, _, heads, dim = x.shape
        states = [torch.empty(batch, seq_len + 1, heads, dim, dtype=x.dtype, device=x.device) for _ in range(4)]
        for buffer, value in zip(states, (c0, n0, m0 if has_initial_state else torch.full_like(m0, float("-inf")), h0)):
            buffer[:, 0] = value
        raw = torch.empty_like(x)
        resets_arg = resets.to(torch.int8) if resets is not None else x
        _slstm_fwd_kernel[(batch * heads,)](x, R, resets_arg, raw, *states, seq_len, H=heads, D=dim,
                                            BD=triton.next_power_of_2(dim), HAS_RESETS=resets is not None)
        ctx.save_for_backward(R, resets_arg, raw, final_positions, *states)
        ctx.config = (resets is not None, has_initial_state)
        rows = torch.arange(batch, device=x.device)
        return (states[3][:, 1:], *(buffer[rows, final_positions + 1] for buffer in states))

    @staticmethod
    def backward(ctx, dh_seq, *d_final):
        R, resets, raw, final_positions, *states = ctx.saved_tensors
        has_resets, has_initial_state = ctx.config
        batch, seq_len, _, heads, dim = raw.shape
        zeros = torch.zeros(batch, heads, dim, dtype=raw.dtype, device=raw.device)
        d_final = [zeros if d is None else d.contiguous() for d in d_final]
        dh_seq = torch.zeros(batch, seq_len, heads, dim, dtype=raw.dtype, device=raw.device) \
            if dh_seq is None else dh_seq.contiguous()
        draw = torch.empty_like(raw)
        dR = raw.new_empty(batch, *R.shape)
        d_initial = raw.new_empty(4, batch, heads, dim)
        _slstm_bwd_kernel[(batch * heads,)](R, resets, raw, *states, dh_seq, final_positions, *d_final,
                                            draw, dR, d_initial, seq_len, H=heads, D=dim,
                                            BD=triton.next_power_of_2(dim), HAS_RESETS=has_resets)
        d_state = tuple(d_initial) if has_initial_state else (None,) * 4
        return draw, dR.sum(0), None, None, None, *d_state


def slstm_triton(x: torch.Tensor, R: torch.Tensor, bias: torch.Tensor,
                 initial_state: SLSTMState | None = None, output_final_state: bool = False,
                 resets: torch.Tensor | None = None, final_positions: torch.Tensor | None = None,
                 ) -> tuple[torch.Tensor, SLSTMState | None]:
    """Same contract as ``slstm_naive``; runs in float32 on chip."""
    batch, seq_len, _, heads, dim = x.shape
    state = initial_slstm_state(initial_state, batch, heads, dim, torch.float32, x.device)
    if final_positions is None:
        final_positions = torch.full((batch,), seq_len - 1, dtype=torch.long, device=x.device)
    x_bias = (x.float() + bias.float()).contiguous()
    h, *final = _SLSTMFunction.apply(x_bias, R.float().contiguous(), resets, final_positions,
                                     initial_state is not None, *(s.contiguous() for s in state))
    return h.to(x.dtype), (SLSTMState(*final) if output_final_state else None)
