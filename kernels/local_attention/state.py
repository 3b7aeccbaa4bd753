"""The recurrent state of sliding-window attention and the extended key sequence built from it.

A token attends to itself and the window - 1 tokens before it, so everything a continuation needs
is the key/value cache of the last window - 1 tokens plus which of them still belong to the
document being continued. Every implementation works on the *extended* sequence

    [window - 1 cached slots | T new tokens]        (ext index of new token i = window - 1 + i)

with a document id per position: -1 for empty/invalid cache slots, 0 for valid cache slots and
for new tokens before the first reset, incremented at every reset. Query t attends to key s iff
0 <= ext(t) - s <= window - 1 and doc(s) == doc(t) (which also excludes the -1 slots).
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class LocalAttentionState(NamedTuple):
    """Key/value cache of the last ``window - 1`` tokens, oldest first (batch is dim 0).

    k, v: [B, window - 1, Hkv, D] in the compute dtype (float32; float64 for float64 inputs);
        slot window - 2 is the most recent token. Invalid slots hold zeros.
    valid: [B, window - 1] bool, True where the slot holds a token of the document that the next
        token continues (a reset at that token discards all of them).

    With cu_seqlens, B is the number of sequences N.
    """

    k: torch.Tensor
    v: torch.Tensor
    valid: torch.Tensor

    @classmethod
    def empty(cls, batch: int, window: int, kv_heads: int, head_dim: int, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> "LocalAttentionState":
        """A state with no cached tokens (equivalent to passing no initial state)."""
        kv = torch.zeros(batch, window - 1, kv_heads, head_dim, dtype=dtype, device=device)
        return cls(kv, kv.clone(), torch.zeros(batch, window - 1, dtype=torch.bool, device=device))


def extend_with_state(k: torch.Tensor, v: torch.Tensor, state: LocalAttentionState | None,
                      resets: torch.Tensor | None, window: int, dtype: torch.dtype,
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """k, v [B, T, Hkv, D] -> (k_ext, v_ext [B, window - 1 + T, Hkv, D] in ``dtype``,
    doc_ext [B, window - 1 + T] int64) as described in the module docstring."""
    batch, seq_len, kv_heads, head_dim = k.shape
    if state is None:
        state = LocalAttentionState.empty(batch, window, kv_heads, head_dim, dtype, k.device)
    docs = torch.zeros(batch, seq_len, dtype=torch.long, device=k.device)
    if resets is not None:
        docs = resets.long().cumsum(dim=1)
    cache_docs = torch.where(state.valid, 0, -1)
    k_ext = torch.cat([state.k.to(dtype), k.to(dtype)], dim=1)
    v_ext = torch.cat([state.v.to(dtype), v.to(dtype)], dim=1)
    return k_ext, v_ext, torch.cat([cache_docs, docs], dim=1)


def final_state_from(k_ext: torch.Tensor, v_ext: torch.Tensor, doc_ext: torch.Tensor, window: int,
                     lengths: torch.Tensor | None = None) -> LocalAttentionState:
    """The cache after the last token of every row: the window - 1 extended positions ending at
    new token ``lengths[b] - 1`` (default: the last one), valid where they share its document.

    k_ext, v_ext [B, window - 1 + T, Hkv, D]; doc_ext [B, window - 1 + T]; lengths [B] int64."""
    batch, ext_len, kv_heads, head_dim = k_ext.shape
    if lengths is None:
        lengths = torch.full((batch,), ext_len - (window - 1), dtype=torch.long, device=k_ext.device)
    slots = lengths[:, None] + torch.arange(window - 1, device=k_ext.device)  # [B, W - 1]
    last_doc = doc_ext.gather(1, (lengths + window - 2)[:, None])  # doc of the last token, [B, 1]
    valid = doc_ext.gather(1, slots) == last_doc
    index = slots[:, :, None, None].expand(batch, window - 1, kv_heads, head_dim)
    keep = valid[:, :, None, None].to(k_ext.dtype)
    return LocalAttentionState(k_ext.gather(1, index) * keep, v_ext.gather(1, index) * keep, valid)
