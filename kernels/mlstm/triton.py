"""Fused recurrent mLSTM in Triton: forward and backward, exact gradients.

One program per (batch, head, block of BV value columns) keeps C[:, block] [K, BV] and n [K] on
chip and walks the sequence (every block recomputes n and m, which are cheap). Kernels:

- forward: h_t, and per token m_t and qn_t = n_t . q_t (saved for the backward), final state;
  in ``DQ_MODE`` the same walk recomputes C_t and emits dq_t = C_t dnum_t + n_t dqn_t instead;
- backward: the reverse walk of the stabilised adjoint state
  dC_t = f'_{t+1} dC_{t+1} + q_t dnum_t^T (f'_t = exp(lf_t + m_{t-1} - m_t) <= 1, so it stays
  bounded), emitting dk_t = i'_t (dC_t v_t + dn_t) and dv_t = i'_t dC_t^T k_t.

Gate gradients need <dC_t, C_t> for every t, a product of a forward and a backward state. It
telescopes into per-token scalars (sums run inside t's document; the final-state term only in the
row's last document):

    P_t = <dC_t, C_t> + <dn_t, n_t> = sum_{u >= t} q_u . dq_u + <dC_T, C_T> + <dn_T, n_T>
                                      - sum_{s > t} k_s . dk_s,

so f'_t df'_t = P_t - k_t . dk_t and i'_t di'_t = k_t . dk_t. These, the stabiliser's own
gradients (through f', i' and the exp(-m) floor of the denominator) and the reverse scan of
m_t = max(lf_t + m_{t-1}, i_t) are cheap [B, T, H] tensor ops done in PyTorch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from recurlm.kernels.mlstm.state import MLSTMState, initial_mlstm_state


@triton.jit
def _logsigmoid(x):
    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _program_tile(H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """Program (value block, batch * head) -> its indices, offsets and masks."""
    i_v = tl.program_id(0)
    i_bh = tl.program_id(1)
    ok = tl.arange(0, BK)
    ov = i_v * BV + tl.arange(0, BV)
    mask_k = ok < K
    mask_v = ov < V
    return i_v, i_bh, i_bh // H, i_bh % H, ok, ov, mask_k, mask_v, mask_k[:, None] & mask_v[None, :]


@triton.jit
def _load_token(q, k, v, i, f, token, ok, ov, mask_k, mask_v, scale, K: tl.constexpr, V: tl.constexpr):
    """Token ``token`` (flat index into [B, T, H]): scaled q [BK], k [BK], v [BV], i, logsigmoid(f)."""
    q_t = tl.load(q + token * K + ok, mask=mask_k, other=0.0) * scale
    k_t = tl.load(k + token * K + ok, mask=mask_k, other=0.0)
    v_t = tl.load(v + token * V + ov, mask=mask_v, other=0.0)
    return q_t, k_t, v_t, tl.load(i + token), _logsigmoid(tl.load(f + token))


@triton.jit
def _mlstm_fwd_kernel(q, k, v, i, f, resets, C0, n0, m0, h, m_seq, qn_seq, CT, nT, mT, dnum, dqn, dq,
                      T, BTH, scale, eps,
                      H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                      HAS_RESETS: tl.constexpr, HAS_INITIAL: tl.constexpr, STORE_FINAL: tl.constexpr,
                      DQ_MODE: tl.constexpr):
    i_v, i_bh, i_b, i_h, ok, ov, mask_k, mask_v, mask_kv = _program_tile(H, K, V, BK, BV)
    first_block = i_v == 0

    C = tl.zeros([BK, BV], dtype=tl.float32)
    n = tl.zeros([BK], dtype=tl.float32)
    m = tl.sum(tl.zeros([1], dtype=tl.float32), axis=0)
    if HAS_INITIAL:
        C = tl.load(C0 + i_bh * K * V + ok[:, None] * V + ov[None, :], mask=mask_kv, other=0.0)
        n = tl.load(n0 + i_bh * K + ok, mask=mask_k, other=0.0)
        m = tl.load(m0 + i_bh)
    for t in range(T):
        token = (i_b * T + t) * H + i_h
        q_t, k_t, v_t, i_t, log_f = _load_token(q, k, v, i, f, token, ok, ov, mask_k, mask_v, scale, K, V)
        if HAS_RESETS:
            fresh = tl.load(resets + i_b * T + t) != 0
            C = tl.where(fresh, 0.0, C)
            n = tl.where(fresh, 0.0, n)
            m = tl.where(fresh, 0.0, m)
        m_new = tl.maximum(log_f + m, i_t)
        f_act = tl.exp(log_f + m - m_new)
        i_act = tl.exp(i_t - m_new)
        C = f_act * C + i_act * (k_t[:, None] * v_t[None, :])
        n = f_act * n + i_act * k_t
        m = m_new
        if DQ_MODE:
            dnum_t = tl.load(dnum + token * V + ov, mask=mask_v, other=0.0)
            dqn_t = tl.load(dqn + token)
            dq_t = tl.sum(C * dnum_t[None, :], axis=1) + tl.where(first_block, n * dqn_t, 0.0)
            tl.store(dq + (i_v * BTH + token) * K + ok, dq_t * scale, mask=mask_k)
        else:
            numerator = tl.sum(q_t[:, None] * C, axis=0)
            qn = tl.sum(q_t * n, axis=0)
            denominator = tl.maximum(tl.abs(qn), tl.exp(-m)) + eps
            tl.store(h + token * V + ov, numerator / denominator, mask=mask_v)
            tl.store(m_seq + token, m)     # every value block writes the same m and qn
            tl.store(qn_seq + token, qn)
    if STORE_FINAL:
        tl.store(CT + i_bh * K * V + ok[:, None] * V + ov[None, :], C, mask=mask_kv)
        tl.store(nT + i_bh * K + ok, n, mask=mask_k)
        tl.store(mT + i_bh, m)


@triton.jit
def _mlstm_bwd_kernel(q, k, v, i, f, resets, m0, m_seq, dnum, dqn, dCT, dnT, dk, dv, dC0, dn0,
                      T, BTH, scale,
                      H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                      HAS_RESETS: tl.constexpr, HAS_INITIAL: tl.constexpr, HAS_DFINAL: tl.constexpr):
    i_v, i_bh, i_b, i_h, ok, ov, mask_k, mask_v, mask_kv = _program_tile(H, K, V, BK, BV)
    first_block = i_v == 0

    dC = tl.zeros([BK, BV], dtype=tl.float32)
    dn = tl.zeros([BK], dtype=tl.float32)
    if HAS_DFINAL:
        dC = tl.load(dCT + i_bh * K * V + ok[:, None] * V + ov[None, :], mask=mask_kv, other=0.0)
        dn = tl.load(dnT + i_bh * K + ok, mask=mask_k, other=0.0)
    m_initial = tl.sum(tl.zeros([1], dtype=tl.float32), axis=0)
    if HAS_INITIAL:
        m_initial = tl.load(m0 + i_bh)
    for step in range(T):
        t = T - 1 - step
        token = (i_b * T + t) * H + i_h
        q_t, k_t, v_t, i_t, log_f = _load_token(q, k, v, i, f, token, ok, ov, mask_k, mask_v, scale, K, V)
        m_t = tl.load(m_seq + token)
        m_prev = tl.load(m_seq + token - H, mask=t > 0, other=m_initial)
        dnum_t = tl.load(dnum + token * V + ov, mask=mask_v, other=0.0)
        dC += q_t[:, None] * dnum_t[None, :]
        dn += q_t * tl.load(dqn + token)
        i_act = tl.exp(i_t - m_t)
        dk_t = i_act * (tl.sum(dC * v_t[None, :], axis=1) + tl.where(first_block, dn, 0.0))
        tl.store(dk + (i_v * BTH + token) * K + ok, dk_t, mask=mask_k)
        tl.store(dv + token * V + ov, i_act * tl.sum(dC * k_t[:, None], axis=0), mask=mask_v)
        f_act = tl.exp(log_f + m_prev - m_t)
        if HAS_RESETS:
            f_act = tl.where(tl.load(resets + i_b * T + t) != 0, 0.0, f_act)
        dC = f_act * dC
        dn = f_act * dn
    if HAS_INITIAL:
        tl.store(dC0 + i_bh * K * V + ok[:, None] * V + ov[None, :], dC, mask=mask_kv)
        tl.store(dn0 + i_bh * K + ok, dn, mask=mask_k)


def _segment_reverse_cumsum(x: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """y_t = sum of x_u over t <= u < (first start after t), along dim 1 of x [B, T, ...].

    starts [B, T, ...] bool (broadcastable to x) marks where a segment begins."""
    seq_len = x.shape[1]
    positions = torch.arange(seq_len, device=x.device).view(1, -1, *([1] * (x.dim() - 2)))
    start_at = torch.where(starts.expand_as(x), positions, seq_len)
    following = torch.cat([start_at[:, 1:], torch.full_like(start_at[:, :1], seq_len)], 1)
    next_start = following.flip(1).cummin(1).values.flip(1)
    suffix = torch.cat([x.flip(1).cumsum(1).flip(1), torch.zeros_like(x[:, :1])], 1)
    return suffix[:, :seq_len] - torch.gather(suffix, 1, next_start)


def _gate_gradients(q_dq: torch.Tensor, k_dk: torch.Tensor, i: torch.Tensor, f: torch.Tensor,
                    m0: torch.Tensor, m_seq: torch.Tensor, starts: torch.Tensor, dm: torch.Tensor,
                    final_pair: torch.Tensor, dm_final: torch.Tensor | None,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of i, f [B, T, H] and of the initial stabiliser m0 [B, H].

    q_dq, k_dk: [B, T, H, K] products q * dq and k * dk; m_seq [B, T, H] the stabilisers;
    starts [B, T, 1] bool document starts; dm [B, T, H] the direct gradient of each m_t (through
    the exp(-m_t) floor); final_pair [B, H] = <dC_T, C_T> + <dn_T, n_T>; dm_final [B, H] or None.
    """
    q_dq, k_dk = q_dq.sum(-1), k_dk.sum(-1)                                         # [B, T, H]
    in_last_doc = (starts.long().flip(1).cumsum(1).flip(1) - starts.long()) == 0
    # f'_t df'_t = <dC_t, C_t> + <dn_t, n_t> - k_t . dk_t, telescoped (module docstring)
    decay_grad = _segment_reverse_cumsum(q_dq - k_dk, starts) + torch.where(in_last_doc, final_pair[:, None], 0.0)
    decay_grad = torch.where(starts, 0.0, decay_grad)
    # f' = exp(lf_t + m_{t-1} - m_t) and i' = exp(i_t - m_t) (i'_t di'_t = k_t . dk_t) move m too
    dm = dm - decay_grad - k_dk
    dm[:, :-1] += decay_grad[:, 1:]
    if dm_final is not None:
        dm[:, -1] += dm_final
    # reverse scan of m_t = max(lf_t + m_{t-1}, i_t); a document start cuts the chain
    m_prev = torch.where(starts, 0.0, torch.cat([m0[:, None], m_seq[:, :-1]], 1))
    forget_wins = F.logsigmoid(f) + m_prev >= i
    dm_total = _segment_reverse_cumsum(dm, starts | ~forget_wins)
    d_log_f = decay_grad + torch.where(forget_wins, dm_total, 0.0)
    d_i = k_dk + torch.where(forget_wins, 0.0, dm_total)
    d_m0 = torch.where(starts[:, 0] | ~forget_wins[:, 0], 0.0, dm_total[:, 0]) + decay_grad[:, 0]
    return d_i, d_log_f * torch.sigmoid(-f), d_m0


