"""Run flash-linear-attention's varlen ops on recurlm's ``resets`` convention.

recurlm passes document boundaries as ``resets`` [B, T] bool (True where a document starts; see
:mod:`recurlm.kernels.boundaries`); fla's chunk ops take either a plain batch or one flattened
row with ``cu_seqlens`` [N + 1] and one initial/final state per sequence. :func:`run_fla_varlen`
converts between the two, for any fla op with the calling convention::

    fla_op(*tokens, initial_state=None | [M, ...], output_final_state=bool,
           cu_seqlens=None | LongTensor [M + 1], cu_seqlens_cpu=None | its host copy,
           **op_kwargs) -> (o [1, L, ...], final [M, ...] | None)

e.g. ``fla.ops.gla.chunk_gla(q, k, v, g, scale=...)``, ``fla.ops.rwkv6.chunk_rwkv6(r, k, v, w, u,
scale=...)`` or ``fla.ops.generalized_delta_rule.dplr.chunk_dplr_delta_rule(q, k, v, a, b, gk,
scale=...)``. Pass the per-token tensors ([B, T, ...]) as ``tokens`` and everything else
(per-head parameters such as RWKV-6's ``u``, ``scale``) through ``op_kwargs``, by name::

    o, ht = run_fla_varlen(chunk_rwkv6, (r, k, v, w), resets=resets, initial_state=h0,
                           output_final_state=True, u=u, scale=scale)

What it does (a *sequence* is a batch row, or with ``cu_seqlens`` one of the flattened sequences;
a *segment* is a maximal run of tokens inside one sequence with no reset after its first token):

1. the B rows are flattened into one row of B * T tokens, and fla's ``cu_seqlens`` is placed at
   every sequence start and at every reset (:func:`plan_segments`);
2. ``initial_state[n]`` goes to the first segment of sequence n, unless that sequence starts with a
   reset (``resets[b, 0]``), in which case it is dropped (zero, so its gradient is zero); segments
   that start at a reset start from a zero state;
3. the output is reshaped back to [B, T, ...], and the final state of sequence n is the final state
   of its last segment ([N, ...], N = B, or the number of ``cu_seqlens`` sequences).

Without resets the op is called directly (batch form, or its own ``cu_seqlens``): no copy.

With resets, the plan is made once per ``resets`` tensor (:func:`segment_plan`), not once per
layer: ``RecurrentLM.forward`` hands the same ``resets`` object to every layer, so the first
fla-backed layer of a forward plans and every later layer, and the recomputation of checkpointed
blocks in backward, reuse the plan. Planning copies ``resets`` to the host once (the one
device-to-host sync of a forward: the number of segments decides the shapes) and builds the plan
there; the op then gets the same ``cu_seqlens`` object in every layer together with its CPU copy
``cu_seqlens_cpu`` (fla's argument for exactly this), so fla's identity-keyed caches
(``prepare_chunk_indices`` and friends, ``fla.utils.tensor_cache``) hit and fla itself makes no
host sync for the segment lengths.
The adapter is device-agnostic and only reshapes and indexes: on CPU it is tested with a recurlm
naive op standing in for the fla kernel.
"""
from __future__ import annotations

import weakref
from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

import torch


@dataclass(frozen=True)
class SegmentPlan:
    """How N sequences of a flattened row split into M >= N reset-free segments."""

    cu_seqlens: torch.Tensor
    """[M + 1] int64 on the device of ``resets``: segment boundaries in the flattened row (fla's
    varlen argument)."""
    cu_seqlens_cpu: torch.Tensor
    """[M + 1] int64: the same boundaries on the host (fla's ``cu_seqlens_cpu``: no sync to read them)."""
    first_segment: torch.Tensor
    """[N] int64: index of the segment that starts sequence n (receives ``initial_state[n]``)."""
    last_segment: torch.Tensor
    """[N] int64: index of the segment that ends sequence n (gives its final state)."""
    keeps_initial_state: torch.Tensor
    """[N] bool: False where sequence n starts with a reset (its initial state is discarded)."""


