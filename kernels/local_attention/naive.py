"""Reference sliding-window attention: the sequential loop, one query at a time over its window.

    o_t = sum_s softmax_s(scale * q_t . k_s) v_s   over   t - window < s <= t, doc(s) == doc(t),

read from the extended sequence of ``state.py`` (the cached window - 1 tokens followed by the T new
ones), exactly as decoding with a key/value cache does. O(T * W) work in T small steps: a test
oracle, not a fast path. :func:`banded_sdpa_reference` (torch's SDPA with a dense mask, the peer
reference of the tests and benchmarks) pins it to torch's SDPA.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from recurlm.kernels.boundaries import doc_ids_from_resets
from recurlm.kernels.dispatch import compute_dtype
from recurlm.kernels.local_attention.state import LocalAttentionState, extend_with_state, final_state_from


def naive_local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, scale: float,
                          initial_state: LocalAttentionState | None = None, output_final_state: bool = False,
                          resets: torch.Tensor | None = None, lengths: torch.Tensor | None = None,
                          ) -> tuple[torch.Tensor, LocalAttentionState | None]:
    """q [B, T, H, D], k, v [B, T, Hkv, D] -> (o [B, T, H, D] in q.dtype, state or None).

    ``lengths`` [B] (right-padded rows) only moves where the final state is read."""
    dtype = compute_dtype(q.dtype)
    seq_len, kv_heads = q.shape[1], k.shape[2]
    k_ext, v_ext, doc_ext = extend_with_state(k, v, initial_state, resets, window, dtype)
    outputs = []
    for t in range(seq_len):
        # new token t sits at extended position t + window - 1; its window starts at position t
        keys, values, docs = k_ext[:, t:t + window], v_ext[:, t:t + window], doc_ext[:, t:t + window]
        query = q[:, t].to(dtype).unflatten(1, (kv_heads, -1))  # [B, Hkv, H / Hkv, D]
        scores = torch.einsum("bngd,bsnd->bngs", query, keys) * scale  # [B, Hkv, H / Hkv, W]
        same_doc = docs == docs[:, -1:]  # [B, W]; the query itself always qualifies
        probs = scores.masked_fill(~same_doc[:, None, None], float("-inf")).softmax(dim=-1)
        outputs.append(torch.einsum("bngs,bsnd->bngd", probs, values).flatten(1, 2))
    final_state = final_state_from(k_ext, v_ext, doc_ext, window, lengths) if output_final_state else None
    return torch.stack(outputs, dim=1).to(q.dtype), final_state


def banded_sdpa_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
                          resets: torch.Tensor | None = None) -> torch.Tensor:
    """torch's ``scaled_dot_product_attention`` with an explicit dense [T, T] banded causal and
    same-document mask (no cache): q [B, T, H, D], k, v [B, T, Hkv, D] -> o [B, T, H, D].
    O(T^2) memory: the peer reference the sequential ``naive`` path is tested and timed against."""
    seq_len = q.shape[1]
    position = torch.arange(seq_len, device=q.device)
    distance = position[:, None] - position[None, :]
    docs = (doc_ids_from_resets(resets) if resets is not None
            else torch.zeros(q.shape[:2], dtype=torch.long, device=q.device))
    mask = (distance >= 0) & (distance < window) & (docs[:, :, None] == docs[:, None, :])  # [B, T, T]
    group = q.shape[2] // k.shape[2]
    keys, values = (x.repeat_interleave(group, dim=2).transpose(1, 2) for x in (k, v))
    out = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=mask[:, None])
    return out.transpose(1, 2)
