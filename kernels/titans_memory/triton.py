"""Triton kernel of the Titans memory, linear (depth 1) memory: fused chunk forward and backward.

The gate-only part (cumulative log-gates -> the coefficient matrices of chunk.py) stays in PyTorch
(``chunk_coefficients``; O(C^2) per chunk without the head dim, autograd through it). The kernels do
the D-heavy part: one program per (batch, head) walks the chunks, holding M and S [D, D] on chip.
Per chunk of C tokens (q, k, v [C, D]; W the initial memory; f the "after a reset" token mask):

    u   = 2 (where(f, k W, k M) - v)                         gradients at the mini-batch start
    y   = rM * (q M) + rS * (q S) + rI * (q W) - (Gam * q k^T) u
    M'  = mM M + mS S + mI W - k^T (gM * u)
    S'  = sS S - k^T (gS * u)

The backward kernel runs the chunks in reverse with dM, dS carried, re-using the chunk-start
states stored by the forward, and returns the gradients of the data, the states and of every
coefficient; autograd then takes them through ``chunk_coefficients`` to theta, eta and alpha.
Chunk and head dims are zero-padded to powers of two >= 16 (tl.dot shapes); padded tokens and
channels carry zeros and stay zero. fp32 dots here (tf32 on GPU); state in fp32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from recurlm.kernels.titans_memory.chunk import ChunkCoefficients, chunk_coefficients
from recurlm.kernels.titans_memory.common import TitansMemoryState, Weights, start_state


@triton.jit
def _load_chunk(q_ptr, k_ptr, v_ptr, f_ptr, gam_ptr, rm_ptr, rs_ptr, ri_ptr, gm_ptr, gs_ptr, chunk, mem, init, cols,
                BT: tl.constexpr, BD: tl.constexpr):
    """Load chunk ``chunk`` (q, k [BT, BD], v [BT, BV] at value columns ``cols``, the fresh mask and
    coefficient rows [BT], Gam [BT, BT]) and compute u = 2 (k M_base - v) [BT, BV] for those columns,
    M_base = init for fresh tokens, else mem (both [BD, BV])."""
    t = tl.arange(0, BT)
    tile_td = t[:, None] * BD + tl.arange(0, BD)[None, :]
    q = tl.load(q_ptr + chunk * BT * BD + tile_td)
    k = tl.load(k_ptr + chunk * BT * BD + tile_td)
    v = tl.load(v_ptr + chunk * BT * BD + t[:, None] * BD + cols[None, :])
    fresh = tl.load(f_ptr + chunk * BT + t)
    gam = tl.load(gam_ptr + chunk * BT * BT + t[:, None] * BT + t[None, :])
    rm = tl.load(rm_ptr + chunk * BT + t)
    rs = tl.load(rs_ptr + chunk * BT + t)
    ri = tl.load(ri_ptr + chunk * BT + t)
    gm = tl.load(gm_ptr + chunk * BT + t)
    gs = tl.load(gs_ptr + chunk * BT + t)
    u = 2.0 * (fresh[:, None] * tl.dot(k, init) + (1.0 - fresh[:, None]) * tl.dot(k, mem) - v)
    return q, k, fresh, gam, rm, rs, ri, gm, gs, u


@triton.jit
def _fwd_kernel(q_ptr, k_ptr, v_ptr, f_ptr, gam_ptr, rm_ptr, rs_ptr, ri_ptr, gm_ptr, gs_ptr,
                mm_ptr, ms_ptr, mi_ptr, ss_ptr, m0_ptr, s0_ptr, w_ptr,
                y_ptr, m_chunks_ptr, s_chunks_ptr, m_end_ptr, s_end_ptr,
                N, BT: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr):
    bh = tl.program_id(0)
    cols = tl.program_id(1) * BV + tl.arange(0, BV)          # this program's value columns
    t = tl.arange(0, BT)
    d = tl.arange(0, BD)
    tile_tc = t[:, None] * BD + cols[None, :]
    tile_dc = d[:, None] * BD + cols[None, :]
    mem = tl.load(m0_ptr + bh * BD * BD + tile_dc)
    mom = tl.load(s0_ptr + bh * BD * BD + tile_dc)
    init = tl.load(w_ptr + bh * BD * BD + tile_dc)
    for n in range(N):
        chunk = bh * N + n
        tl.store(m_chunks_ptr + chunk * BD * BD + tile_dc, mem)
        tl.store(s_chunks_ptr + chunk * BD * BD + tile_dc, mom)
        q, k, fresh, gam, rm, rs, ri, gm, gs, u = _load_chunk(
            q_ptr, k_ptr, v_ptr, f_ptr, gam_ptr, rm_ptr, rs_ptr, ri_ptr, gm_ptr, gs_ptr, chunk, mem, init, cols,
            BT, BD)
        scores = gam * tl.dot(q, tl.trans(k))
        y = (rm[:, None] * tl.dot(q, mem) + rs[:, None] * tl.dot(q, mom) + ri[:, None] * tl.dot(q, init)
             - tl.dot(scores, u))
        tl.store(y_ptr + chunk * BT * BD + tile_tc, y)
        kt = tl.trans(k)
        mem_next = (tl.load(mm_ptr + chunk) * mem + tl.load(ms_ptr + chunk) * mom + tl.load(mi_ptr + chunk) * init
                    - tl.dot(kt, gm[:, None] * u))
        mom = tl.load(ss_ptr + chunk) * mom - tl.dot(kt, gs[:, None] * u)
        mem = mem_next
    tl.store(m_end_ptr + bh * BD * BD + tile_dc, mem)
    tl.store(s_end_ptr + bh * BD * BD + tile_dc, mom)


@triton.jit
def _bwd_kernel(q_ptr, k_ptr, v_ptr, f_ptr, gam_ptr, rm_ptr, rs_ptr, ri_ptr, gm_ptr, gs_ptr,
                mm_ptr, ms_ptr, mi_ptr, ss_ptr, w_ptr, m_chunks_ptr, s_chunks_ptr,
                dy_ptr, dm_end_ptr, ds_end_ptr,
                dq_ptr, dk_ptr, dv_ptr, dgam_ptr, drm_ptr, drs_ptr, dri_ptr, dgm_ptr, dgs_ptr,
                dmm_ptr, dms_ptr, dmi_ptr, dss_ptr, dm0_ptr, ds0_ptr, dw_ptr,
                N, BT: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr):
    """Gradients of value columns ``cols``: dv, dM0, dS0, dW are column-local; every other
    gradient sums over all columns, so this program writes its partial sum at partial block
    ``program_id(1)`` of a [column blocks, ...] buffer (summed by the caller)."""
    bh = tl.program_id(0)
    cols = tl.program_id(1) * BV + tl.arange(0, BV)
    part = tl.program_id(1) * tl.num_programs(0) * N          # offset of this column block's partials, in chunks
    t = tl.arange(0, BT)
    d = tl.arange(0, BD)
    tile_td = t[:, None] * BD + d[None, :]
    tile_tc = t[:, None] * BD + cols[None, :]
    tile_tt = t[:, None] * BT + t[None, :]
    tile_dc = d[:, None] * BD + cols[None, :]
    init = tl.load(w_ptr + bh * BD * BD + tile_dc)
    dmem = tl.load(dm_end_ptr + bh * BD * BD + tile_dc)       # gradient w.r.t. the chunk-end M
    dmom = tl.load(ds_end_ptr + bh * BD * BD + tile_dc)
    dinit = tl.zeros([BD, BV], dtype=tl.float32)
    for i in range(N):
        n = N - 1 - i
        chunk = bh * N + n
        mem = tl.load(m_chunks_ptr + chunk * BD * BD + tile_dc)
        mom = tl.load(s_chunks_ptr + chunk * BD * BD + tile_dc)
        dy = tl.load(dy_ptr + chunk * BT * BD + tile_tc)
        # recompute the forward quantities of this chunk
        q, k, fresh, gam, rm, rs, ri, gm, gs, u = _load_chunk(
            q_ptr, k_ptr, v_ptr, f_ptr, gam_ptr, rm_ptr, rs_ptr, ri_ptr, gm_ptr, gs_ptr, chunk, mem, init, cols,
            BT, BD)
        mm = tl.load(mm_ptr + chunk)
        ms = tl.load(ms_ptr + chunk)
        mi = tl.load(mi_ptr + chunk)
        ss = tl.load(ss_ptr + chunk)
        qk = tl.dot(q, tl.trans(k))
        k_dmem = tl.dot(k, dmem)
        k_dmom = tl.dot(k, dmom)
        # coefficient gradients (partial sums over this program's columns)
        tl.store(drm_ptr + (part + chunk) * BT + t, tl.sum(dy * tl.dot(q, mem), axis=1))
        tl.store(drs_ptr + (part + chunk) * BT + t, tl.sum(dy * tl.dot(q, mom), axis=1))
        tl.store(dri_ptr + (part + chunk) * BT + t, tl.sum(dy * tl.dot(q, init), axis=1))
        tl.store(dgm_ptr + (part + chunk) * BT + t, -tl.sum(k_dmem * u, axis=1))
        tl.store(dgs_ptr + (part + chunk) * BT + t, -tl.sum(k_dmom * u, axis=1))
        tl.store(dmm_ptr + part + chunk, tl.sum(tl.sum(dmem * mem, axis=1), axis=0))
        tl.store(dms_ptr + part + chunk, tl.sum(tl.sum(dmem * mom, axis=1), axis=0))
        tl.store(dmi_ptr + part + chunk, tl.sum(tl.sum(dmem * init, axis=1), axis=0))
        tl.store(dss_ptr + part + chunk, tl.sum(tl.sum(dmom * mom, axis=1), axis=0))
        d_scores = -tl.dot(dy, tl.trans(u))                   # d(Gam * q k^T), partial
        tl.store(dgam_ptr + (part + chunk) * BT * BT + tile_tt, d_scores * qk)
        d_qk = d_scores * gam
        # gradient of u = 2 (k M_base - v) from y, M' and S' (column-local)
        du = -tl.dot(tl.trans(gam * qk), dy) - gm[:, None] * k_dmem - gs[:, None] * k_dmom
        dq = (rm[:, None] * tl.dot(dy, tl.trans(mem)) + rs[:, None] * tl.dot(dy, tl.trans(mom))
              + ri[:, None] * tl.dot(dy, tl.trans(init)) + tl.dot(d_qk, k))
        dk = (tl.dot(tl.trans(d_qk), q) - gm[:, None] * tl.dot(u, tl.trans(dmem))
              - gs[:, None] * tl.dot(u, tl.trans(dmom))
              + 2.0 * (fresh[:, None] * tl.dot(du, tl.trans(init)) + (1.0 - fresh[:, None]) * tl.dot(du, tl.trans(mem))))
        tl.store(dq_ptr + (part + chunk) * BT * BD + tile_td, dq)
        tl.store(dk_ptr + (part + chunk) * BT * BD + tile_td, dk)
        tl.store(dv_ptr + chunk * BT * BD + tile_tc, -2.0 * du)
        qt = tl.trans(q)
        kt = tl.trans(k)
        dinit += tl.dot(qt, ri[:, None] * dy) + mi * dmem + 2.0 * tl.dot(kt, fresh[:, None] * du)
        dmem_prev = tl.dot(qt, rm[:, None] * dy) + mm * dmem + 2.0 * tl.dot(kt, (1.0 - fresh[:, None]) * du)
        dmom = tl.dot(qt, rs[:, None] * dy) + ms * dmem + ss * dmom
        dmem = dmem_prev
    tl.store(dm0_ptr + bh * BD * BD + tile_dc, dmem)
    tl.store(ds0_ptr + bh * BD * BD + tile_dc, dmom)
    tl.store(dw_ptr + bh * BD * BD + tile_dc, dinit)


COLUMN_BLOCK = 16
"""Value columns of the memory per program: the [BD, BV] state tiles of a program shrink with it.
At one program per head (BV = BD = 64) the kernels spilled 13 KB (forward) and 35 KB (backward) per
thread on sm_80, at BV = 32 the backward still 2.2 KB (``recurlm-doctor compile``). The columns of
M and S evolve independently (their updates mix rows only), so a head splits over BD / BV
programs, and the gradients that sum over columns (q, k, the coefficients) are summed over the
column blocks afterwards."""

MAX_REGISTERS = 255
"""Registers per thread allowed to ptxas (``maxnreg``; 255 x 256 threads fits the 64K register
file). Left to itself, ptxas gave these kernels 32 registers on sm_80 and spilled 8-15 KB."""


def _launch_options(block_d: int) -> dict:
    """Warps per program (8 from head dim 64: the [BT, BD] and [BD, BV] tiles of the backward) and
    the register cap."""
    return dict(num_warps=4 if block_d <= 32 else 8, maxnreg=MAX_REGISTERS)


class _LinearChunkFunction(torch.autograd.Function):
    """Inputs (all fp32, contiguous, padded): q, k, v [BH, N, BT, BD]; fresh, rM, rS, rI, gM, gS
    [BH, N, BT]; Gam [BH, N, BT, BT]; mM, mS, mI, sS [BH, N]; M0, S0, W [BH, BD, BD].
    Outputs y [BH, N, BT, BD], M_end, S_end [BH, BD, BD]."""

    @staticmethod
    def forward(ctx, q, k, v, fresh, gam, rm, rs, ri, gm, gs, mm, ms, mi, ss, m0, s0, w):
        BH, N, BT, BD = q.shape
        BV = min(BD, COLUMN_BLOCK)
        y = torch.empty_like(q)
        m_chunks = q.new_empty(BH, N, BD, BD)
        s_chunks = q.new_empty(BH, N, BD, BD)
        m_end, s_end = torch.empty_like(m0), torch.empty_like(s0)
        _fwd_kernel[(BH, BD // BV)](q, k, v, fresh, gam, rm, rs, ri, gm, gs, mm, ms, mi, ss, m0, s0, w,
                                    y, m_chunks, s_chunks, m_end, s_end, N, BT=BT, BD=BD, BV=BV,
                                    **_launch_options(BD))
        ctx.save_for_backward(q, k, v, fresh, gam, rm, rs, ri, gm, gs, mm, ms, mi, ss, w, m_chunks, s_chunks)
        return y, m_end, s_end

    @staticmethod
    def backward(ctx, dy, dm_end, ds_end):
        q, k, v, fresh, gam, rm, rs, ri, gm, gs, mm, ms, mi, ss, w, m_chunks, s_chunks = ctx.saved_tensors
        BH, N, BT, BD = q.shape
        BV = min(BD, COLUMN_BLOCK)
        blocks = BD // BV
        partial = lambda x: x.new_empty(blocks, *x.shape)    # one partial sum per column block
        dq, dk, dgam = partial(q), partial(k), partial(gam)
        dv = torch.empty_like(v)
        drm, drs, dri, dgm, dgs = (partial(rm) for _ in range(5))
        dmm, dms, dmi, dss = (partial(mm) for _ in range(4))
        dm0, ds0, dw = (torch.empty_like(w) for _ in range(3))
        zeros_if_none = lambda g, like: torch.zeros_like(like) if g is None else g.contiguous()
        _bwd_kernel[(BH, blocks)](q, k, v, fresh, gam, rm, rs, ri, gm, gs, mm, ms, mi, ss, w, m_chunks, s_chunks,
                                  zeros_if_none(dy, q), zeros_if_none(dm_end, w), zeros_if_none(ds_end, w),
                                  dq, dk, dv, dgam, drm, drs, dri, dgm, dgs, dmm, dms, dmi, dss, dm0, ds0, dw,
                                  N, BT=BT, BD=BD, BV=BV, **_launch_options(BD))
        dq, dk, dgam, drm, drs, dri, dgm, dgs, dmm, dms, dmi, dss = (
            x.sum(0) for x in (dq, dk, dgam, drm, drs, dri, dgm, dgs, dmm, dms, dmi, dss))
        return dq, dk, dv, None, dgam, drm, drs, dri, dgm, dgs, dmm, dms, dmi, dss, dm0, ds0, dw


def _block(n: int) -> int:
    """Padded size of a tl.dot dimension: a power of two, at least 16."""
    return max(16, triton.next_power_of_2(n))


def triton_titans_memory(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, theta: torch.Tensor,
                         eta: torch.Tensor, alpha: torch.Tensor, init_weights: Weights | None = None,
                         initial_state: TitansMemoryState | None = None, resets: torch.Tensor | None = None,
                         chunk_size: int = 16, activation: str = "gelu",
                         ) -> tuple[torch.Tensor, TitansMemoryState]:
    """Linear memory only. q, k, v [B, T, H, D]; theta, eta, alpha [B, T, H]; resets [B, T]
    -> (y [B, T, H, D] in the input dtype, final TitansMemoryState in float32). ``activation`` is unused
    by the linear memory (accepted for a uniform signature)."""
    B, T, H, D = q.shape
    if len(init_weights if init_weights is not None else initial_state.weights) != 1:
        raise NotImplementedError("the Triton titans_memory kernel covers the linear (depth 1) memory only")
    C, BT, BD = chunk_size, _block(chunk_size), _block(D)
    N = -(-T // C)
    coeffs = chunk_coefficients(theta.float(), eta.float(), alpha.float(), resets, C)
    state = start_state(init_weights, initial_state, B, torch.float32)
    init = (state.weights[0].new_zeros(B, H, D, D) if coeffs.fresh is None
            else init_weights[0].float().expand(B, H, D, D))

    def tokens(x: torch.Tensor) -> torch.Tensor:     # [B, T, H, D] -> [B*H, N, BT, BD]
        x = F.pad(x.float().transpose(1, 2), (0, BD - D, 0, N * C - T)).reshape(B, H, N, C, BD)
        return F.pad(x, (0, 0, 0, BT - C)).reshape(B * H, N, BT, BD)

    def rows(x: torch.Tensor) -> torch.Tensor:       # [B, H, N, C] -> [B*H, N, BT]
        return F.pad(x.expand(B, H, N, C), (0, BT - C)).reshape(B * H, N, BT)

    def matrix(x: torch.Tensor) -> torch.Tensor:     # [B, H, D, D] -> [B*H, BD, BD]
        return F.pad(x, (0, BD - D, 0, BD - D)).reshape(B * H, BD, BD)

    c: ChunkCoefficients = coeffs
    no_reset_rows = c.read_mem.new_zeros(B, H, N, C)
    fresh = no_reset_rows if c.fresh is None else c.fresh.to(torch.float32)
    read_init = no_reset_rows if c.read_init is None else c.read_init
    mem_init = c.mem_mem.new_zeros(B, H, N) if c.mem_init is None else c.mem_init
    gam = F.pad(c.read_grad, (0, BT - C, 0, BT - C)).reshape(B * H, N, BT, BT)
    y, m_end, s_end = _LinearChunkFunction.apply(
        tokens(q), tokens(k), tokens(v), rows(fresh), gam.contiguous(),
        *(rows(x).contiguous() for x in (c.read_mem, c.read_mom, read_init, c.mem_grad, c.mom_grad)),
        *(x.reshape(B * H, N).contiguous() for x in (c.mem_mem, c.mem_mom, mem_init, c.mom_mom)),
        matrix(state.weights[0]).contiguous(), matrix(state.momentum[0]).contiguous(), matrix(init).contiguous())
    y = y.reshape(B, H, N, BT, BD)[:, :, :, :C, :D].reshape(B, H, N * C, D)[:, :, :T].transpose(1, 2)
    unpad = lambda x: x.reshape(B, H, BD, BD)[..., :D, :D]
    return y.to(q.dtype), TitansMemoryState((unpad(m_end),), (unpad(s_end),))