STATE_TILE_ELEMENTS = 4096
"""Elements of the [BK, BV] state tile one program keeps in registers: 32 float32 registers per
thread at 4 warps. The backward holds two such tiles (dC and a product) plus vectors; larger tiles
spilled (mLSTM at head dim 768+ spilled 4.7-16 KB per thread with BV = 64, ``recurlm-doctor compile``)."""


def _launch_config(dk: int, dv: int, block_v: int | None) -> tuple[int, int, int, int]:
    """(BK, BV, number of value blocks, warps). The key dim is not split (h needs the whole q . C
    column), so large heads take narrower value blocks (more programs per head) to keep the tile
    at ``STATE_TILE_ELEMENTS``; warps grow only where even BV = 8 exceeds it."""
    block_k = triton.next_power_of_2(dk)
    if block_v is None:
        block_v = max(8, min(triton.next_power_of_2(dv), 64, STATE_TILE_ELEMENTS // block_k))
    num_warps = max(4, min(16, 4 * block_k * block_v // STATE_TILE_ELEMENTS))
    return block_k, block_v, triton.cdiv(dv, block_v), num_warps


class _MLSTMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, i, f, resets, has_initial, eps, block_v, C0, n0, m0):
        batch, seq_len, heads, dk = q.shape
        dv = v.shape[-1]
        block_k, block_v, num_v_blocks, num_warps = _launch_config(dk, dv, block_v)
        h = q.new_empty(batch, seq_len, heads, dv)
        m_seq, qn_seq = q.new_empty(2, batch, seq_len, heads)
        CT, nT, mT = torch.empty_like(C0), torch.empty_like(n0), torch.empty_like(m0)
        common = dict(H=heads, K=dk, V=dv, BK=block_k, BV=block_v, HAS_RESETS=resets is not None,
                      HAS_INITIAL=has_initial, num_warps=num_warps)
        resets_arg = resets.to(torch.int8) if resets is not None else q
        _mlstm_fwd_kernel[(num_v_blocks, batch * heads)](
            q, k, v, i, f, resets_arg, C0, n0, m0, h, m_seq, qn_seq, CT, nT, mT, h, qn_seq, h,
            seq_len, batch * seq_len * heads, dk ** -0.5, eps, STORE_FINAL=True, DQ_MODE=False, **common)
        ctx.save_for_backward(q, k, v, i, f, resets_arg, C0, n0, m0, h, m_seq, qn_seq, CT, nT)
        ctx.config = (eps, block_v, resets is not None, has_initial)
        return h, CT, nT, mT

    @staticmethod
    def backward(ctx, dh, dCT, dnT, dmT):
        q, k, v, i, f, resets, C0, n0, m0, h, m_seq, qn_seq, CT, nT = ctx.saved_tensors
        eps, block_v, has_resets, has_initial = ctx.config
        batch, seq_len, heads, dk = q.shape
        dv = v.shape[-1]
        block_k, block_v, num_v_blocks, num_warps = _launch_config(dk, dv, block_v)
        dh = torch.zeros_like(h) if dh is None else dh.contiguous()
        has_dfinal = dCT is not None or dnT is not None
        dCT = torch.zeros_like(CT) if dCT is None else dCT.contiguous()
        dnT = torch.zeros_like(nT) if dnT is None else dnT.contiguous()

        # h = num / den, den = max(|qn|, exp(-m)) + eps: split d(den) between qn and m
        floor = torch.exp(-m_seq)
        den = torch.maximum(qn_seq.abs(), floor) + eps
        d_den = -(dh * h).sum(-1) / den
        qn_wins = qn_seq.abs() > floor
        dqn = torch.where(qn_wins, d_den * torch.sign(qn_seq), 0.0)
        dm = torch.where(qn_wins, 0.0, -d_den * floor)
        dnum = dh / den[..., None]

        common = dict(H=heads, K=dk, V=dv, BK=block_k, BV=block_v, HAS_RESETS=has_resets,
                      HAS_INITIAL=has_initial, num_warps=num_warps)
        grid = (num_v_blocks, batch * heads)
        bth = batch * seq_len * heads
        dq = q.new_empty(num_v_blocks, batch, seq_len, heads, dk)
        _mlstm_fwd_kernel[grid](q, k, v, i, f, resets, C0, n0, m0, h, m_seq, qn_seq, CT, nT, m0, dnum,
                                dqn, dq, seq_len, bth, dk ** -0.5, eps, STORE_FINAL=False, DQ_MODE=True,
                                **common)
        dk_blocks = q.new_empty(num_v_blocks, batch, seq_len, heads, dk)
        dv_ = torch.empty_like(v)
        dC0, dn0 = torch.zeros_like(C0), torch.zeros_like(n0)
        _mlstm_bwd_kernel[grid](q, k, v, i, f, resets, m0, m_seq, dnum, dqn, dCT, dnT, dk_blocks, dv_,
                                dC0, dn0, seq_len, bth, dk ** -0.5, HAS_DFINAL=has_dfinal, **common)
        dq, dk_ = dq.sum(0), dk_blocks.sum(0)

        starts = resets.bool()[..., None] if has_resets else torch.zeros_like(m_seq[:, :, :1], dtype=torch.bool)
        d_i, d_f, d_m0 = _gate_gradients(q * dq, k * dk_, i, f, m0, m_seq, starts, dm,
                                         (dCT * CT).sum((-1, -2)) + (dnT * nT).sum(-1), dmT)
        d_initial = (dC0, dn0, d_m0) if has_initial else (None, None, None)
        return dq, dk_, dv_, d_i, d_f, None, None, None, None, *d_initial


def triton_mlstm(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: torch.Tensor, f: torch.Tensor,
                 initial_state: MLSTMState | None = None, output_final_state: bool = False,
                 resets: torch.Tensor | None = None, eps: float = 1e-6, block_v: int | None = None,
                 ) -> tuple[torch.Tensor, MLSTMState | None]:
    """Same contract as ``naive_mlstm``; runs in float32 on chip. ``block_v``: value columns per
    program (default: ``_launch_config``, at most 64 and at most STATE_TILE_ELEMENTS / BK)."""
    batch, seq_len, heads, dk = q.shape
    state = initial_mlstm_state(initial_state, batch, heads, dk, v.shape[-1], torch.float32, q.device)
    args = [x.float().contiguous() for x in (q, k, v, i, f)]
    h, C, n, m = _MLSTMFunction.apply(*args, resets, initial_state is not None, eps, block_v,
                                      *(s.contiguous() for s in state))
    return h.to(q.dtype), (MLSTMState(C, n, m) if output_final_state else None)
