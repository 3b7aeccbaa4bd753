"""Blocked sliding-window attention: the CPU fast path, O(T * window) memory and work.

Works on the extended sequence of ``state.py`` (window - 1 cached slots, then the T new tokens;
W = window). Queries go in blocks of S = ``block_size`` tokens through torch's fused
``scaled_dot_product_attention`` (flash attention with a boolean mask on CPU; math kernel for
float64), grouped-query heads reading their key/value head directly (``enable_gqa``, no repeated
keys). Two kinds of blocks:

Full windows. Query i of block n sits at extended position W - 1 + nS + i and sees back to
position nS + i, so the block reads the L = S + W - 1 extended positions starting at nS (a strided
view of the key sequence, ``Tensor.unfold``); all blocks go through one SDPA call with the mask
[B * n, 1, S, L] shared by all heads:

    allowed[n, i, j] iff 0 <= W - 1 + i - j <= W - 1 and doc(nS + j) == doc(W - 1 + nS + i).

Every query computes L scores for the W it needs: smaller S wastes less, larger S has fewer
blocks; S = 64 measured best for W = 512 on CPU. When T is small next to the window (decoding
with a cache) one block of all T queries computes fewer scores and is used instead.

Partial windows. Without an initial state the cached slots hold no token, so the first W - 1 new
tokens see only the tokens before them. They go block by block, each block over the keys from the
first token to its own last (causal and document mask, one SDPA call per block): about half the
scores that full windows would compute: at T <= W that halves the work (1.8x faster at
T = W = 512 in ``benchmarks/kernels.py``). The later tokens take the full-window path; joining
the two outputs costs one copy of the output (peak memory 257 vs 228 MB at T = 16 W there).

Gradients are SDPA's backward, also into the initial state's k and v.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from recurlm.kernels.dispatch import compute_dtype
from recurlm.kernels.local_attention.state import LocalAttentionState, extend_with_state, final_state_from

MAX_BLOCK_SIZE = 64
MIN_BLOCK_SIZE = 16
PAD_DOC = -2
"""Document id of right padding: no real position has it (tokens >= 0, empty cache slots -1)."""


def chunk_local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, scale: float,
                          initial_state: LocalAttentionState | None = None, output_final_state: bool = False,
                          resets: torch.Tensor | None = None, lengths: torch.Tensor | None = None,
                          block_size: int | None = None) -> tuple[torch.Tensor, LocalAttentionState | None]:
    """q [B, T, H, D], k, v [B, T, Hkv, D] -> (o [B, T, H, D] in q.dtype, state or None).

    ``block_size`` S >= 1 (default: the window clamped to [MIN_BLOCK_SIZE, MAX_BLOCK_SIZE]);
    ``lengths`` [B] (right-padded rows) only moves where the final state is read."""
    size = min(max(window, MIN_BLOCK_SIZE), MAX_BLOCK_SIZE) if block_size is None else block_size
    if size < 1:
        raise ValueError(f"block_size must be >= 1, got {size}")
    dtype = compute_dtype(q.dtype)
    seq_len = q.shape[1]
    k_ext, v_ext, doc_ext = extend_with_state(k, v, initial_state, resets, window, dtype)
    queries = q.to(dtype)
    partial = 0 if initial_state is not None else min(seq_len, window - 1)
    outputs = [_partial_windows(queries[:, :partial], k_ext, v_ext, doc_ext, window, scale, size)] if partial else []
    if partial < seq_len:  # shifted by `partial`, the later tokens' extended sequence has the same layout
        outputs.append(_full_windows(queries[:, partial:], k_ext[:, partial:], v_ext[:, partial:],
                                     doc_ext[:, partial:], window, scale, size))
    final_state = final_state_from(k_ext, v_ext, doc_ext, window, lengths) if output_final_state else None
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
    return out.to(q.dtype), final_state


def _partial_windows(q: torch.Tensor, k_ext: torch.Tensor, v_ext: torch.Tensor, doc_ext: torch.Tensor,
                     window: int, scale: float, size: int) -> torch.Tensor:
    """The first P <= W - 1 new tokens, no cache: q [B, P, H, D] -> [B, P, H, D]. Each sees every
    earlier token of its document (all of them lie inside its window)."""
    count, heads = q.shape[1], q.shape[2]
    first = window - 1  # extended position of the first new token
    keys, values = (x[:, first:first + count].transpose(1, 2) for x in (k_ext, v_ext))  # [B, Hkv, P, D]
    docs = doc_ext[:, first:first + count]
    queries = q.transpose(1, 2)
    outputs = []
    for start in range(0, count, size):
        end = min(count, start + size)
        causal = torch.arange(start, end, device=q.device)[:, None] >= torch.arange(end, device=q.device)[None, :]
        allowed = causal & (docs[:, start:end, None] == docs[:, None, :end])  # [B, s, end]
        outputs.append(F.scaled_dot_product_attention(
            queries[:, :, start:end], keys[:, :, :end], values[:, :, :end], attn_mask=allowed[:, None],
            scale=scale, enable_gqa=keys.shape[1] != heads))
    return torch.cat(outputs, dim=2).transpose(1, 2)


def _full_windows(q: torch.Tensor, k_ext: torch.Tensor, v_ext: torch.Tensor, doc_ext: torch.Tensor,
                  window: int, scale: float, size: int) -> torch.Tensor:
    """Tokens whose whole window lies in the extended sequence: q [B, T, H, D], k_ext, v_ext
    [B, W - 1 + T, Hkv, D], doc_ext [B, W - 1 + T] -> [B, T, H, D], blocks unfolded into one call."""
    batch, seq_len, heads, head_dim = q.shape
    kv_heads = k_ext.shape[2]
    num_blocks = -(-seq_len // size)
    if seq_len * (seq_len + window - 1) <= num_blocks * size * (size + window - 1):
        size, num_blocks = seq_len, 1
    span = size + window - 1
    right = num_blocks * size - seq_len
    # padded queries attend to padded keys only, so no row of the mask is empty, and causality
    # hides the padded keys from real queries
    docs = F.pad(doc_ext, (0, right), value=PAD_DOC)
    key_docs = docs.unfold(1, span, size)                                       # [B, n, L]
    query_docs = docs[:, window - 1:].view(batch, num_blocks, size)             # [B, n, S]
    distance = (window - 1 + torch.arange(size, device=q.device)[:, None]
                - torch.arange(span, device=q.device)[None, :])
    allowed = (distance >= 0) & (distance < window) & (query_docs[..., :, None] == key_docs[..., None, :])
    keys, values = (F.pad(x, (0, 0, 0, 0, 0, right)).unfold(1, span, size)     # [B, n, Hkv, D, L]
                    .permute(0, 1, 2, 4, 3).reshape(batch * num_blocks, kv_heads, span, head_dim)
                    for x in (k_ext, v_ext))
    queries = F.pad(q, (0, 0, 0, 0, 0, right)).view(batch * num_blocks, size, heads, head_dim).transpose(1, 2)
    out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=allowed.reshape(-1, 1, size, span),
                                         scale=scale, enable_gqa=kv_heads != heads)   # [B * n, H, S, D]
    out = out.view(batch, num_blocks, heads, size, head_dim).transpose(2, 3).reshape(batch, -1, heads, head_dim)
    return out[:, :seq_len]
