"""Choosing an implementation for a recurrence op, and the shared varlen adapter.

Every op is a function ``op(*inputs, initial_state=None, output_final_state=False, resets=None,
cu_seqlens=None, impl="auto") -> (output, final_state | None)``. ``impl`` picks:

- ``"naive"``: the sequential reference (obviously right, slow; the test oracle);
- ``"chunk"``: the PyTorch chunkwise form (the CPU path and the fallback on any device);
- ``"triton"``: the Triton kernel (CUDA; on CPU only under ``TRITON_INTERPRET=1``);
- ``"auto"``: Triton for CUDA tensors, chunk elsewhere (naive for a single token on CPU).

Every op runs outside ``torch.autocast`` (``autocast_off``): it fixes its own precisions, with
states and accumulation in ``compute_dtype``.
"""
from __future__ import annotations

import functools
import os
from typing import Callable, Sequence

import torch

IMPLS = ("auto", "naive", "chunk", "triton")


def autocast_off(fn: Callable) -> Callable:
    """``fn`` run with ``torch.autocast`` disabled on CPU and CUDA.

    The kernels fix their own precisions (float32 state and accumulation, outputs in the input
    dtype); inside an autocast region its per-op casts would run the chunk paths' float32 matmuls
    in bf16 or mix dtypes within an op. Decorates every public op. Their backward passes then run
    in the forward's precisions, provided ``.backward()`` is called outside autocast, as PyTorch
    requires of autocast in general."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            return fn(*args, **kwargs)

    return run


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype every op accumulates and keeps its states in for inputs of ``dtype``: float64 for
    float64 inputs (the tests' references), float32 for every lower precision."""
    return torch.promote_types(dtype, torch.float32)


def triton_interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (tests)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_impl(impl: str, reference: torch.Tensor) -> str:
    """Map ``impl`` (one of IMPLS) to a concrete implementation for tensors like ``reference``."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl != "auto":
        if impl == "triton" and not (reference.is_cuda or triton_interpreting()):
            raise RuntimeError("impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tests)")
        return impl
    if reference.is_cuda:
        return "triton"
    # one token (a decode step): the sequential reference is exactly one recurrence step and skips
    # the chunked path's padding and block set-up
    return "naive" if reference.dim() > 1 and reference.shape[1] == 1 else "chunk"


def pad_varlen(x: torch.Tensor, cu_seqlens: torch.Tensor, pad_value: float = 0.0) -> torch.Tensor:
    """[1, total, ...] flattened sequences -> [N, max_len, ...] right-padded with ``pad_value``."""
    if x.shape[0] != 1:
        raise ValueError(f"with cu_seqlens the batch size must be 1, got {x.shape[0]}")
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    out = x.new_full((len(lengths), max(lengths), *x.shape[2:]), pad_value)
    for n, (start, length) in enumerate(zip(cu_seqlens[:-1].tolist(), lengths)):
        out[n, :length] = x[0, start:start + length]
    return out


def unpad_varlen(x: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Inverse of pad_varlen: [N, max_len, ...] -> [1, total, ...]."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    return torch.cat([x[n, :length] for n, length in enumerate(lengths)], dim=0)[None]


def run_varlen(op: Callable, inputs: Sequence[torch.Tensor], identity_pads: Sequence[float],
               cu_seqlens: torch.Tensor, **kwargs):
    """Run a linear recurrence ``op`` over flattened sequences by right-padding them into a batch.

    ``identity_pads[i]`` is the pad value of ``inputs[i]`` that makes a padded step leave the state
    unchanged (e.g. key 0 and log-decay 0), so the final state of each padded row is the final state
    of its sequence. ``initial_state`` and the returned final state have leading dim N.
    Only for ops whose padded step can be an identity; nonlinear ops handle cu_seqlens themselves.
    """
    padded = [pad_varlen(t, cu_seqlens, p) for t, p in zip(inputs, identity_pads)]
    out, final_state = op(*padded, **kwargs)
    return unpad_varlen(out, cu_seqlens), final_state


def check_boundaries(batch: int, seq_len: int, resets: torch.Tensor | None,
                     cu_seqlens: torch.Tensor | None) -> int:
    """Validate ``resets`` [B, T] bool / ``cu_seqlens`` [N + 1] (one of them at most) and return the
    number of sequences whose states the op carries: B, or N with cu_seqlens."""
    if resets is not None:
        if cu_seqlens is not None:
            raise ValueError("pass document boundaries either as resets or as cu_seqlens, not both")
        if resets.shape != (batch, seq_len) or resets.dtype != torch.bool:
            raise ValueError(f"resets must be bool [B, T] = {(batch, seq_len)}, got "
                             f"{resets.dtype} {tuple(resets.shape)}")
    if cu_seqlens is None:
        return batch
    if batch != 1:
        raise ValueError(f"with cu_seqlens the batch size must be 1, got {batch}")
    if cu_seqlens.dim() != 1 or cu_seqlens[0] != 0 or cu_seqlens[-1] != seq_len:
        raise ValueError(f"cu_seqlens must be [N + 1] from 0 to T = {seq_len}, got {cu_seqlens.tolist()}")
    return cu_seqlens.numel() - 1
