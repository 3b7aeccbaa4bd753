"""sLSTM CPU path: a graph-free forward loop and a hand-written backward loop.

The recurrence is not parallel over time, so this path cannot be chunkwise. What it removes is
autograd's per-step bookkeeping: the input term x + bias is added once for all tokens, each step is
one batched matmul over heads plus the pointwise cell (``naive.slstm_step``, run without a graph),
and the backward is one reverse loop of explicit formulas that accumulates dR in place.

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


def _slstm_step_backward(raw: torch.Tensor, prev: SLSTMState, new: SLSTMState, fresh: torch.Tensor,
                         grad: SLSTMState) -> tuple[torch.Tensor, SLSTMState]:
    """Gradients of one step: raw [B, 4, H, D]; prev/new/grad states [B, H, D]; fresh [B] bool.

    Returns (draw [B, 4, H, D], gradient w.r.t. prev's c, n, m and the recurrent input h')."""
    i_raw, f_raw, z_raw, o_raw = raw.unbind(1)
    fresh = fresh[:, None, None]
    log_f_plus_m = F.logsigmoid(f_raw) + prev.m
    i_gate = torch.exp(i_raw - new.m)
    f_gate = torch.where(fresh, 0.0, torch.exp(log_f_plus_m - new.m))
    z = torch.tanh(z_raw)
    o = torch.sigmoid(o_raw)
    dh = grad.h
    do_raw = dh * new.c / new.n * o * (1 - o)
    dc = grad.c + dh * o / new.n
    dn = grad.n - dh * new.h / new.n
    df_gate = (dc * prev.c + dn * prev.n) * f_gate
    di_gate = (dc * z + dn) * i_gate
    dm = grad.m - df_gate - di_gate
    i_wins = fresh | (i_raw >= log_f_plus_m)
    di_raw = di_gate + torch.where(i_wins, dm, 0.0)
    d_log_f_plus_m = torch.where(fresh, 0.0, df_gate + torch.where(i_wins, 0.0, dm))
    df_raw = d_log_f_plus_m * torch.sigmoid(-f_raw)
    dz_raw = dc * i_gate * (1 - z * z)
    draw = torch.stack([di_raw, df_raw, dz_raw, do_raw], 1)
    return draw, SLSTMState(dc * f_gate, dn * f_gate, d_log_f_plus_m, torch.zeros_like(dh))


class _SLSTMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, R: torch.Tensor, bias: torch.Tensor, resets: torch.Tensor | None,
                final_positions: torch.Tensor, has_initial_state: bool, *initial_state: torch.Tensor):
        batch, seq_len, _, heads, dim = x.shape
        state = SLSTMState(*initial_state)
        x_bias = x + bias                                                  # [B, T, 4, H, D]
        R_heads = R.reshape(heads, dim, 4 * dim)
        raws = torch.empty_like(x_bias)
        states = [torch.empty(seq_len, batch, heads, dim, dtype=x.dtype, device=x.device) for _ in range(4)]
        for t in range(seq_len):
            fresh = fresh_rows(t, resets, has_initial_state, batch, x.device)
            h_prev = torch.where(fresh[:, None, None], 0.0, state.h)
            recurrent = torch.bmm(h_prev.transpose(0, 1), R_heads)        # [H, B, 4 D]
            raws[:, t] = x_bias[:, t] + recurrent.view(heads, batch, 4, dim).permute(1, 2, 0, 3)
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
        initial = SLSTMState(*ctx.saved_tensors[4:8])
        states = ctx.saved_tensors[8:]
        batch, seq_len, _, heads, dim = raws.shape
        d_final = [torch.zeros_like(initial.c) if d is None else d for d in d_final]
        dh_all = torch.zeros(batch, seq_len, heads, dim, dtype=raws.dtype, device=raws.device) \
            if dh_all is None else dh_all
        R_heads = R.reshape(heads, dim, 4 * dim)
        draws = torch.empty_like(raws)
        dR = torch.zeros_like(R_heads)
        grad = SLSTMState(*(torch.zeros_like(initial.c) for _ in range(4)))
        for t in reversed(range(seq_len)):
            at_final = (final_positions == t)[:, None, None]
            grad = SLSTMState(*(torch.where(at_final, g + d, g) for g, d in zip(grad, d_final)))
            grad = grad._replace(h=grad.h + dh_all[:, t])
            fresh = fresh_rows(t, resets, ctx.has_initial_state, batch, raws.device)
            prev = initial if t == 0 else SLSTMState(*(buffer[t - 1] for buffer in states))
            new = SLSTMState(*(buffer[t] for buffer in states))
            draw, grad = _slstm_step_backward(raws[:, t], prev, new, fresh, grad)
            draws[:, t] = draw
            draw_heads = draw.permute(2, 0, 1, 3).reshape(heads, batch, 4 * dim)   # [H, B, 4 D]
            h_prev = torch.where(fresh[:, None, None], 0.0, prev.h).transpose(0, 1)  # [H, B, D]
            dR.baddbmm_(h_prev.transpose(1, 2), draw_heads)
            dh_prev = torch.bmm(draw_heads, R_heads.transpose(1, 2)).transpose(0, 1)  # [B, H, D]
            grad = grad._replace(h=torch.where(fresh[:, None, None], 0.0, dh_prev))
        d_initial = grad if ctx.has_initial_state else (None,) * 4
        return (draws, dR.view_as(R), draws.sum((0, 1)), None, None, None, *d_initial)


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
