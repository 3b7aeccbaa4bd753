"""Chunkwise PyTorch form of gated linear attention with a per-key-channel decay (the CPU path).

Computes the recurrences of :mod:`recurlm.kernels.gla.naive` (GLA, and RWKV-6 with ``bonus``)
with a hand-written backward (:class:`_ChunkGLA`): autograd would save every
intermediate of the forward and replay it op by op.

Forward. The sequence is cut into n chunks of C tokens (default 32), all processed at once in a
chunk-major layout [n, B, H, C, D]. Inside a chunk write b_i = g_1 + ... + g_i for the cumulative
log decay, Gq_i for what query i has seen (b_i for GLA, whose query reads the state after its own
update; b_{i-1} for RWKV-6, which reads the state before it) and R for the cumulative decay at
the boundary in the middle of the chunk (after token C / 2). Then::

    A_ij = sum_k q_ik k_jk exp(Gq_ik - b_jk)  for j <= i (GLA) or j < i (RWKV-6), else 0
         = (q~ k~^T)_ij        q~ = q * exp(Gq - R),  k~ = k * exp(R - b)       (one matmul)
    A_ii = q_i . (u * k_i)     RWKV-6's bonus u, on the diagonal its decayed form leaves empty
    o    = A v + (q * exp(Gq)) S_{n-1}                      S_{n-1}: [K, V] before the chunk
    S_n  = exp(b_C) * S_{n-1} + (k * exp(b_C - b))^T v      (a short loop over the n chunks)

Stability. exp(Gq_i - b_j) <= 1 for every pair that is used, but its factors are not: with the
reference R in the middle of the chunk, pairs across R have both factors <= 1 (exact however
strong the decay), and pairs inside a half one factor of at most exp(the log decay of that half).
Factors are clamped at exp(FACTORISABLE_LOG_DECAY = 40), so the inside-half pairs are exact where
both halves decay by less than that in every channel; the halves of the other ("strong") chunks
are recomputed the same way as blocks of C / 2 tokens, recursively down to single tokens
(A_ii = q_i . k_i) (:func:`_block_weights`): matmuls all the way, on the strong blocks only. Log
decays of -20 per step, which would need exp(640) in a factorisation over a whole 32-token chunk,
stay finite and exact. Every other exponent is a sum of
log decays over a forward span (<= 0), and every running sum starts at the point it is measured
from (chunk start, chunk end, or R): all log decays have one sign, so a sum's rounding error is
relative to the sum itself, and no small exponent is the difference of two large cumulative sums.
Factors below about 1e-19 are flushed to zero (:func:`_exp2_flushed`) so that no subnormal
floats reach the matmuls (they make CPU matmuls up to 100x slower). Exponentials are taken in base
2 (g is converted to log2 units once; torch's exp2 is about 3x faster than exp on CPU).

Document resets are masks, never -inf log decays (so no exp(-inf - -inf)): pairs of different
documents are zeroed in A, tokens after a reset in a chunk do not read S_{n-1}, tokens before the
chunk's last reset do not write S_n, and a chunk with a reset does not carry S_{n-1}. Padding to
whole chunks uses k = 0, g = 0: identity steps.

Backward, given dO and the gradient dS of the final state. A reverse loop gives the gradient of
the state after every chunk::

    dS_{n-1} = exp(b_C) * dS_n + (q * exp(Gq))^T dO_n

then per chunk, with dA = dO v^T masked as A (its diagonal is RWKV-6's bonus gradient)::

    dv = A^T dO + (k * exp(b_C - b)) dS_n
    dq = exp(Gq - R) * (dA k~) + exp(Gq) * (dO S_{n-1}^T)        (+ dA_ii u * k_i)
    dk = exp(R - b) * (dA^T q~) + exp(b_C - b) * (v dS_n^T)      (+ dA_ii u * q_i)
    du = sum over tokens of dA_ii q_i * k_i

(strong chunks: the inside-half blocks of dA go down the same recursion). Decays: every term of o
and S_n carries q_i through exp(+Gq_i) and k_j through exp(-b_j), and S_n carries exp(b_C) as a
whole, so with dq and dk without their bonus parts, per channel::

    dL/db_i = q_i dq_i - k_i dk_i + [i = C] sum_v (S_n * dS_n)
    dg_i    = sum_{i <= l <= C} dL/db_l                   (GLA)
            = sum_{i <= l <= C} dL/db_l - q_i dq_i        (RWKV-6, whose Gq_i = b_i - g_i)

a reverse running sum of at most C terms inside each chunk. It holds with the reset masks: the
terms of a document that starts inside a chunk do not change when b is shifted over the whole
document, so the gradient of a reset token's decay sums to 0, as in the naive loop.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from recurlm.kernels.dispatch import compute_dtype

CHUNK_SIZE = 32
"""Tokens per chunk; a power of two (blocks are halved recursively). 32 balances matmul efficiency
(CPU GEMMs with 16 rows run at half speed) against the 2 C (K + V) per-token cost of the
intra-chunk weights and outputs and the number of strong chunks (measured: 16 and 64 are slower
on CPU)."""
FACTORISABLE_LOG_DECAY = 40.0
"""A block whose two halves each decay by less than exp(-40) in every channel takes A as one matmul
of factors within exp(+-40) (far from float32 overflow, products far from subnormals); the halves
of the other blocks (selected per call) are recomputed as smaller blocks."""
LOG2_E = 1 / math.log(2)


def _exp2_flushed(log2_decay: torch.Tensor, limit: float = 0.0) -> torch.Tensor:
    """2 ** x, with x clamped at ``limit`` above (factors > 1 of the factorisation) and flushed to
    exactly 0 below sqrt of the dtype's smallest normal (about 1e-19 in float32): such factors are
    negligible, and left as they are they or their products become subnormal floats, which make CPU
    matmuls up to 100x slower."""
    floor = math.log2(torch.finfo(log2_decay.dtype).tiny) / 2
    return F.threshold(log2_decay, floor, -math.inf).clamp_(max=limit).exp2_()


def _half_cumsums(g: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Running sums inside each half [0, m) and [m, C) of a block, along dim -2.

    Args:
        g: [..., C, K] log decays; m: where the second half starts.

    Returns:
        ahead [..., C, K]: sum of g from the start of i's half to i (inclusive);
        behind [..., C, K]: sum of g after i up to the end of i's half (exclusive).
    """
    C = g.shape[-2]
    ahead, behind = g.clone(), torch.empty_like(g)
    behind[..., [m - 1, C - 1], :] = 0
    # a loop of C vectorised adds: torch.cumsum along a non-innermost dim is 3x slower on CPU
    for i in range(1, C):
        if i != m:
            ahead[..., i, :] += ahead[..., i - 1, :]
    for i in range(C - 2, -1, -1):
        if i != m - 1:
            torch.add(behind[..., i + 1, :], g[..., i + 1, :], out=behind[..., i, :])
    return ahead, behind