def plan_segments(resets: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> SegmentPlan:
    """Split sequences at resets.

    Args:
        resets: [B, T] bool, True where a document starts.
        cu_seqlens: [N + 1] boundaries of N sequences inside a single row (B must be 1), or None
            for one sequence per batch row.

    Returns:
        the :class:`SegmentPlan` of the flattened row of B * T tokens. The plan is computed on the
        host (one copy of ``resets`` from the device) and its index tensors are copied back to
        ``resets``' device without waiting.
    """
    B, T = resets.shape
    device = resets.device
    if cu_seqlens is not None and B != 1:
        raise ValueError(f"with cu_seqlens the batch size must be 1, got resets of shape {tuple(resets.shape)}")
    flat_resets = resets.reshape(-1).cpu()
    if cu_seqlens is None:
        seq_bounds = torch.arange(B + 1) * T
    else:
        seq_bounds = cu_seqlens.to(device="cpu", dtype=torch.long)
    seq_starts, seq_ends = seq_bounds[:-1], seq_bounds[1:] - 1
    is_start = flat_resets.clone()
    is_start[seq_starts] = True
    segment_of_token = is_start.long().cumsum(0) - 1
    boundaries = torch.cat([is_start.nonzero().flatten(), seq_bounds[-1:]])
    host = (boundaries, segment_of_token[seq_starts], segment_of_token[seq_ends], ~flat_resets[seq_starts])
    if device.type == "cuda":  # pinned, so the copies below do not wait for the device
        host = tuple(t.pin_memory() for t in host)
    on_device = [t.to(device, non_blocking=True) for t in host]
    return SegmentPlan(cu_seqlens=on_device[0], cu_seqlens_cpu=boundaries, first_segment=on_device[1],
                       last_segment=on_device[2], keeps_initial_state=on_device[3])


_PLANS: deque = deque(maxlen=8)
"""Recent plans by the identity of their ``resets`` and ``cu_seqlens``: (weakrefs, resets version, plan)."""


def _same(ref: weakref.ref | None, obj: torch.Tensor | None) -> bool:
    return obj is None if ref is None else ref() is obj


def segment_plan(resets: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> SegmentPlan:
    """:func:`plan_segments`, made once per ``resets`` tensor object: a later call with the same
    object (unchanged since: same ``_version``) and the same ``cu_seqlens`` object returns the same
    plan, so every layer of a forward, and its recomputation in backward, share one plan and one
    ``cu_seqlens`` tensor (module docstring). A few recent plans are kept (the forward of one
    micro-batch and the backward of the previous one)."""
    for resets_ref, cu_ref, version, plan in _PLANS:
        if _same(resets_ref, resets) and _same(cu_ref, cu_seqlens) and version == resets._version:
            return plan
    plan = plan_segments(resets, cu_seqlens)
    _PLANS.append((weakref.ref(resets), None if cu_seqlens is None else weakref.ref(cu_seqlens),
                   resets._version, plan))
    return plan


def run_fla_varlen(
    op: Callable,
    tokens: Sequence[torch.Tensor],
    *,
    resets: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    **op_kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Call an fla-convention varlen ``op`` on batch rows with ``resets`` (module docstring).

    Args:
        op: fla-style function (see the module docstring).
        tokens: per-token inputs, each [B, T, ...].
        resets: [B, T] bool or None.
        cu_seqlens: [N + 1] sequence boundaries (B == 1), or None for one sequence per row.
        initial_state: [N, ...] one state per sequence, or None (zeros).
        output_final_state: return the final state of every sequence.
        op_kwargs: passed to ``op`` unchanged (non-token inputs, scale, ...).

    Returns:
        o [B, T, ...] and final state [N, ...] (or None).
    """
    if resets is None:
        if cu_seqlens is not None:
            op_kwargs["cu_seqlens"] = cu_seqlens
        return op(*tokens, initial_state=initial_state, output_final_state=output_final_state, **op_kwargs)

    B, T = resets.shape
    if any(x.shape[:2] != (B, T) for x in tokens):
        raise ValueError(f"every token input must be [B, T, ...] with [B, T] = {[B, T]} of resets, "
                         f"got {[tuple(x.shape) for x in tokens]}")
    plan = segment_plan(resets, cu_seqlens)
    n_segments = plan.cu_seqlens.numel() - 1
    segment_initial_state = None
    if initial_state is not None:
        kept = plan.keeps_initial_state.to(initial_state.dtype).view(-1, *([1] * (initial_state.dim() - 1)))
        segment_initial_state = initial_state.new_zeros(n_segments, *initial_state.shape[1:]).index_copy(
            0, plan.first_segment, initial_state * kept)
    flat = [x.reshape(1, B * T, *x.shape[2:]) for x in tokens]
    o, segment_final_state = op(*flat, initial_state=segment_initial_state,
                                output_final_state=output_final_state, cu_seqlens=plan.cu_seqlens,
                                cu_seqlens_cpu=plan.cu_seqlens_cpu, **op_kwargs)
    final_state = segment_final_state[plan.last_segment] if output_final_state else None
    return o.reshape(B, T, *o.shape[2:]), final_state
