"""Chunkwise PyTorch form of gated linear attention with a per-key-channel decay (the CPU path).

Computes the recurrences of :mod:`recurlm.kernels.gla.naive` (GLA, and RWKV-6 with ``bonus``).
Write G_i = g_1 + ... + g_i for the cumulative log decay inside a block. Query i reads key j
(j <= i for GLA, j < i for RWKV-6, whose query sees the state before its own update) with weight::

    A_ij = sum_k q_ik k_jk exp(Gq_ik - G_jk)        Gq = G (GLA) or G - g (RWKV-6)

Sequence -> chunks of C tokens (default 64) -> sub-chunks of c tokens (default 16):

- between chunks a state S [K, V] is carried by a short loop over the T / C chunks::

      S_n = diag(exp(G_C)) S_{n-1} + sum_j (k_j * exp(G_C - G_j)) v_j^T
      o_i += (q_i * exp(Gq_i)) S_{n-1}

- inside a chunk, sub-chunk s reads an earlier sub-chunk r < s by one matmul::

      A_sr = (q_s * exp(Gq - G_start(s))) diag(exp(decay of the sub-chunks between r and s))
             (k_r * exp(G_end(r) - G))^T

- inside a sub-chunk, the c x c weights are one matmul of exp(Gq)-scaled queries and
  exp(-G)-scaled keys where the sub-chunk's decay is mild enough to factorise (see
  FACTORISABLE_LOG_DECAY); only the other sub-chunks are formed elementwise from
  exp(Gq_i - G_j), masked *before* the exponential.

Every exponent is a sum of log decays over a forward span, so every factor is <= 1 and nothing
overflows however strong the decay (per-step log decays of -20 over a 64-token chunk would reach
exp(1280) in the naive factorisation exp(G_i) exp(-G_j)); the one factorisation used, inside mild
sub-chunks, is bounded by exp(40) by its selection. Factors below about 1e-19 are flushed to zero
(:func:`_exp_decay`) so that no subnormal floats reach the matmuls. Document resets are masks (same-document
pairs, no carried state into a chunk past a reset), never -inf log decays, so no exp(-inf - -inf).
Padding to whole chunks uses k = 0, g = 0: identity steps. Autograd provides the backward.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from recurlm.kernels.gla.naive import compute_dtype

CHUNK_SIZE = 64
SUB_CHUNK_SIZE = 16
FACTORISABLE_LOG_DECAY = 40.0
"""Sub-chunks whose total log decay stays above -40 in every channel take their diagonal block as
one matmul of exp(G)-scaled queries and exp(-G)-scaled keys (factors within exp(+-40), far from
float32 overflow); the other sub-chunks (selected per call) use the elementwise c x c x K form."""


def _exp_decay(log_decay: torch.Tensor) -> torch.Tensor:
    """exp of log decays (<= 0), flushed to exactly 0 below sqrt of the dtype's smallest normal
    (about 1e-19 in float32): such factors are negligible, and left as they are they or their
    products become subnormal floats, which make CPU matmuls up to 100x slower."""
    floor = math.log(torch.finfo(log_decay.dtype).tiny) / 2
    return torch.where(log_decay > floor, log_decay, -math.inf).exp()


def _decay_sums(g: torch.Tensor, exclusive: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cumulative log decays inside blocks along dim -2.

    Args:
        g: [..., L, K] log decays.
        exclusive: the query at i reads the state before step i's decay (RWKV-6).

    Returns:
        key_cum [..., L, K]: G_j = sum_{m <= j} g_m;
        query_cum [..., L, K]: G_i (inclusive) or G_i - g_i (exclusive);
        key_to_end [..., L, K]: sum_{m > j} g_m, summed directly (a strictly upper triangular
            matmul; unlike G_L - G_j it stays precise near the block end after strong decays).
    """
    L = g.shape[-2]
    key_cum = g.cumsum(-2)
    query_cum = key_cum - g if exclusive else key_cum
    later = torch.ones(L, L, dtype=g.dtype, device=g.device).triu(1)  # later[j, m] = m > j
    key_to_end = later @ g
    return key_cum, query_cum, key_to_end