def _scan_states(carry: torch.Tensor, updates: torch.Tensor, state: torch.Tensor, reverse: bool) -> torch.Tensor:
    """The linear recurrence S_{i+1} = carry_i * S_i + updates_i over chunks (or, reversed,
    S_i = carry_i * S_{i+1} + updates_i: the gradient of the states).

    Args:
        carry: [n, B, H, K]; updates: [n, B, H, K, V]; state: [B, H, K, V], S_0 (S_n if reversed).

    Returns:
        [n + 1, B, H, K, V]: S_0 ... S_n.
    """
    n = updates.shape[0]
    states = updates.new_empty(n + 1, *updates.shape[1:])
    states[n if reverse else 0] = state
    # views taken once, not per step: the loop is short but each step is a small op
    views, carry, updates = states.unbind(0), carry[..., None].unbind(0), updates.unbind(0)
    for i in (range(n - 1, -1, -1) if reverse else range(n)):
        source, target = (i + 1, i) if reverse else (i, i + 1)
        torch.addcmul(updates[i], carry[i], views[source], out=views[target])
    return states


def _halves(x: torch.Tensor) -> torch.Tensor:
    """[M, s, ...] blocks -> [2 M, s / 2, ...]: their first and second halves, interleaved."""
    return x.unflatten(1, (2, x.shape[1] // 2)).flatten(0, 1)


@dataclass
class _Blocks:
    """The weights A of blocks of s tokens at one level of the recursion, as the backward needs them."""
    q_factor: torch.Tensor | None  # [M, s, K]: exp(Gq - R), clamped at exp(40) (None for s = 1)
    k_factor: torch.Tensor | None  # [M, s, K]: exp(R - b), clamped at exp(40)
    q_mid: torch.Tensor | None  # q * q_factor
    k_mid: torch.Tensor | None  # k * k_factor
    strong: torch.Tensor | None  # [M'] blocks whose halves were recomputed at the level below
    halves: _Blocks | None  # that level, on the 2 M' halves


def _block_weights(q: torch.Tensor, k: torch.Tensor, g: torch.Tensor, ahead: torch.Tensor, behind: torch.Tensor,
                   exclusive: bool) -> tuple[torch.Tensor, _Blocks]:
    """Intra-block weights A_ij = sum_k q_ik k_jk exp(Gq_ik - b_jk) of blocks of s tokens.

    The reference R is the middle of the block: pairs across it take factors <= 1 (exact), pairs
    inside a half take factors within exp(+-40), exact where both halves decay by less than that;
    the halves of the other ("strong") blocks are recomputed as blocks of s / 2, down to single
    tokens (A_ii = q_i . k_i).

    Args:
        q, k: [M, s, K], s a power of two; g: [M, s, K] log2 decays; ahead, behind: [M, s, K],
            :func:`_half_cumsums` of g at the middle.
        exclusive: RWKV-6's Gq_i = b_i - g_i (else GLA's Gq = b).

    Returns:
        A [M, s, s], exact on and below the diagonal (the caller masks the rest: it is finite but
        meaningless), and what :func:`_block_weights_backward` needs.
    """
    M, s, K = q.shape
    if s == 1:
        return (q * k).sum(-1, keepdim=True), _Blocks(None, None, None, None, None, None)
    h = s // 2
    k_log = torch.cat([behind[:, :h], -ahead[:, h:]], dim=1)  # R - b_j, a running sum away from R
    q_log = -k_log - g if exclusive else -k_log  # Gq_i - R: GLA's Gq = b, RWKV-6's Gq_i = b_i - g_i
    limit = FACTORISABLE_LOG_DECAY * LOG2_E
    q_factor, k_factor = _exp2_flushed(q_log, limit), _exp2_flushed(k_log, limit)
    q_mid, k_mid = q * q_factor, k * k_factor
    attn = torch.bmm(q_mid, k_mid.transpose(1, 2))
    strong = (torch.minimum(ahead[:, h - 1], ahead[:, s - 1]).amin(-1) < -limit).nonzero().squeeze(1)
    halves = None
    if strong.numel():
        sub_q, sub_k, sub_g = (_halves(x[strong]) for x in (q, k, g))
        sub_attn, halves = _block_weights(sub_q, sub_k, sub_g, *_half_cumsums(sub_g, h // 2), exclusive)
        sub_attn = sub_attn.unflatten(0, (-1, 2))  # [M', 2, h, h]
        strong_attn = attn[strong]
        strong_attn[:, :h, :h], strong_attn[:, h:, h:] = sub_attn[:, 0], sub_attn[:, 1]
        attn[strong] = strong_attn
    return attn, _Blocks(q_factor, k_factor, q_mid, k_mid, strong, halves)


def _block_weights_backward(d_attn: torch.Tensor, q: torch.Tensor, k: torch.Tensor, blocks: _Blocks
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """dq, dk [M, s, K] of :func:`_block_weights` given d_attn [M, s, s] (zero above the diagonal;
    modified in place)."""
    if blocks.q_factor is None:  # single tokens
        return d_attn * k, d_attn * q
    h = q.shape[1] // 2
    strong, sub_d = blocks.strong, None
    if strong.numel():
        # the halves of strong blocks go to the level below, the factorised product keeps the rest
        strong_d = d_attn[strong]
        sub_d = torch.stack([strong_d[:, :h, :h], strong_d[:, h:, h:]], 1).flatten(0, 1)  # [2 M', h, h]
        strong_d[:, :h, :h], strong_d[:, h:, h:] = 0, 0
        d_attn[strong] = strong_d
    dq = torch.bmm(d_attn, blocks.k_mid).mul_(blocks.q_factor)
    dk = torch.bmm(d_attn.transpose(1, 2), blocks.q_mid).mul_(blocks.k_factor)
    if sub_d is not None:
        sub_dq, sub_dk = _block_weights_backward(sub_d, _halves(q[strong]), _halves(k[strong]), blocks.halves)
        dq[strong] += sub_dq.unflatten(0, (-1, 2)).flatten(1, 2)
        dk[strong] += sub_dk.unflatten(0, (-1, 2)).flatten(1, 2)
    return dq, dk


def _bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Matmul batched over the leading chunk, batch and head dims [n, B, H, ...]."""
    return torch.bmm(a.flatten(0, 2), b.flatten(0, 2)).unflatten(0, a.shape[:3])


def _to_chunks(x: torch.Tensor, C: int, dtype: torch.dtype, factor: float = 1.0) -> torch.Tensor:
    """[B, T, H, D] -> [n, B, H, C, D] (chunk-major, contiguous) in ``dtype``, zero padded to whole
    chunks, times ``factor``."""
    pad = -x.shape[1] % C
    # converted before the multiplication, which would otherwise round in x's (lower) precision
    x = F.pad(x.to(dtype), (0, 0, 0, 0, 0, pad)).unflatten(1, (-1, C)).permute(1, 0, 3, 2, 4)
    return torch.mul(x, factor, out=torch.empty(x.shape, dtype=dtype, device=x.device))


def _from_chunks(x: torch.Tensor, T: int, dtype: torch.dtype, factor: float = 1.0) -> torch.Tensor:
    """[n, B, H, C, D] -> [B, T, H, D] in ``dtype`` (padding dropped), times ``factor``."""
    n, B, H, C, D = x.shape
    out = torch.empty(B, n, C, H, D, dtype=x.dtype, device=x.device)
    torch.mul(x.permute(1, 0, 3, 2, 4), factor, out=out)
    return out.flatten(1, 2)[:, :T].to(dtype)


@dataclass
class _Saved:
    """What the backward needs from the forward; [n, B, H, C, D] unless said otherwise."""
    q: torch.Tensor  # scaled queries
    k: torch.Tensor
    v: torch.Tensor
    q_carry: torch.Tensor  # exp(Gq), 0 after a reset in the chunk
    k_carry: torch.Tensor  # exp(b_C - b), 0 before the chunk's last reset
    q_read: torch.Tensor  # q * q_carry, reads S_{n-1} (products are kept: recomputing costs more)
    k_write: torch.Tensor  # k * k_carry, writes S_n
    carry: torch.Tensor  # [n, B, H, K]: exp(b_C), 0 for chunks with a reset
    causal_offset: int  # A keeps j <= i + causal_offset: 0 (GLA) or -1 (RWKV-6, bonus aside)
    same_doc: torch.Tensor | None  # [n, B, 1, C, C] float, or None without resets
    attn: torch.Tensor  # [n, B, H, C, C]: A, masked, RWKV-6's bonus on the diagonal
    blocks: _Blocks  # how A was computed, chunks flattened to [n B H, C, K]
    states: torch.Tensor  # [n + 1, B, H, K, V]: S_0 (initial) ... S_n (final)


def _forward(q, k, v, g, bonus, initial_state, resets, scale, chunk_size) -> tuple[torch.Tensor, _Saved]:
    """The forward of the module docstring (arguments as :func:`chunk_gla`).

    Returns:
        o [n, B, H, C, V] in the accumulation dtype, and what the backward needs.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    dtype = compute_dtype(q.dtype)
    # short inputs: one chunk (T rounded up to a power of two) instead of a full padded chunk
    C = min(chunk_size, 2 ** max(math.ceil(math.log2(max(T, 1))), 1))
    m, pad = C // 2, -T % C
    q, k, v, g = _to_chunks(q, C, dtype, scale), _to_chunks(k, C, dtype), _to_chunks(v, C, dtype), \
        _to_chunks(g, C, dtype, LOG2_E)
    n = q.shape[0]
    exclusive = bonus is not None
    ahead, behind = _half_cumsums(g, m)
    attn, blocks = _block_weights(*(x.flatten(0, 2) for x in (q, k, g, ahead, behind)), exclusive)
    attn = attn.unflatten(0, (n, B, H))

    # state read and write: exponents Gq_i (from the chunk start) and b_C - b_j (to its end), each
    # a running sum away from its edge
    first_half, second_half = ahead[..., m - 1, :].clone(), ahead[..., C - 1, :].clone()  # [n, B, H, K]
    from_start, to_end = ahead, behind
    from_start[..., m:, :] += first_half[..., None, :]
    to_end[..., :m, :] += second_half[..., None, :]
    if exclusive:
        from_start = F.pad(from_start[..., :-1, :], (0, 0, 1, 0))
    q_carry, k_carry = _exp2_flushed(from_start), _exp2_flushed(to_end)
    carry = _exp2_flushed(first_half + second_half)

    same_doc = None
    if resets is not None:
        # seen[i] = number of document starts in the chunk up to and including token i
        seen = F.pad(resets, (0, pad)).view(B, n, C).transpose(0, 1).long().cumsum(-1)[:, :, None]
        same_doc = (seen[..., :, None] == seen[..., None, :]).to(dtype)  # [n, B, 1, C, C]
        q_carry *= (seen == 0).to(dtype)[..., None]
        k_carry *= (seen == seen[..., -1:]).to(dtype)[..., None]
        carry *= (seen[..., -1] == 0).to(dtype)[..., None]

    causal_offset = -1 if exclusive else 0
    attn.tril_(causal_offset)
    if same_doc is not None:
        attn *= same_doc
    if exclusive:
        attn.diagonal(0, -2, -1).copy_((q * k * bonus.to(dtype)[:, None, :]).sum(-1))
    q_read, k_write = q * q_carry, k * k_carry

    initial = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(dtype)
    states = _scan_states(carry, _bmm(k_write.transpose(-1, -2), v), initial, reverse=False)
    o = _bmm(attn, v).flatten(0, 2).baddbmm_(q_read.flatten(0, 2), states[:-1].flatten(0, 2))
    saved = _Saved(q, k, v, q_carry, k_carry, q_read, k_write, carry, causal_offset, same_doc, attn, blocks, states)
    return o.unflatten(0, (n, B, H)), saved


def _backward(s: _Saved, bonus: torch.Tensor | None, d_out: torch.Tensor, d_final: torch.Tensor
              ) -> tuple[torch.Tensor, ...]:
    """The backward of the module docstring.

    Args:
        d_out: [B, T, H, V]; d_final: [B, H, K, V].

    Returns:
        dq (of the scaled queries), dk, dv, dg: [n, B, H, C, D]; du: [H, K] or None;
        d_initial: [B, H, K, V].
    """
    dtype, C = s.q.dtype, s.q.shape[-2]
    do = _to_chunks(d_out, C, dtype)
    d_attn = _bmm(do, s.v.transpose(-1, -2))
    d_bonus = None if bonus is None else d_attn.diagonal(0, -2, -1).clone()  # [n, B, H, C]
    d_attn.tril_(s.causal_offset)
    if s.same_doc is not None:
        d_attn *= s.same_doc

    d_states = _scan_states(s.carry, _bmm(s.q_read.transpose(-1, -2), do), d_final.to(dtype), reverse=True)
    d_after = d_states[1:]  # gradient of the state after each chunk
    dv = _bmm(s.attn.transpose(-1, -2), do)
    dv.flatten(0, 2).baddbmm_(s.k_write.flatten(0, 2), d_after.flatten(0, 2))

    dq, dk = _block_weights_backward(d_attn.flatten(0, 2), s.q.flatten(0, 2), s.k.flatten(0, 2), s.blocks)
    dq, dk = dq.unflatten(0, s.q.shape[:3]), dk.unflatten(0, s.q.shape[:3])
    dq.addcmul_(_bmm(do, s.states[:-1].transpose(-1, -2)), s.q_carry)
    dk.addcmul_(_bmm(s.v, d_after.transpose(-1, -2)), s.k_carry)

    q_dq = s.q * dq
    d_log = torch.addcmul(q_dq, s.k, dk, value=-1)  # dL/db
    d_log[..., -1, :] += (s.states[1:] * d_after).sum(-1)
    dg = d_log  # in place: dg_i = sum_{i <= l <= C} dL/db_l, a short loop (see _half_cumsums)
    for i in range(C - 2, -1, -1):
        dg[..., i, :] += dg[..., i + 1, :]
    du = None
    if bonus is not None:
        dg -= q_dq
        du = torch.einsum("nbhc,nbhck->hk", d_bonus, s.q * s.k)
        d_bonus_u = d_bonus[..., None] * bonus.to(dtype)[:, None, :]  # [n, B, H, C, K]
        dq.addcmul_(d_bonus_u, s.k)
        dk.addcmul_(d_bonus_u, s.q)
    return dq, dk, dv, dg, du, d_states[0]


class _ChunkGLA(torch.autograd.Function):
    """:func:`_forward` and :func:`_backward` as an autograd op (arguments as
    :func:`chunk_gla`)."""

    @staticmethod
    def forward(ctx, q, k, v, g, bonus, initial_state, resets, scale, chunk_size):
        o, saved = _forward(q, k, v, g, bonus, initial_state, resets, scale, chunk_size)
        ctx.saved, ctx.scale, ctx.T = saved, scale, q.shape[1]
        ctx.save_for_backward(bonus)
        ctx.dtypes = [None if x is None else x.dtype for x in (q, k, v, g, bonus, initial_state)]
        return _from_chunks(o, q.shape[1], q.dtype), saved.states[-1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_final):
        (bonus,) = ctx.saved_tensors
        dq, dk, dv, dg, du, d_initial = _backward(ctx.saved, bonus, d_out, d_final)
        grads = [_from_chunks(x, ctx.T, dtype, factor)
                 for x, dtype, factor in zip((dq, dk, dv, dg), ctx.dtypes, (ctx.scale, 1.0, 1.0, 1.0))]
        grads += [None if dtype is None else x.to(dtype) for x, dtype in zip((du, d_initial), ctx.dtypes[4:])]
        return (*grads, None, None, None)


def chunk_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor | None = None,
    resets: torch.Tensor | None = None,
    bonus: torch.Tensor | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunkwise GLA (``bonus=None``) or RWKV-6 (``bonus=u``), the module docstring's algorithm:
    arguments and results as :func:`recurlm.kernels.gla.naive.naive_gla` (the final state in
    float32, float64 for float64 q), plus ``chunk_size``: tokens per chunk, a power of two >= 2."""
    if chunk_size < 2 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two, at least 2, got {chunk_size}")
    return _ChunkGLA.apply(q, k, v, g, bonus, initial_state, resets, scale, chunk_size)

