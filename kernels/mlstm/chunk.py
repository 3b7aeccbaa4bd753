"""Chunkwise mLSTM in PyTorch (the CPU fast path): parallel inside chunks of L tokens, and the
states between chunks in closed form (no loop over chunks, so autograd sees a few large ops).

Notation inside a chunk (positions t, s in [0, L)): lf = logsigmoid(f), b_t = lf_0 + ... + lf_t
(inclusive cumulative log forget gate), F_ts = b_t - b_s (decay from token s to t) and
m_prev, C_prev, n_prev the state entering the chunk. For s <= t in the same document

    log D_ts = F_ts + i_s                         (weight of token s in the state after t)
    m_t      = max(b_t + m_prev   [t still in the document the chunk started in],
                   F_ts + i_s     for s <= t in t's document,
                   F_tr + lf_r    [t's document starts at r inside the chunk: the fresh state's
                                   stabiliser m = 0 decayed from r])

which is exactly the stabiliser of the sequential recurrence m_t = max(lf_t + m_{t-1}, i_t).
Then, with q scaled by K^-1/2,

    num_t = exp(b_t + m_prev - m_t) q_t C_prev + sum_s exp(log D_ts - m_t) (q_t . k_s) v_s
    qn_t  = exp(b_t + m_prev - m_t) q_t . n_prev + sum_s exp(log D_ts - m_t) (q_t . k_s)
    h_t   = num_t / (max(|qn_t|, exp(-m_t)) + eps).

States between chunks. Chunk j alone (from a zero state) ends in the state
U_j = sum_s exp(log D_{L-1,s} - mu_j) k_s v_s^T (and u_j with k_s) on its own scale mu_j
(``m_local``: the m_{L-1} above without the m_prev term). With B_j = b_{L-1} of chunk j,
G_c = B_0 + ... + B_c and (C_0, n_0, m_0) the initial state, the state after chunk c is

    m^c = max(max_j (G_c - G_j + mu_j), G_c + m_0)      j <= c reaching c (no document start in
                                                        chunks j+1..c; m_0 only if none in 0..c)
    C^c = sum_j exp(G_c - G_j + mu_j - m^c) U_j + exp(G_c + m_0 - m^c) C_0      (n^c likewise)

an [N, N] weight matrix times the stacked U_j: the unrolled recurrence m^c = max(B_c + m^{c-1},
mu_c), C^c = exp(B_c + m^{c-1} - m^c) C^{c-1} + U_c (stabilisers are maxima of the same terms).

Masked pairs are -inf before the exponential; every m_t is finite, so no exp(-inf - -inf) is
ever formed. The tail chunk is padded with identity steps (lf = 0, i = -inf, k = v = 0), which
leave the final state untouched; a chunk of identity steps only has mu_j = -inf and reaches nothing.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from recurlm.kernels.dispatch import compute_dtype
from recurlm.kernels.mlstm.state import MLSTMState, initial_mlstm_state

NEG_INF = float("-inf")


def _pad_time(x: torch.Tensor, pad: int, value: float) -> torch.Tensor:
    """Right-pad dim 2 ([B, H, T, ...]) by ``pad`` steps of ``value``."""
    if pad == 0:
        return x
    return torch.cat([x, x.new_full((*x.shape[:2], pad, *x.shape[3:]), value)], dim=2)


def _fresh_stabiliser(b: torch.Tensor, log_f: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """Stabiliser contribution of the fresh state of a document starting inside the chunk.

    b, log_f: [B, H, N, L]; starts: [B, 1, N, L] bool (document starts). Returns [B, H, N, L]:
    b_t - b_r + lf_r for the last start r <= t in the chunk, -inf before the first start."""
    positions = torch.arange(starts.shape[-1], device=starts.device)
    last_start = torch.where(starts, positions, -1).cummax(dim=-1).values       # [B, 1, N, L]
    base = torch.gather(log_f - b, -1, last_start.clamp(min=0).expand_as(b))
    return torch.where(last_start >= 0, b + base, NEG_INF)


def chunk_mlstm(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: torch.Tensor, f: torch.Tensor,
                initial_state: MLSTMState | None = None, output_final_state: bool = False,
                resets: torch.Tensor | None = None, eps: float = 1e-6, chunk_size: int = 64,
                segment_chunks: int = 32) -> tuple[torch.Tensor, MLSTMState | None]:
    """q, k [B, T, H, K], v [B, T, H, V], i, f [B, T, H] -> h [B, T, H, V] (q.dtype), final state.

    The closed form over chunks costs O(N^2) in the number of chunks N and sums log decays from the
    segment start, so sequences longer than ``segment_chunks`` chunks are cut into segments of that
    many chunks, run one after the other with the state passed between them (exact: state passing
    equals the whole sequence). Computes in float32 (float64 for float64 inputs); differentiable
    through autograd."""
    segment = segment_chunks * chunk_size
    if q.shape[1] <= segment:
        return _mlstm_segment(q, k, v, i, f, initial_state, output_final_state, resets, eps, chunk_size)
    outputs, state = [], initial_state
    for start in range(0, q.shape[1], segment):
        part = slice(start, start + segment)
        h, state = _mlstm_segment(q[:, part], k[:, part], v[:, part], i[:, part], f[:, part], state, True,
                                  None if resets is None else resets[:, part], eps, chunk_size)
        outputs.append(h)
    return torch.cat(outputs, 1), (state if output_final_state else None)


def _mlstm_segment(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: torch.Tensor, f: torch.Tensor,
                   initial_state: MLSTMState | None, output_final_state: bool, resets: torch.Tensor | None,
                   eps: float, chunk_size: int) -> tuple[torch.Tensor, MLSTMState | None]:
    """:func:`chunk_mlstm` on one segment: all chunk states in closed form (module docstring)."""
    batch, seq_len, heads, dk = q.shape
    dv = v.shape[-1]
    out_dtype = q.dtype
    dtype = compute_dtype(q.dtype)
    L = min(chunk_size, seq_len)
    num_chunks = -(-seq_len // L)
    pad = num_chunks * L - seq_len

    def chunks(x: torch.Tensor, value: float) -> torch.Tensor:  # [B, T, H, ...] -> [B, H, N, L, ...]
        x = _pad_time(x.to(dtype).transpose(1, 2), pad, value)
        return x.reshape(batch, heads, num_chunks, L, *x.shape[3:])

    q = chunks(q, 0.0) * dk ** -0.5
    k, v = chunks(k, 0.0), chunks(v, 0.0)
    i = chunks(i, NEG_INF)
    log_f = chunks(F.logsigmoid(f.to(dtype)), 0.0)
    b = log_f.cumsum(-1)                                                          # [B, H, N, L]

    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    if resets is None:
        pair_mask = causal
    else:
        starts = _pad_time(resets[:, None], pad, False).reshape(batch, 1, num_chunks, L)
        doc = starts.long().cumsum(-1)                       # document index inside the chunk
        pair_mask = causal & (doc[..., :, None] == doc[..., None, :])             # [B, 1, N, L, L]
        carried = doc == 0                                   # the chunk's incoming state reaches t
        fresh = _fresh_stabiliser(b, log_f, starts)

    # ---- states after every chunk, in closed form over chunks --------------------------------------
    log_w_end = b[..., -1:] - b + i                 # log weight of token s in the chunk's end state
    if resets is not None:
        log_w_end = torch.where(pair_mask[..., -1, :], log_w_end, NEG_INF)         # [B, H, N, L]
    m_local = log_w_end.max(-1).values                                             # [B, H, N]
    if resets is not None:  # a document starting in the chunk contributes its fresh m = 0
        m_local = torch.maximum(m_local, fresh[..., -1])
    # a chunk of identity steps only (varlen padding) has m_local = -inf and contributes nothing
    has_tokens = m_local > NEG_INF
    k_end = k * torch.exp(log_w_end - torch.where(has_tokens, m_local, 0.0)[..., None])[..., None]
    C_local = k_end.transpose(-1, -2) @ v                                          # [B, H, N, K, V]
    n_local = k_end.sum(-2)                                                        # [B, H, N, K]
    G = b[..., -1].cumsum(-1)                       # log decay from the start to the end of chunk c
    reach = torch.ones(num_chunks, num_chunks, dtype=torch.bool, device=q.device).tril()
    reach = reach & has_tokens[..., None, :]                                       # [B, H, N, N]
    reach_init = None
    if resets is not None:  # a chunk holding a document start cuts every older contribution
        cuts = (~carried[..., -1]).long().cumsum(-1)                              # [B, 1, N]
        reach = reach & (cuts[..., :, None] == cuts[..., None, :])
        reach_init = cuts == 0
    log_w_chunk = torch.where(reach, G[..., :, None] - G[..., None, :] + m_local[..., None, :], NEG_INF)
    C0, n0, m0 = initial_mlstm_state(initial_state, batch, heads, dk, dv, dtype, q.device)
    log_w_init = G + m0[..., None]                                                 # [B, H, N]
    if reach_init is not None:
        log_w_init = torch.where(reach_init, log_w_init, NEG_INF)
    m_end = torch.maximum(log_w_chunk.max(-1).values, log_w_init)                 # [B, H, N]
    w_chunk = torch.exp(log_w_chunk - m_end[..., None])
    w_init = torch.exp(log_w_init - m_end)[..., None]
    C_end = (w_chunk @ C_local.flatten(-2) + w_init * C0.flatten(-2)[:, :, None]).unflatten(-1, (dk, dv))
    n_end = w_chunk @ n_local + w_init * n0[:, :, None]                            # [B, H, N, K]
    C_in = torch.cat([C0[:, :, None], C_end[:, :, :-1]], 2)                       # [B, H, N, K, V]
    n_in = torch.cat([n0[:, :, None], n_end[:, :, :-1]], 2)
    m_in = torch.cat([m0[:, :, None], m_end[:, :, :-1]], 2)

    # ---- intra-chunk parallel part ----------------------------------------------------------------
    log_D = torch.where(pair_mask, b[..., :, None] - b[..., None, :] + i[..., None, :], NEG_INF)
    log_inter = b + m_in[..., None]                                                # [B, H, N, L]
    row_max = log_D.max(-1).values
    if resets is not None:
        log_inter = torch.where(carried, log_inter, NEG_INF)
        row_max = torch.maximum(row_max, fresh)
    m_t = torch.maximum(row_max, log_inter)
    D = torch.exp(log_D - m_t[..., None])
    scores = (q @ k.transpose(-1, -2)) * D                                         # [B, H, N, L, L]
    q_inter = q * torch.exp(log_inter - m_t)[..., None]
    numerator = q_inter @ C_in + scores @ v                                        # [B, H, N, L, V]
    qn = (q_inter @ n_in[..., None]).squeeze(-1) + scores.sum(-1)                  # [B, H, N, L]
    denominator = torch.maximum(qn.abs(), torch.exp(-m_t)) + eps
    h = numerator * (1.0 / denominator)[..., None]  # a [.., L] reciprocal: cheaper backward than a division
    h = h.reshape(batch, heads, num_chunks * L, dv)[:, :, :seq_len].transpose(1, 2).to(out_dtype)
    final = MLSTMState(C_end[:, :, -1], n_end[:, :, -1], m_end[:, :, -1]) if output_final_state else None
    return h, final