def _intra_chunk(q: torch.Tensor, k: torch.Tensor, g: torch.Tensor, exclusive: bool,
                 sub_chunk_size: int) -> torch.Tensor:
    """Causal weights A [..., C, C] of queries on keys of the same chunk (q already scaled).

    q, k, g: [..., C, K] with C a multiple of ``sub_chunk_size``.
    """
    *lead, C, K = q.shape
    ns, c = C // sub_chunk_size, sub_chunk_size
    qs, ks, gs = (x.unflatten(-2, (ns, c)) for x in (q, k, g))  # [..., ns, c, K]
    key_cum, query_cum, key_to_end = _decay_sums(gs, exclusive)
    device = q.device

    q_from_start = qs * _exp_decay(query_cum)  # decay since the sub-chunk start, <= 1
    k_to_end = ks * _exp_decay(key_to_end)  # decay until the sub-chunk end, <= 1
    sub_total = key_cum[..., -1, :]  # [..., ns, K]

    # inside a sub-chunk: exp(Gq_i - G_j) = exp(Gq_i) exp(-G_j), one matmul, exact for sub-chunks
    # whose decay stays above -FACTORISABLE_LOG_DECAY (both factors within exp(+-40)); the clamp
    # only keeps the other (strong-decay) sub-chunks finite, they are recomputed elementwise below
    causal = torch.ones(c, c, dtype=torch.bool, device=device).tril(-1 if exclusive else 0)
    k_scaled = ks * (-key_cum).clamp(max=FACTORISABLE_LOG_DECAY).exp()
    a_diag = (q_from_start @ k_scaled.transpose(-1, -2)).masked_fill(~causal, 0.0)  # [..., ns, c, c]
    strong = sub_total.min(-1).values < -FACTORISABLE_LOG_DECAY  # [..., ns]
    if strong.any():
        # elementwise c x c x K weights, exponent masked to -inf before exp (exp(-inf) = 0, finite grads)
        pair_log_decay = query_cum[strong][:, :, None, :] - key_cum[strong][:, None, :, :]  # [M, c, c, K]
        pair_decay = _exp_decay(torch.where(causal[:, :, None], pair_log_decay, -math.inf))
        a_strong = (qs[strong][:, :, None, :] * ks[strong][:, None, :, :] * pair_decay).sum(-1)
        a_diag = a_diag.index_put((strong,), a_strong)

    # across sub-chunks r < s (only those pairs): factors relative to the sub-chunk boundaries, all <= 1
    idx = torch.arange(ns, device=device)
    s_idx, r_idx = torch.tril_indices(ns, ns, -1, device=device)  # [P] pairs with r < s
    strictly_between = (r_idx[:, None] < idx) & (idx < s_idx[:, None])  # [P, ns]
    span = torch.einsum("pm,...mk->...pk", strictly_between.to(g.dtype), sub_total)  # [..., P, K]
    q_scaled = q_from_start[..., s_idx, :, :] * _exp_decay(span)[..., None, :]
    a_pairs = q_scaled @ k_to_end[..., r_idx, :, :].transpose(-1, -2)  # [..., P, c, c]

    block_index = torch.cat([s_idx * ns + r_idx, idx * (ns + 1)])  # flat (s, r) of pairs, then diagonal
    a_blocks = q.new_zeros(*lead, ns * ns, c, c).index_copy(-3, block_index, torch.cat([a_pairs, a_diag], -3))
    return a_blocks.unflatten(-3, (ns, ns)).transpose(-3, -2).reshape(*lead, C, C)  # [.., s, i, r, j]


