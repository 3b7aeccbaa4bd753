"""Document boundaries as every layer sees them.

A packed row holds several documents. Boundaries travel through the stack as one boolean tensor
``resets`` of shape [B, T]: ``resets[b, t]`` is True where a new document starts, so every state
carried into token t (recurrent state, conv window, token shift, attention window) is discarded.
``resets[b, 0]`` True also discards an ``initial_state`` for row b; False lets a state passed from
the previous window continue the same document (state passing / TBPTT).

flash-linear-attention's varlen convention (``cu_seqlens`` [N + 1] over a single flattened row)
converts to and from this form with the helpers below.
"""
from __future__ import annotations

import torch


def resets_from_cu_seqlens(cu_seqlens: torch.Tensor, total_len: int) -> torch.Tensor:
    """cu_seqlens [N + 1] (0 = start, last = total_len) -> resets [1, total_len] bool."""
    resets = torch.zeros(1, total_len, dtype=torch.bool, device=cu_seqlens.device)
    resets[0, cu_seqlens[:-1].long()] = True
    return resets


def resets_from_doc_ids(doc_ids: torch.Tensor) -> torch.Tensor:
    """doc_ids [B, T] (any integer labels, constant within a document) -> resets [B, T] bool.

    Position 0 is marked as a document start."""
    resets = torch.ones_like(doc_ids, dtype=torch.bool)
    resets[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    return resets


def doc_ids_from_resets(resets: torch.Tensor) -> torch.Tensor:
    """resets [B, T] -> doc_ids [B, T] int64: 0 for the document that continues from before the row,
    incremented at every reset (so two tokens attend to each other only with equal ids)."""
    return resets.long().cumsum(dim=1)


def positions_from_resets(resets: torch.Tensor | None, batch: int, seq_len: int,
                          offset: torch.Tensor | int = 0, device=None) -> torch.Tensor:
    """Position of every token inside its document: [B, T] int64.

    ``offset`` ([B] or int) is the position of token 0 of a row whose document continues from a
    previous window (it is ignored after the first reset)."""
    ar = torch.arange(seq_len, device=device if resets is None else resets.device)
    pos = ar.expand(batch, seq_len) + (offset[:, None] if torch.is_tensor(offset) else offset)
    if resets is None:
        return pos.clone()
    # index of the most recent reset at or before t (or -1 if none), via cummax over marked indices
    marks = torch.where(resets, ar.expand(batch, seq_len), torch.full_like(pos, -1))
    last_reset = marks.cummax(dim=1).values
    return torch.where(last_reset >= 0, ar - last_reset, pos)


def cu_seqlens_from_resets(resets: torch.Tensor) -> torch.Tensor:
    """resets [1, T] -> cu_seqlens [N + 1] int64 (position 0 always starts a sequence)."""
    if resets.shape[0] != 1:
        raise ValueError(f"cu_seqlens describes one flattened row; got resets of shape {tuple(resets.shape)}")
    starts = torch.nonzero(resets[0], as_tuple=False).flatten()
    if starts.numel() == 0 or starts[0] != 0:
        starts = torch.cat([starts.new_zeros(1), starts])
    return torch.cat([starts, starts.new_tensor([resets.shape[1]])])
