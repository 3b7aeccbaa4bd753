"""Blocked sliding-window attention: the CPU fast path, O(T * window) memory and work.

Works on the extended sequence of ``state.py`` (window - 1 cached slots, then the T new tokens;
W = window). Queries are cut into blocks of S = ``block_size`` tokens, right-padded to whole blocks.
Query i of block n sits at extended position W - 1 + nS + i and sees back to position nS + i, so
the block reads the L = S + W - 1 extended positions starting at nS (a strided view of the key
sequence, ``Tensor.unfold``):

    scores[n, i, j] = scale * q_{nS+i} . k_{nS+j}        (k indexed by extended position)
    allowed iff 0 <= W - 1 + i - j <= W - 1 and doc(nS + j) == doc(W - 1 + nS + i).

All blocks go through one ``scaled_dot_product_attention`` call (torch's fused CPU kernel, flash
attention with a boolean mask; math kernel for float64) with the mask [B * n, 1, S, L] shared by
all heads and grouped-query heads reading their key/value head directly (``enable_gqa``, no
repeated keys). Every query computes L = S + W - 1 scores for the W it needs: smaller S wastes
less, larger S has fewer blocks; S = 64 measured best for W = 512 on CPU. When T is small next to
the window (decoding, short prefills) one block of all T queries computes fewer scores and is used
instead; without an initial state its all-invalid cache slots are then not read at all.
Gradients are SDPA's backward, also into the initial state's k and v.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from recurlm.kernels.local_attention.state import LocalAttentionState, extend_with_state, final_state_from

MAX_BLOCK_SIZE = 64
MIN_BLOCK_SIZE = 16


def local_attention_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, scale: float,
                          initial_state: LocalAttentionState | None = None, output_final_state: bool = False,
                          resets: torch.Tensor | None = None, lengths: torch.Tensor | None = None,
                          block_size: int | None = None) -> tuple[torch.Tensor, LocalAttentionState | None]:
    """q [B, T, H, D], k, v [B, T, Hkv, D] -> (o [B, T, H, D] in q.dtype, state or None).

    ``block_size`` S >= 1 (default: the window clamped to [MIN_BLOCK_SIZE, MAX_BLOCK_SIZE]);
    ``lengths`` [B] (right-padded rows) only moves where the final state is read."""
    size = min(max(window, MIN_BLOCK_SIZE), MAX_BLOCK_SIZE) if block_size is None else block_size
    if size < 1:
        raise ValueError(f"block_size must be >= 1, got {size}")
    dtype = torch.promote_types(q.dtype, torch.float32)
    batch, seq_len, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    k_ext, v_ext, doc_ext = extend_with_state(k, v, initial_state, resets, window, dtype)
    num_blocks = -(-seq_len // size)
    if seq_len * (seq_len + window - 1) <= num_blocks * size * (size + window - 1):
        size, num_blocks = seq_len, 1
    skip = window - 1 if initial_state is None and num_blocks == 1 else 0  # leading slots not read
    offset = window - 1 - skip  # extended position of a block's first query minus its first key's
    span = size + offset
    right = num_blocks * size - seq_len
    # Right padding gets a document id no real token has (ids are <= T): padded queries attend to
    # padded keys only, so no row of the mask is empty, and causality hides them from real queries.
    docs = F.pad(doc_ext[:, skip:], (0, right), value=seq_len + 1)
    key_docs = docs.unfold(1, span, size)                                       # [B, n, L]
    query_docs = docs[:, offset:].view(batch, num_blocks, size)                 # [B, n, S]
    distance = offset + torch.arange(size, device=q.device)[:, None] - torch.arange(span, device=q.device)[None, :]
    allowed = (distance >= 0) & (distance < window) & (query_docs[..., :, None] == key_docs[..., None, :])
    keys, values = (F.pad(x[:, skip:], (0, 0, 0, 0, 0, right)).unfold(1, span, size)       # [B, n, Hkv, D, L]
                    .permute(0, 1, 2, 4, 3).reshape(batch * num_blocks, kv_heads, span, head_dim)
                    for x in (k_ext, v_ext))
    queries = (F.pad(q.to(dtype), (0, 0, 0, 0, 0, right)).view(batch * num_blocks, size, heads, head_dim)
               .transpose(1, 2))
    out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=allowed.reshape(-1, 1, size, span),
                                         scale=scale, enable_gqa=kv_heads != heads)   # [B * n, H, S, D]
    out = out.view(batch, num_blocks, heads, size, head_dim).transpose(2, 3).reshape(batch, -1, heads, head_dim)
    final_state = final_state_from(k_ext, v_ext, doc_ext, window, lengths) if output_final_state else None
    return out[:, :seq_len].to(q.dtype), final_state