def chunk_gated_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor | None = None,
    resets: torch.Tensor | None = None,
    bonus: torch.Tensor | None = None,
    chunk_size: int = CHUNK_SIZE,
    sub_chunk_size: int = SUB_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunkwise GLA (``bonus=None``) or RWKV-6 (``bonus=u``); see the module docstring.

    Args:
        q, k, g: [B, T, H, K] queries, keys, log decays (g <= 0).
        v: [B, T, H, V] values.
        scale: multiplies q.
        initial_state: [B, H, K, V] or None (zeros).
        resets: [B, T] bool or None: True where a document starts (the carried state is dropped).
        bonus: [H, K] RWKV-6 bonus u (adds scale * (q_t . (u * k_t)) v_t, and the query reads the
            state before its own step), or None for GLA.
        chunk_size: tokens per chunk (a multiple of ``sub_chunk_size``).
        sub_chunk_size: tokens per sub-chunk.

    Returns:
        o [B, T, H, V] in q's dtype; final state [B, H, K, V] in float32 (float64 for float64 q).
    """
    if chunk_size % sub_chunk_size:
        raise ValueError(f"chunk_size {chunk_size} must be a multiple of sub_chunk_size {sub_chunk_size}")
    B, T, H, K = q.shape
    V = v.shape[-1]
    dtype, out_dtype = compute_dtype(q), q.dtype
    # short inputs: a single chunk of whole sub-chunks instead of padding to a full chunk
    C = min(chunk_size, sub_chunk_size * math.ceil(max(T, 1) / sub_chunk_size))
    n_chunks = math.ceil(T / C)
    pad = n_chunks * C - T

    def to_chunks(x: torch.Tensor) -> torch.Tensor:
        """[B, T, H, D] -> [B, H, n_chunks, C, D] in the accumulation dtype, zero padded."""
        x = F.pad(x.to(dtype).transpose(1, 2), (0, 0, 0, pad))
        return x.unflatten(2, (n_chunks, C))

    q, k, v, g = to_chunks(q) * scale, to_chunks(k), to_chunks(v), to_chunks(g)
    exclusive = bonus is not None

    attn = _intra_chunk(q, k, g, exclusive, sub_chunk_size)  # [B, H, n, C, C]
    key_cum, query_cum, key_to_end = _decay_sums(g, exclusive)
    q_from_start = q * _exp_decay(query_cum)
    k_to_end = k * _exp_decay(key_to_end)
    carry = _exp_decay(key_cum[..., -1, :])  # [B, H, n, K]: decay of a whole chunk
    if resets is not None:
        # resets_seen[i] = number of document starts in the chunk up to and including token i
        resets_seen = F.pad(resets, (0, pad)).view(B, 1, n_chunks, C).long().cumsum(-1)
        attn = attn * (resets_seen[..., :, None] == resets_seen[..., None, :]).to(dtype)
        q_from_start = q_from_start * (resets_seen == 0).to(dtype)[..., None]
        k_to_end = k_to_end * (resets_seen == resets_seen[..., -1:]).to(dtype)[..., None]
        carry = carry * (resets_seen[..., -1] == 0).to(dtype)[..., None]

    o = attn @ v
    if bonus is not None:
        o = o + (q * bonus.to(dtype)[None, :, None, None, :] * k).sum(-1, keepdim=True) * v

    chunk_updates = k_to_end.transpose(-1, -2) @ v  # [B, H, n, K, V]
    state = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(dtype)
    start_states = []
    # unbind (not indexing) so that the backward stacks the per-chunk gradients in one copy
    for chunk_carry, chunk_update in zip(carry.unbind(2), chunk_updates.unbind(2)):
        start_states.append(state)
        state = chunk_carry[..., None] * state + chunk_update
    if start_states:
        o = o + q_from_start @ torch.stack(start_states, dim=2)

    o = o.flatten(2, 3)[:, :, :T].transpose(1, 2).to(out_dtype)
    return o, state


def chunk_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor | None = None,
    resets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GLA in chunkwise form: shapes as :func:`chunk_gated_attention` (no bonus)."""
    return chunk_gated_attention(q, k, v, g, scale, initial_state, resets)
