"""Blocked sliding-window attention: the CPU fast path, O(T * window) memory.

The extended sequence (``state.py``: cached slots, then the new tokens) is cut into blocks of
S >= window - 1 positions, with the cache left-padded to exactly one block of invalid slots and
the new tokens right-padded to whole blocks. Query block n (extended block n + 1) can only see
keys in its own block and the previous one, because a query at offset i sees back to offset
i - (window - 1) >= i - S. So every block does one [S, 2S] masked softmax, all blocks batched
(when T is small next to the window, one dense [T, S + T] block is cheaper and is used instead):

    scores[n, i, j] = scale * q_{(n+1)S+i} . k_{nS+j},
    allowed iff 0 <= S + i - j <= window - 1 and doc(nS + j) == doc((n+1)S + i).

Grouped-query heads are handled by viewing q as [.., Hkv, H / Hkv, D] (no key repetition).
Gradients flow through autograd (einsum + softmax), also into the initial state's k and v.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from recurlm.kernels.local_attention.state import LocalAttentionState, extend_with_state, final_state_from

MIN_BLOCK_SIZE = 16


def _blocks_with_previous(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """[B, (n + 1) S, ...] -> [B, n, 2S, ...]: each block of S preceded by the block before it."""
    blocks = x.unflatten(1, (-1, block_size))
    return torch.cat([blocks[:, :-1], blocks[:, 1:]], dim=2)


def local_attention_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, scale: float,
                          initial_state: LocalAttentionState | None = None, output_final_state: bool = False,
                          resets: torch.Tensor | None = None, lengths: torch.Tensor | None = None,
                          block_size: int | None = None) -> tuple[torch.Tensor, LocalAttentionState | None]:
    """q [B, T, H, D], k, v [B, T, Hkv, D] -> (o [B, T, H, D] in q.dtype, state or None).

    ``block_size`` S (default max(window - 1, MIN_BLOCK_SIZE)) must be >= window - 1;
    ``lengths`` [B] (right-padded rows) only moves where the final state is read."""
    size = max(window - 1, MIN_BLOCK_SIZE) if block_size is None else block_size
    if size < max(window - 1, 1):
        raise ValueError(f"block_size must be >= max(window - 1, 1) = {max(window - 1, 1)}, got {size}")
    dtype = torch.promote_types(q.dtype, torch.float32)
    batch, seq_len, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    k_ext, v_ext, doc_ext = extend_with_state(k, v, initial_state, resets, window, dtype)

    num_blocks = -(-seq_len // size)
    # One dense block (all new queries against the cache and each other) is cheaper than blocks of
    # S queries when T is small next to the window: decoding (T = 1) and short prefills.
    dense = seq_len * (size + seq_len) <= num_blocks * 2 * size * size
    left = size - (window - 1)
    right = 0 if dense else num_blocks * size - seq_len
    # left padding: invalid cache slots (doc -1). Right padding: a document id no real token has
    # (ids are <= T), so padded queries attend to each other and stay finite; they come after every
    # real token, so causality hides them.
    k_pad = F.pad(k_ext, (0, 0, 0, 0, left, right))
    v_pad = F.pad(v_ext, (0, 0, 0, 0, left, right))
    doc_pad = F.pad(F.pad(doc_ext, (left, 0), value=-1), (0, right), value=seq_len + 1)

    key_start = 0  # offset of the first key in the extended sequence
    if dense:  # a single block of T queries over [cache block, T tokens]; no state: no cache block
        key_start = size if initial_state is None else 0
        q_len, key_len = seq_len, size + seq_len - key_start
        k_blocks, v_blocks, key_docs = (x[:, None, key_start:] for x in (k_pad, v_pad, doc_pad))
    else:
        q_len, key_len = size, 2 * size
        k_blocks, v_blocks = _blocks_with_previous(k_pad, size), _blocks_with_previous(v_pad, size)
        key_docs = _blocks_with_previous(doc_pad, size)  # [B, n, 2S]
    n = 1 if dense else num_blocks
    q_blocks = F.pad(q.to(dtype), (0, 0, 0, 0, 0, right)).view(batch, n, q_len, kv_heads, heads // kv_heads, head_dim)
    query_docs = doc_pad[:, size:].view(batch, n, q_len)

    distance = (size - key_start + torch.arange(q_len, device=q.device)[:, None]
                - torch.arange(key_len, device=q.device)[None, :])
    allowed = ((distance >= 0) & (distance < window)) & (query_docs[..., :, None] == key_docs[..., None, :])

    scores = torch.einsum("bnihgd,bnjhd->bnhgij", q_blocks, k_blocks) * scale  # [B, n, Hkv, G, Q, K]
    scores = scores.masked_fill(~allowed[:, :, None, None], float("-inf"))
    out = torch.einsum("bnhgij,bnjhd->bnihgd", scores.softmax(dim=-1), v_blocks)
    out = out.reshape(batch, n * q_len, heads, head_dim)[:, :seq_len]
    final_state = final_state_from(k_ext, v_ext, doc_ext, window, lengths) if output_final_state else None
    return out.to(q.dtype), final_state
