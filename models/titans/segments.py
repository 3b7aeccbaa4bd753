"""The segment grid of Titans: every document laid out from a multiple of the segment length, and
a scan over its segments that a sequence fed in pieces resumes exactly (package docstring,
"Segments, mini-batches and exact state")."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from recurlm.models.state import LayerState

Carry = dict[str, torch.Tensor]
"""The recurrent sub-states a segment step carries (memory weights, momentum, conv histories)."""


def _where_rows(mask: torch.Tensor, a: Carry, b: Carry) -> Carry:
    """Per batch row (mask [B] bool): a where True, else b."""
    return {key: torch.where(mask.view(-1, *[1] * (a[key].dim() - 1)), a[key], b[key]) for key in a}


def document_slots(valid: torch.Tensor, pos: torch.Tensor, seg_len: int) -> tuple[torch.Tensor, int]:
    """Where every element goes when each document is laid out from a multiple of ``seg_len``.

    valid [B, S] bool (elements to place), pos [B, S] int64 position inside its document (the first
    valid element of a document has pos % seg_len == 0). Documents follow each other in row order,
    each occupying ceil(len / seg_len) whole segments. Returns slot [B, S] (invalid elements: L, a
    dump slot) and L, the aligned length (a multiple of seg_len)."""
    B, S = valid.shape
    first_in_row = valid & (valid.long().cumsum(1) == 1)
    start = valid & ((pos == 0) | first_in_row)
    doc = (start.long().cumsum(1) - 1).clamp_min(0)
    lengths = torch.zeros(B, S, dtype=torch.long, device=valid.device).scatter_add(1, doc, valid.long())
    n_segments = (lengths + seg_len - 1) // seg_len
    doc_offset = seg_len * (n_segments.cumsum(1) - n_segments)
    first_pos = torch.zeros_like(lengths).scatter_add(1, doc, torch.where(start, pos, 0))
    L = int(n_segments.sum(1).max()) * seg_len
    slot = doc_offset.gather(1, doc) + pos - first_pos.gather(1, doc)
    return torch.where(valid, slot, L), L


@dataclass
class SegmentLayout:
    """Where the tokens of one call (buffered ones first) sit on the segment grid; it depends only on
    the tokens' positions, so every Titans layer of a forward shares one (``TitansLM.block_extras``)
    and the one host sync that sizes the grid (``L``) happens once per forward, not once per layer."""

    valid: torch.Tensor
    """[B, C - 1 + T] bool: buffered tokens of the current segment, then every new token."""
    slot: torch.Tensor
    """[B, C - 1 + T] int64: each element's slot on the aligned grid (invalid ones: ``L``)."""
    L: int
    """Aligned length, a multiple of C."""
    doc_starts: torch.Tensor
    """[B, L + 1] bool: slots that start a document."""
    current: torch.Tensor
    """[B] int64: the segment the next token falls in."""


def segment_layout(positions: torch.Tensor, seg_len: int) -> SegmentLayout:
    """The :class:`SegmentLayout` of tokens at ``positions`` [B, T] (see :func:`scan_segments`)."""
    C = seg_len
    pos0 = positions[:, 0]
    buffered = torch.where(pos0 > 0, pos0 % C, 0)  # tokens of the current segment seen before
    j = torch.arange(C - 1, device=positions.device)
    valid = torch.cat([j < buffered[:, None], torch.ones_like(positions, dtype=torch.bool)], 1)
    pos = torch.cat([pos0[:, None] - buffered[:, None] + j, positions], 1)
    slot, L = document_slots(valid, pos, C)
    doc_starts = torch.zeros(positions.shape[0], L + 1, dtype=torch.bool, device=positions.device).scatter(
        1, slot, valid & (pos == 0))
    last = slot.masked_fill(~valid, -1).max(1).values
    return SegmentLayout(valid, slot, L, doc_starts, (last + 1) // C)


def scan_segments(x: torch.Tensor, positions: torch.Tensor, state: Optional[LayerState], seg_len: int,
                  fresh: Carry, step: Callable[[torch.Tensor, Carry], tuple[torch.Tensor, Carry]],
                  return_state: bool, layout: Optional[SegmentLayout] = None
                  ) -> tuple[torch.Tensor, Optional[LayerState]]:
    """Run ``step`` over the segments of every document, exactly resumable mid-segment.

    x [B, T, D]; positions [B, T] inside the documents (0 = document start; token 0 continues the
    previous call's document when its position is > 0); state: the carry at the start of the
    current segment plus ``buffer`` [B, seg_len - 1, D] (that segment's inputs so far); fresh: the
    carry at a document start (broadcastable to batch B). ``step(x_seg [B, C, D], carry) ->
    (y_seg [B, C, Dy], carry)`` processes one whole segment; ``layout``: ``segment_layout(positions,
    seg_len)`` if already made. Returns y [B, T, Dy] and the new state (carry + buffer) if
    ``return_state``."""
    B, T, D = x.shape
    C = seg_len
    layout = layout or segment_layout(positions, C)
    L = layout.L
    carry = {key: value.expand(B, *value.shape[1:]) for key, value in fresh.items()}
    buffer = x.new_zeros(B, C - 1, D)
    if state is not None:
        carry, buffer = {key: state[key] for key in fresh}, state["buffer"].to(x.dtype)
    index = layout.slot[..., None].expand(-1, -1, D)
    aligned = x.new_zeros(B, L + C, D).scatter(1, index, torch.cat([buffer, x], 1))
    outputs, snapshot = [], None
    for n in range(L // C):
        carry = _where_rows(layout.doc_starts[:, n * C], {k: v.expand_as(carry[k]) for k, v in fresh.items()},
                            carry)
        if return_state:
            snapshot = carry if snapshot is None else _where_rows(layout.current == n, carry, snapshot)
        y, carry = step(aligned[:, n * C:(n + 1) * C], carry)
        outputs.append(y)
    y_aligned = torch.cat(outputs + [y.new_zeros(B, 1, *y.shape[2:])], 1).flatten(2)
    y = y_aligned.gather(1, layout.slot[..., None].expand(-1, -1, y_aligned.shape[-1]))[:, C - 1:].unflatten(
        2, y.shape[2:])
    if not return_state:
        return y, None
    snapshot = _where_rows(layout.current == L // C, carry, snapshot)
    j = torch.arange(C - 1, device=x.device)
    rest = (layout.current[:, None] * C + j)[..., None].expand(-1, -1, D)
    return y, {**snapshot, "buffer": aligned.gather(1, rest)}
