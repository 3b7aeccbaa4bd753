"""sLSTM CPU path: a graph-free forward loop and a hand-written backward loop.

The recurrence is not parallel over time, so this path cannot be chunkwise. What it removes is
autograd's per-step bookkeeping: the input term x + bias is added once for all tokens, each step is
one batched matmul over heads plus the pointwise cell (``naive.slstm_step``, run without a graph).
The backward computes every gate and coefficient that does not depend on the adjoint for all tokens
at once, runs a reverse loop of a dozen elementwise ops and one matmul (dh' = R draw) per token,
and forms dR = sum_t h'_t draw_t^T as one contraction after the loop.

Backward of one step (upstream dh, dc, dn, dm; prev state c', n', m', h'; gates as in
``slstm_step``, a = logsigmoid(f) + m', i_g = exp(i - m), f_g = exp(a - m), z = tanh(z_raw),
o = sigmoid(o_raw)):

    do_raw = dh c / n * o (1 - o)
    dc    += dh o / n,           dn -= dh h / n
    df_g   = dc c' + dn n',      di_g = dc z + dn,     dz_raw = dc i_g (1 - z^2)
    dm    -= df_g f_g + di_g i_g
    di_raw = di_g i_g + [m = i] dm,    da = df_g f_g + [m = a] dm,    df_raw = da sigmoid(-f)
    dc' = dc f_g,  dn' = dn f_g,  dm' = da,  dh' = R draw,  dR += h' draw^T
(nothing flows into the previous state of a row that starts fresh at this token).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from recurlm.kernels.slstm.naive import fresh_rows, recurrent_preactivations, slstm_step
from recurlm.kernels.slstm.state import SLSTMState, initial_slstm_state


class _SLSTMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, R: torch.Tensor, bias: torch.Tensor, resets: torch.Tensor | None,
                final_positions: torch.Tensor, has_initial_state: bool, *initial_state: torch.Tensor):
        batch, seq_len, _, heads, dim = x.shape
        state = SLSTMState(*initial_state)
        x_bias = x + bias                                                  # [B, T, 4, H, D]
        raws = torch.empty_like(x_bias)
        states = [torch.empty(seq_len, batch, heads, dim, dtype=x.dtype, device=x.device) for _ in range(4)]
        for t in range(seq_len):
            fresh = fresh_rows(t, resets, has_initial_state, batch, x.device)
            h_prev = torch.where(fresh[:, None, None], 0.0, state.h)
            raws[:, t] = x_bias[:, t] + recurrent_preactivations(h_prev, R)
            state = slstm_step(raws[:, t], state, fresh)
            for buffer, value in zip(states, state):
                buffer[t] = value
        ctx.save_for_backward(raws, R, resets, final_positions, *initial_state, *states)
        ctx.has_initial_state = has_initial_state
        rows = torch.arange(batch, device=x.device)
        final = [buffer[final_positions, rows] for buffer in states]
        return (states[3].transpose(0, 1).contiguous(), *final)

    @staticmethod
    def backward(ctx, dh_all: torch.Tensor, *d_final: torch.Tensor):
        raws, R, resets, final_positions = ctx.saved_tensors[:4]
        initial = ctx.saved_tensors[4:8]
        c, n, m, h = ctx.saved_tensors[8:]                                  # [T, B, H, D]
        batch, seq_len, _, heads, dim = raws.shape
        d_final = [torch.zeros_like(initial[0]) if d is None else d for d in d_final]
        dh_all = torch.zeros_like(h.transpose(0, 1)) if dh_all is None else dh_all
        R_heads_t = R.reshape(heads, dim, 4 * dim).transpose(1, 2)           # [H, 4 D, D]

        # everything that does not depend on the adjoint, for all tokens at once ([T, B, H, D])
        fresh = torch.stack([fresh_rows(t, resets, ctx.has_initial_state, batch, raws.device)
                             for t in range(seq_len)])[..., None, None]     # [T, B, 1, 1]
        c_prev, n_prev, m_prev, h_prev = (torch.cat([s0[None], s[:-1]]) for s0, s in zip(initial, (c, n, m, h)))
        h_prev = torch.where(fresh, 0.0, h_prev)
        i_raw, f_raw, z_raw, o_raw = raws.transpose(0, 1).unbind(2)
        log_f_plus_m = F.logsigmoid(f_raw) + m_prev
        i_gate = torch.exp(i_raw - m)
        f_gate = torch.where(fresh, 0.0, torch.exp(log_f_plus_m - m))
        z = torch.tanh(z_raw)
        o = torch.sigmoid(o_raw)
        i_wins = fresh | (i_raw >= log_f_plus_m)     # which argument of m = max(i, a) is taken
        o_over_n, h_over_n = o / n, h / n
        do_coef, dz_coef, df_coef = c / n * o * (1 - o), i_gate * (1 - z * z), torch.sigmoid(-f_raw)

        draws = torch.empty(seq_len, batch, 4, heads, dim, dtype=raws.dtype, device=raws.device)
        dc, dn, dm, dh = (torch.zeros_like(initial[0]) for _ in range(4))
        for t in reversed(range(seq_len)):
            at_final = (final_positions == t)[:, None, None]
            dc, dn, dm, dh = (torch.where(at_final, g + d, g) for g, d in zip((dc, dn, dm, dh), d_final))
            dh = dh + dh_all[:, t]
            dc = dc + dh * o_over_n[t]
            dn = dn - dh * h_over_n[t]
            df_gate = (dc * c_prev[t] + dn * n_prev[t]) * f_gate[t]        # 0 for a fresh row
            di_gate = (dc * z[t] + dn) * i_gate[t]
            dm = dm - df_gate - di_gate
            d_log_f_plus_m = df_gate + torch.where(i_wins[t], 0.0, dm)
            draw = draws[t]
            draw[:, 0] = di_gate + torch.where(i_wins[t], dm, 0.0)
            draw[:, 1] = d_log_f_plus_m * df_coef[t]
            draw[:, 2] = dc * dz_coef[t]
            draw[:, 3] = dh * do_coef[t]
            dh_prev = torch.bmm(draw.permute(2, 0, 1, 3).reshape(heads, batch, 4 * dim), R_heads_t)
            dh = torch.where(fresh[t], 0.0, dh_prev.transpose(0, 1))
            dc, dn, dm = dc * f_gate[t], dn * f_gate[t], d_log_f_plus_m
        dR = torch.einsum("tbhd,tbghj->hdgj", h_prev, draws)
        draws = draws.transpose(0, 1)
        d_initial = (dc, dn, dm, dh) if ctx.has_initial_state else (None,) * 4
        return (draws, dR, draws.sum((0, 1)), None, None, None, *d_initial)


def slstm_chunk(x: torch.Tensor, R: torch.Tensor, bias: torch.Tensor,
                initial_state: SLSTMState | None = None, output_final_state: bool = False,
                resets: torch.Tensor | None = None, final_positions: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, SLSTMState | None]:
    """Same contract as ``slstm_naive``; computes in float32 (float64 for float64 inputs)."""
    batch, seq_len, _, heads, dim = x.shape
    dtype = torch.promote_types(x.dtype, torch.float32)
    state = initial_slstm_state(initial_state, batch, heads, dim, dtype, x.device)
    if final_positions is None:
        final_positions = torch.full((batch,), seq_len - 1, dtype=torch.long, device=x.device)
    h, *final = _SLSTMFunction.apply(x.to(dtype), R.to(dtype), bias.to(dtype), resets, final_positions,
                                     initial_state is not None, *state)
    return h.to(x.dtype), (SLSTMState(*final) if output_final_state else None)
