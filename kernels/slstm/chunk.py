"""sLSTM CPU path: a graph-free forward loop and a hand-written backward loop.

The recurrence is not parallel over time, so this path cannot be chunkwise. What it removes is
autograd's bookkeeping and most of the per-step op count: everything that does not depend on the
recurrence is done once for all tokens outside the loops, tensors are laid out head-major and
time-first ([T, H, B, ...]) so that each token is one contiguous slab for the batched matmul over
heads, gates that share an op are stacked and written with ``out=`` into preallocated buffers, and
per-token views come from one ``unbind`` instead of a Python index per step. Per token, forward: 14
aten ops (views included), backward: 8; a token where some row starts fresh adds one and two, a
token after which a final state is read adds one to the backward.

A fresh state (token 0 without an initial state, or a reset) is folded into the input: its forget
preactivation is set to -inf, so logsigmoid(f) + m_prev = -inf, m = i and f' = 0 without a select
per step; only h_prev (the matmul's input) is masked, at the few tokens where some row starts fresh.

Forward of one token (gates as in ``naive.slstm_step``; a = logsigmoid(f) + m_prev):

    raw = x_t + bias + R^T h_prev                       (one baddbmm over heads)
    m = max(i, a),  (i', f') = exp((i, a) - m)
    (c, n) = f' (c_prev, n_prev) + i' (tanh z, 1),      h = sigmoid(o) c / n

Backward of one token, on the adjoints (dm, dn, dc, dh) of the state after it (w = [m = i], the
argument of the max that is taken; z = tanh(z_raw), o = sigmoid(o_raw)):

    (dn, dc) += dh (-h / n, o / n)
    draw_i = w dm + [(1 - w) i' - w n_prev f'] dn + [(1 - w) z i' - w c_prev f'] dc
    da = dm - draw_i                                    (m = max(i, a) is shift invariant)
    draw_f = da sigmoid(-f),  draw_z = dc i' (1 - z^2),  draw_o = dh c / n o (1 - o)
    dm_prev = da,  (dn_prev, dc_prev) = f' (dn, dc),  dh_prev = dh_{t-1} (upstream) + R draw

(zero for a row that starts fresh at the token: f' = 0 and w = 1 give da = 0, and dh_prev is
masked), and dR = sum_t h_prev draw^T is one contraction after the loop. All the bracketed
coefficients are computed for all tokens at once before the loop.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from recurlm.kernels.dispatch import compute_dtype
from recurlm.kernels.slstm.state import SLSTMState, initial_slstm_state


def _head_major(t: torch.Tensor) -> torch.Tensor:
    """[B, H, D] -> contiguous [H, B, D]."""
    return t.transpose(0, 1).contiguous()


def _fresh_tokens(seq_len: int, batch: int, resets: torch.Tensor | None, has_initial_state: bool,
                  device: torch.device) -> torch.Tensor:
    """[T, B] bool: the state entering token t of row b is a fresh one (``naive.fresh_rows`` for all
    tokens at once)."""
    fresh = (torch.zeros(seq_len, batch, dtype=torch.bool, device=device) if resets is None
             else resets.t().clone())
    fresh[0] |= not has_initial_state
    return fresh


class _SLSTMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, R: torch.Tensor, bias: torch.Tensor, resets: torch.Tensor | None,
                final_positions: torch.Tensor, has_initial_state: bool, *initial_state: torch.Tensor):
        batch, seq_len, _, heads, dim = x.shape
        ctx.set_materialize_grads(False)
        fresh = _fresh_tokens(seq_len, batch, resets, has_initial_state, x.device)
        fresh_steps = set(fresh.any(1).nonzero().flatten().tolist())

        # inputs, [T, H, B, 4, D]: one contiguous [H, B, 4 D] slab per token
        x_bias = (x + bias).permute(1, 3, 0, 2, 4).contiguous()
        x_bias[:, :, :, 1].masked_fill_(fresh[:, None, :, None], float("-inf"))  # fresh: f' = 0, m = i
        raws = torch.empty_like(x_bias)
        gates = x.new_empty(seq_len, heads, batch, 2, dim)                  # (i', f')
        cn = x.new_empty(seq_len, heads, batch, 2, dim)                     # (c, n)
        m, h = x.new_empty(2, seq_len, heads, batch, dim)
        tanh_z_and_one = x.new_ones(heads, batch, 2, dim)  # (c, n) += i' (tanh z, 1) as one op

        x_steps = x_bias.flatten(3).unbind(0)
        raw_steps = raws.flatten(3).unbind(0)
        i_steps, f_steps, z_steps, o_steps = (raws[:, :, :, g].unbind(0) for g in range(4))
        gate_steps, cn_steps, m_steps, h_steps = gates.unbind(0), cn.unbind(0), m.unbind(0), h.unbind(0)
        ig_steps, a_steps = gates[:, :, :, 0].unbind(0), gates[:, :, :, 1].unbind(0)
        ig2_steps, fg2_steps = gates[:, :, :, 0:1].unbind(0), gates[:, :, :, 1:2].unbind(0)
        c_steps, n_steps = cn[:, :, :, 0].unbind(0), cn[:, :, :, 1].unbind(0)
        R_heads = R.reshape(heads, dim, 4 * dim)
        c0, n0, m_prev, h_prev = (_head_major(s) for s in initial_state)
        cn_prev = torch.stack([c0, n0], 2)
        for t in range(seq_len):
            if t in fresh_steps:
                h_prev = h_prev.masked_fill(fresh[t, :, None], 0.0)
            torch.baddbmm(x_steps[t], h_prev, R_heads, out=raw_steps[t])
            torch.add(F.logsigmoid(f_steps[t]), m_prev, out=a_steps[t])
            m_prev = torch.maximum(i_steps[t], a_steps[t], out=m_steps[t])
            torch.sub(i_steps[t], m_prev, out=ig_steps[t])
            a_steps[t].sub_(m_prev)
            gate_steps[t].exp_()
            torch.tanh(z_steps[t], out=tanh_z_and_one[:, :, 0])
            cn_prev = torch.mul(cn_prev, fg2_steps[t], out=cn_steps[t])
            cn_prev.addcmul_(tanh_z_and_one, ig2_steps[t])
            h_prev = torch.div(c_steps[t], n_steps[t], out=h_steps[t])
            h_prev.mul_(torch.sigmoid(o_steps[t]))

        ctx.save_for_backward(raws, gates, cn, m, h, R, fresh, final_positions, *initial_state)
        ctx.has_initial_state, ctx.fresh_steps = has_initial_state, fresh_steps
        rows = torch.arange(batch, device=x.device)
        final = [buffer[final_positions, :, rows] for buffer in (cn[:, :, :, 0], cn[:, :, :, 1], m, h)]
        return (h.permute(2, 0, 1, 3).contiguous(), *final)

    @staticmethod
    def backward(ctx, dh_all: torch.Tensor | None, *d_final: torch.Tensor | None):
        raws, gates, cn, m, h, R, fresh, final_positions, *initial = ctx.saved_tensors
        seq_len, heads, batch, _, dim = raws.shape

        # every coefficient that does not depend on the adjoint, for all tokens ([T, H, B, D] each)
        i_raw, f_raw, z_raw, o_raw = raws.unbind(3)
        i_gate, f_gate = gates.unbind(3)
        c, n = cn.unbind(3)
        cn0 = torch.stack([_head_major(initial[0]), _head_major(initial[1])], 2)
        c_prev, n_prev = torch.cat([cn0[None], cn[:-1]]).unbind(3)
        z, o = torch.tanh(z_raw), torch.sigmoid(o_raw)
        i_wins = (m == i_raw).to(raws.dtype)
        i_loses = 1 - i_wins
        h_coef = torch.stack([-h / n, o / n], 1)                                   # [T, 2, H, B, D]
        draw_i_coef = torch.stack([i_wins, i_loses * i_gate - i_wins * n_prev * f_gate,
                                   i_loses * z * i_gate - i_wins * c_prev * f_gate], 1)  # [T, 3, H, B, D]
        draw_zo_coef = torch.stack([i_gate * (1 - z * z), c / n * o * (1 - o)], 1)      # [T, 2, H, B, D]
        draw_f_coef = torch.sigmoid(-f_raw)
        dh_up = (torch.zeros_like(h) if dh_all is None else dh_all.permute(1, 2, 0, 3).contiguous())

        # adjoint of the state after the current token, slots (dm, dn, dc, dh) [4, H, B, D]
        adj = raws.new_zeros(4, heads, batch, dim)
        dm, dh, dnc, dcdh, dmnc = adj[0], adj[3], adj[1:3], adj[2:4], adj[0:3]
        finals = {}  # token -> gradients of the final states read after it, zero in other rows
        if any(d is not None for d in d_final):
            d_final_adj = torch.stack([torch.zeros_like(initial[0]) if d is None else d
                                       for d in (d_final[2], d_final[1], d_final[0], d_final[3])]).transpose(1, 2)
            for t in set(final_positions.tolist()):
                finals[t] = d_final_adj * (final_positions == t)[:, None].to(raws.dtype)
        draws = torch.empty_like(raws)                                             # [T, H, B, 4, D]
        draw_steps = draws.flatten(3).unbind(0)
        draw_i_steps, draw_f_steps = draws[:, :, :, 0].unbind(0), draws[:, :, :, 1].unbind(0)
        draw_zo_steps = draws[:, :, :, 2:4].permute(0, 3, 1, 2, 4).unbind(0)
        h_coef_steps, draw_i_coef_steps = h_coef.unbind(0), draw_i_coef.unbind(0)
        draw_zo_coef_steps, draw_f_coef_steps = draw_zo_coef.unbind(0), draw_f_coef.unbind(0)
        f_gate_steps, dh_up_steps = f_gate.unbind(0), dh_up.unbind(0)
        R_heads_t = R.reshape(heads, dim, 4 * dim).transpose(1, 2).contiguous()     # [H, 4 D, D]
        products = raws.new_empty(3, heads, batch, dim)
        dh.copy_(dh_up_steps[-1])
        for t in reversed(range(seq_len)):
            if t in finals:
                adj.add_(finals[t])
            dnc.addcmul_(dh, h_coef_steps[t])
            torch.mul(dmnc, draw_i_coef_steps[t], out=products)
            draw_i = torch.sum(products, 0, out=draw_i_steps[t])
            dm.sub_(draw_i)
            torch.mul(dm, draw_f_coef_steps[t], out=draw_f_steps[t])
            torch.mul(dcdh, draw_zo_coef_steps[t], out=draw_zo_steps[t])
            if t in ctx.fresh_steps:  # rows that start fresh here pass no gradient to h_prev through R
                torch.bmm(draw_steps[t], R_heads_t, out=dh).masked_fill_(fresh[t, :, None], 0.0)
                if t > 0:
                    dh.add_(dh_up_steps[t - 1])
            elif t > 0:
                torch.baddbmm(dh_up_steps[t - 1], draw_steps[t], R_heads_t, out=dh)
            else:
                torch.bmm(draw_steps[t], R_heads_t, out=dh)
            dnc.mul_(f_gate_steps[t])

        h0 = _head_major(initial[3])
        h_prev = torch.cat([h0[None], h[:-1]]).masked_fill_(fresh[:, None, :, None], 0.0)
        dR = torch.einsum("thbd,thbgj->hdgj", h_prev, draws)
        d_initial = ((adj[2], adj[1], adj[0], adj[3]) if ctx.has_initial_state else (None,) * 4)
        d_initial = tuple(d if d is None else d.transpose(0, 1) for d in d_initial)
        return (draws.permute(2, 0, 3, 1, 4), dR, draws.sum(0).sum(1).transpose(0, 1), None, None, None, *d_initial)


def chunk_slstm(x: torch.Tensor, R: torch.Tensor, bias: torch.Tensor,
                initial_state: SLSTMState | None = None, output_final_state: bool = False,
                resets: torch.Tensor | None = None, final_positions: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, SLSTMState | None]:
    """Same contract as ``naive_slstm``; computes in float32 (float64 for float64 inputs)."""
    batch, seq_len, _, heads, dim = x.shape
    dtype = compute_dtype(x.dtype)
    state = initial_slstm_state(initial_state, batch, heads, dim, dtype, x.device)
    if final_positions is None:
        final_positions = torch.full((batch,), seq_len - 1, dtype=torch.long, device=x.device)
    h, *final = _SLSTMFunction.apply(x.to(dtype), R.to(dtype), bias.to(dtype), resets, final_positions,
                                     initial_state is not None, *state)
    return h.to(x.dtype), (SLSTMState(*final) if output_final_state else None)
