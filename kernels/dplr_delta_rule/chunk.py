"""Chunkwise (WY / UT-transform) form of the generalized delta rule: the CPU fast path.

Per batch row and head, with the state S of shape [K, V] (flash-linear-attention's orientation),

    S_t = (diag(exp(gk_t)) + b_t a_t^T) S_{t-1} + k_t v_t^T,        o_t = S_t^T (scale * q_t).

Inside a chunk of C tokens starting from state S_0, let g_t = sum_{r<=t} gk_r (cumulative log
decay, one per key channel) and u_t = S_{t-1}^T a_t (what the low-rank "a" side reads, [V]).
Unrolling the diagonal part of the recurrence,

    S_t = diag(e^{g_t}) S_0 + sum_{s<=t} diag(e^{g_t - g_s}) (k_s v_s^T + b_s u_s^T),

so, with X^Y[t, s] = sum_k x_t[k] y_s[k] e^{gx_t[k] - g_s[k]} (decayed products, gx = g for the
queries and the exclusive cumsum g_{t-1} for the a's):

    u   = A_ak v + A_ab u + W_a S_0       (A_ak, A_ab strictly lower; W_a[t] = a_t e^{g_{t-1}})
        = (I - A_ab)^{-1} (A_ak v + W_a S_0) =: U_0 + W_u S_0      (the UT transform: one
                                                                     unit-triangular solve)
    o   = A_qk v + A_qb u + W_q S_0 = (A_qk v + A_qb U_0) + (W_q + A_qb W_u) S_0
    S_C = (diag(e^{g_C}) + B~^T W_u) S_0 + (K~^T v + B~^T U_0) =: P S_0 + R

with K~[s] = k_s e^{g_C - g_s}, B~[s] = b_s e^{g_C - g_s}. Everything except S_n = P_n S_{n-1} + R_n
(one [K, K] @ [K, V] product per chunk) runs for all chunks at once.

Stability (log decays gk <= 0, any magnitude; tested down to -20 per token): the decayed products
are formed in one of two exact ways, chosen per call:
- factored, when every chunk's span max |g| is within FACTOR_SPAN_LIMIT (60 in float32): one
  matmul of (x e^{gx - g_C/2}) by (y e^{g_C/2 - gy}), every factor within e^{+-span/2}. The chunk
  is halved (down to MIN_FACTORED_CHUNK = 16) until the spans fit: RWKV-7's decays (> -0.61)
  always fit at C = 64, decays down to -3.75 at C = 16;
- otherwise, blockwise: exponents gx_t - g_s taken pairwise inside leaf blocks of c tokens
  (masked to -inf before exp), and, merging sibling blocks bottom-up, the lower-left quadrant of
  each block of twice the size as one matmul factored through the cumulative decay at the end of
  its upper half, where both factors are <= 1 (products underflow to 0 exactly where the true
  value is below the float range). O(C K log C) exponentials per chunk; about 2x slower.
Cumulative sums are taken within a chunk, so the exponent's absolute error is about eps * |g_C|
(float32: ~1e-4 at C=64 and gk=-20; ~5e-6 for RWKV-7 decays).

Resets: a reset at token t zeroes S_{t-1}. Its log decay is replaced by 0 (so the cumsums stay
finite) and every term that crosses the reset is masked: decayed products only within the same
document, S_0 only reaches tokens before the chunk's first reset, and only the chunk's last
document writes to S_C. No exp(-inf - -inf) is ever computed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from recurlm.kernels.dispatch import compute_dtype


FACTOR_SPAN_LIMIT = {torch.float32: 60.0, torch.float64: 600.0}
"""Largest per-chunk log-decay span max |g| for which the chunk's decayed products may be factored as
(x e^{gx - ref}) (y e^{ref - gy}) with ref = g_C / 2: both factors stay within e^{+-span/2} and
the masked (s > t) products within e^{span}, far from the float range."""

MIN_FACTORED_CHUNK = 16
"""Chunks are not halved below this to make the factored path fit: shorter chunks lengthen the
sequential part, and the blockwise path at full length is faster then."""


def _decayed_products(x: torch.Tensor, gx: torch.Tensor, strict: tuple[bool, ...],
                      y: torch.Tensor, gy: torch.Tensor, leaf: int | None) -> torch.Tensor:
    """All reader/writer decayed products of a chunk, computed stably.

    Args:
        x: [*, P, C, K] P reader sequences (e.g. q and a); gx: [*, P, C, K] their log decays.
        strict: P flags; True excludes the diagonal s = t for that reader.
        y: [*, R, C, K] R writer sequences (e.g. k and b); gy: [*, C, K] their cumulative log
            decays (shared by the writers), non-increasing along C; a reader's gx[t] lies between
            gy[t] and gy[t - 1] (g and the exclusive g both do).
        leaf: None when every span |gy| is within FACTOR_SPAN_LIMIT: one factored matmul per
            chunk. Otherwise the leaf block size c (C / c a power of two): exponents are taken
            pairwise (masked before exp) inside leaf blocks, and the lower-left quadrant of every
            block of twice the size is one matmul factored through the decay at the end of its
            upper half, where both factors are <= 1: O(C K log C) exponentials in all.

    Returns:
        [*, P, R, C, C] with out[..., p, r, t, s] = sum_k x[p,t,k] y[r,s,k] exp(gx[p,t,k] - gy[s,k])
        for s <= t (s < t if strict[p]) and 0 above the diagonal.
    """
    chunk = x.shape[-2]
    n_readers, n_writers = x.shape[-3], y.shape[-3]
    size = chunk if leaf is None else leaf
    ones = torch.ones(size, size, dtype=torch.bool, device=x.device)
    lower = torch.stack([ones.tril(-1 if s else 0) for s in strict])  # [P, c, c]

    def pair_products(x_scaled: torch.Tensor, y_scaled: torch.Tensor) -> torch.Tensor:
        """[*, P, L, K] x [*, R, M, K] -> [*, P, R, L, M] with one matmul."""
        out = x_scaled.flatten(-3, -2) @ y_scaled.flatten(-3, -2).mT  # [*, P*L, R*M]
        return out.unflatten(-1, (n_writers, -1)).unflatten(-3, (n_readers, -1)).transpose(-3, -2)

    if leaf is None:
        ref = gy[..., -1:, :] / 2  # [*, 1, K]
        out = pair_products(x * (gx - ref[..., None, :, :]).exp(), y * (ref - gy)[..., None, :, :].exp())
        return torch.where(lower[:, None], out, 0.0)

    # Leaf blocks on the diagonal: exponents taken pairwise, masked to -inf above it before exp.
    n = chunk // leaf
    xb, gxb, yb = (z.unflatten(-2, (n, leaf)) for z in (x, gx, y))  # [*, P|R, n, c, K]
    gyb = gy.unflatten(-2, (n, leaf))  # [*, n, c, K]
    diff = gxb[..., :, None, :] - gyb[..., None, :, None, :, :]  # [*, P, n, c, c, K]
    decay = torch.where(lower[:, None, :, :, None], diff, float("-inf")).exp()
    blocks = torch.einsum("...pntsk,...rnsk->...prnts", xb[..., None, :] * decay, yb)  # [*,P,R,n,c,c]
    # Merge sibling blocks bottom-up: [[upper, 0], [lower-left, lower]] for blocks of size 2s.
    size = leaf
    while size < chunk:
        halves = chunk // (2 * size)
        xh, gxh, yh = (z.unflatten(-2, (halves, 2, size)) for z in (x, gx, y))  # [*, P|R, m, 2, s, K]
        gyh = gy.unflatten(-2, (halves, 2, size))[..., 0, :, :]  # upper halves [*, m, s, K]
        ref = gyh[..., -1:, :]  # gy at the end of each upper half [*, m, 1, K]
        x_scaled = xh[..., 1, :, :] * (gxh[..., 1, :, :] - ref[..., None, :, :, :]).exp()
        y_scaled = yh[..., 0, :, :] * (ref - gyh)[..., None, :, :, :].exp()
        lower_left = pair_products(x_scaled.movedim(-4, -3), y_scaled.movedim(-4, -3)).movedim(-5, -3)
        upper, lower_right = blocks.unflatten(-3, (halves, 2)).unbind(-3)  # [*, P, R, m, s, s]
        blocks = torch.cat([torch.cat([upper, torch.zeros_like(upper)], -1),
                            torch.cat([lower_left, lower_right], -1)], -2)
        size *= 2
    return blocks.squeeze(-3)


def _choose_chunking(gk: torch.Tensor, longest: int, leaf: int, limit: float) -> tuple[int, bool]:
    """Pick the chunk size and how to form the decayed products.

    Args:
        gk: [B, T, H, K] log decays (resets already zeroed).
        longest: the largest chunk size allowed (``leaf`` times a power of two).
        leaf: the leaf block size, the smallest candidate.
        limit: the largest cumulative |log decay| inside a chunk that may be factored.

    Returns:
        (C, True) for the largest C in longest, longest / 2, ..., down to max(leaf,
        MIN_FACTORED_CHUNK) (or longest if smaller), whose chunks all stay within
        ``limit`` (one factored matmul per chunk); (longest, False) if none does (blockwise path).
    """
    seq_len = gk.shape[1]
    gk = gk.detach()
    size = longest
    while True:
        n_chunks = -(-seq_len // size)
        padded = F.pad(gk, (0, 0, 0, 0, 0, n_chunks * size - seq_len)).unflatten(1, (n_chunks, size))
        if padded.cumsum(2).abs().amax().item() <= limit:
            return size, True
        if size == leaf or size <= MIN_FACTORED_CHUNK:
            return longest, False
        size //= 2


def chunk_dplr_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    gk: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    resets: torch.Tensor | None = None,
    chunk_size: int = 64,
    sub_chunk_size: int = 4,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunkwise generalized delta rule (math in the module docstring); autograd does the backward.

    Args:
        q, k, a, b, gk: [B, T, H, K]; gk is the finite log decay (<= 0 for the stability bound).
        v: [B, T, H, V].
        scale: multiplies q.
        initial_state: [B, H, K, V] or None (zeros).
        output_final_state: return S_T.
        resets: [B, T] bool or None; True zeroes the state entering that token.
        chunk_size: tokens per chunk C, at most (shrunk for short inputs and strong decays).
        sub_chunk_size: leaf block size c of the blockwise decayed products; chunk_size / c must
            be a power of two.

    Returns:
        o [B, T, H, V] in q's dtype; S_T [B, H, K, V] in float32 (float64 for float64 inputs) or
        None. Accumulation is in that dtype.
    """
    blocks = chunk_size // sub_chunk_size
    if chunk_size % sub_chunk_size or blocks & (blocks - 1):
        raise ValueError(f"chunk_size {chunk_size} must be sub_chunk_size {sub_chunk_size} times a power of two")
    out_dtype = q.dtype
    acc = compute_dtype(out_dtype)
    batch, seq_len, heads, dk = q.shape
    dv = v.shape[-1]
    if resets is not None:
        gk = gk.masked_fill(resets[:, :, None, None], 0.0)
    longest = sub_chunk_size
    while longest < min(chunk_size, seq_len):
        longest *= 2
    chunk, factored = _choose_chunking(gk, longest, sub_chunk_size, FACTOR_SPAN_LIMIT.get(acc, float("-inf")))
    n_chunks = -(-seq_len // chunk)
    pad = n_chunks * chunk - seq_len

    def to_chunks(x: torch.Tensor) -> torch.Tensor:
        """[B, T, H, D] -> [B, H, N, C, D]; padded tokens are identity steps (all zeros)."""
        return F.pad(x.to(acc).transpose(1, 2), (0, 0, 0, pad)).unflatten(2, (n_chunks, chunk))

    q, k, v, a, b, gk = (to_chunks(x) for x in (q, k, v, a, b, gk))
    q = q * scale
    g = gk.cumsum(-2)
    g_excl = g - gk
    g_last = g[..., -1:, :]  # [B, H, N, 1, K]

    products = _decayed_products(torch.stack([q, a], -3), torch.stack([g, g_excl], -3), (False, True),
                                 torch.stack([k, b], -3), g, None if factored else sub_chunk_size)
    (a_qk, a_qb), (a_ak, a_ab) = (pair.unbind(-3) for pair in products.unbind(-4))
    w_q = q * g.exp()  # reads S_0 from the queries
    w_a = a * g_excl.exp()  # reads S_0 from the a's
    to_end = (g_last - g).exp()
    k_end, b_end = k * to_end, b * to_end  # write into S_C
    decay_all = g_last.exp()  # [B, H, N, 1, K]

    if resets is not None:
        doc = F.pad(resets, (0, pad)).unflatten(1, (n_chunks, chunk)).long().cumsum(-1)[:, None]  # [B,1,N,C]
        same_doc = (doc[..., :, None] == doc[..., None, :]).to(acc)
        a_qk, a_qb, a_ak, a_ab = (m * same_doc for m in (a_qk, a_qb, a_ak, a_ab))
        first_doc = (doc == 0).to(acc)[..., None]
        last_doc = (doc == doc[..., -1:]).to(acc)[..., None]
        w_q, w_a = w_q * first_doc, w_a * first_doc
        k_end, b_end = k_end * last_doc, b_end * last_doc
        decay_all = decay_all * first_doc[..., -1:, :]

    eye = torch.eye(chunk, dtype=acc, device=q.device)
    solved = torch.linalg.solve_triangular(eye - a_ab, torch.cat([a_ak @ v, w_a], -1),
                                           upper=False, unitriangular=True)
    u_0, w_u = solved.split([dv, dk], -1)  # u = u_0 + w_u S_0
    o_0 = a_qk @ v + a_qb @ u_0  # [B, H, N, C, V]
    q_s0 = w_q + a_qb @ w_u  # [B, H, N, C, K]
    transition = torch.diag_embed(decay_all.squeeze(-2)) + b_end.mT @ w_u  # P: [B, H, N, K, K]
    written = k_end.mT @ v + b_end.mT @ u_0  # R: [B, H, N, K, V]

    state = q.new_zeros(batch, heads, dk, dv) if initial_state is None else initial_state.to(acc)
    starts = []
    for transition_n, written_n in zip(transition.unbind(2), written.unbind(2)):  # unbind: O(N) backward
        starts.append(state)
        state = transition_n @ state + written_n
    o = o_0 + q_s0 @ torch.stack(starts, 2)
    o = o.flatten(2, 3)[:, :, :seq_len].transpose(1, 2).to(out_dtype)
    return o, (state if output_final_state else None)
