"""Reference sliding-window attention: one explicit masked softmax over the extended sequence.

    o_t = sum_s softmax_s(scale * q_t . k_s + mask_ts) v_s,
    mask_ts = 0 if t - window < s <= t and doc(s) == doc(t) else -inf,

over the cached window - 1 tokens followed by the T new ones (see ``state.py``). O(T (T + W))
memory: a test oracle, not a fast path.
"""
from __future__ import annotations

import torch

from recurlm.kernels.local_attention.state import LocalAttentionState, extend_with_state, final_state_from


def local_attention_naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, scale: float,
                          initial_state: LocalAttentionState | None = None, output_final_state: bool = False,
                          resets: torch.Tensor | None = None, lengths: torch.Tensor | None = None,
                          ) -> tuple[torch.Tensor, LocalAttentionState | None]:
    """q [B, T, H, D], k, v [B, T, Hkv, D] -> (o [B, T, H, D] in q.dtype, state or None).

    ``lengths`` [B] (right-padded rows) only moves where the final state is read."""
    dtype = torch.promote_types(q.dtype, torch.float32)
    batch, seq_len, heads, _ = q.shape
    k_ext, v_ext, doc_ext = extend_with_state(k, v, initial_state, resets, window, dtype)
    group = heads // k.shape[2]
    keys, values = k_ext.repeat_interleave(group, dim=2), v_ext.repeat_interleave(group, dim=2)
    scores = torch.einsum("bthd,bshd->bhts", q.to(dtype), keys) * scale  # [B, H, T, W - 1 + T]
    query_pos = torch.arange(seq_len, device=q.device)[:, None] + window - 1
    distance = query_pos - torch.arange(k_ext.shape[1], device=q.device)[None, :]
    in_window = (distance >= 0) & (distance < window)  # [T, W - 1 + T]
    same_doc = doc_ext[:, window - 1:, None] == doc_ext[:, None, :]  # [B, T, W - 1 + T]
    scores = scores.masked_fill(~(in_window & same_doc)[:, None], float("-inf"))
    out = torch.einsum("bhts,bshd->bthd", scores.softmax(dim=-1), values)
    final_state = final_state_from(k_ext, v_ext, doc_ext, window, lengths) if output_final_state else None
    return out.to(q.dtype), final_state
