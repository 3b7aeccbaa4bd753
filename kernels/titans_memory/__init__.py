"""Titans neural long-term memory (Behrouz et al., 2024) as a recurrence op.

Every head owns a small MLP memory M (depth 1: ``M(x) = x W``, W [D, D]; depth 2:
``M(x) = act(x W1) W2``, W1 [D, E], W2 [E, D], act = exact GELU or SiLU; no bias, norm or residual)
trained online by gradient descent with momentum and forgetting on l(M; k, v) = ||M(k) - v||^2:

    S_t = eta_t * S_{t-1} - theta_t * grad_W l(M_base; k_t, v_t)      momentum ("surprise")
    M_t = (1 - alpha_t) * M_{t-1} + S_t                              forgetting
    y_t = M_t(q_t)                                                   read with the updated memory

M_base is the memory at the start of the token's mini-batch of ``chunk_size`` tokens (TTT/Titans
mini-batch gradient descent); ``chunk_size=1`` gives M_base = M_{t-1}, the exact per-token rule.
Reading with M_t (after the token's own write) follows fla's titans reference and titans-pytorch
with chunk_size 1 (its retrieval at token t sees the weights after the last *complete* chunk,
which ends at t when chunk_size is 1); the Titans paper's y_t = M*(q_t) leaves the index open.

Conventions other code must follow:
- ``chunk_size`` is part of the math (the mini-batch size), not only a speed knob. Mini-batches
  are laid on a grid starting at each row's token 0 and a reset starts a new one (the tokens of
  a document up to the next grid point form its first, shorter mini-batch). With ``cu_seqlens``
  every sequence has its own grid, exactly as if run alone. The two agree when documents start
  at multiples of ``chunk_size`` (always with chunk_size 1). A continued state (TBPTT) starts a
  new mini-batch at the window start.
- ``init_weights`` are the learnable initial memory, per head: depth 1 ``(W [H, D, D],)``, depth 2
  ``(W1 [H, D, E], W2 [H, E, D])`` (model parameters, gradients flow to them). A reset (and every
  ``cu_seqlens`` sequence without an ``initial_state``) restores them and zeroes the momentum.
- ``initial_state`` (a TitansMemoryState, batch first) is the state carried from a previous window;
  without it every row starts from ``init_weights`` with zero momentum.
- The titans-pytorch residual memory ``x + LN(MLP(x))`` is not built in; a residual alone is the
  caller's: pass ``v - k`` as values and add ``q`` to the output.
- Make the step stable: with ||k|| = 1 the linear memory contracts along k by 1 - 2 theta, so keep
  theta < 1 (e.g. l2-normalised q, k and theta = max_lr * sigmoid(.)).

Example (two documents packed in one row, then the same as varlen)::

    y, state = titans_memory(q, k, v, theta, eta, alpha, init_weights=(W0,), resets=resets,
                             output_final_state=True, chunk_size=16)
    cu = torch.tensor([0, 100, 256])                 # q etc. [1, 256, H, D]
    y, state = titans_memory(q, k, v, theta, eta, alpha, init_weights=(W0,), cu_seqlens=cu,
                             output_final_state=True)  # state.weights[0]: [2, H, D, D]
"""
from __future__ import annotations

import functools
import warnings

import torch

from recurlm.kernels.dispatch import autocast_off, resolve_impl
from recurlm.kernels.titans_memory.chunk import chunk_titans_memory
from recurlm.kernels.titans_memory.common import TitansMemoryState, Weights, validate, varlen_loop
from recurlm.kernels.titans_memory.naive import naive_titans_memory

__all__ = ["titans_memory", "TitansMemoryState"]


@functools.lru_cache(maxsize=1)
def _warn_depth2_on_cuda() -> None:
    warnings.warn("titans_memory impl='auto': no Triton kernel for the depth-2 (MLP) memory; running the "
                  "PyTorch chunk path on CUDA (set model.memory_depth=1 for the Triton kernel)", RuntimeWarning,
                  stacklevel=3)


@autocast_off
def titans_memory(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, theta: torch.Tensor, eta: torch.Tensor,
                  alpha: torch.Tensor, init_weights: Weights | None = None,
                  initial_state: TitansMemoryState | None = None, output_final_state: bool = False,
                  resets: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None,
                  impl: str = "auto", chunk_size: int = 16, activation: str = "gelu",
                  ) -> tuple[torch.Tensor, TitansMemoryState | None]:
    """Titans memory over a sequence (math and conventions in the module docstring).

    Args:
        q, k, v: [B, T, H, D] queries, keys, values (float32, bfloat16 or float64).
        theta, eta, alpha: [B, T, H] learning rate, momentum and forgetting gates in (0, 1).
        init_weights: learnable initial memory per head, (W [H, D, D],) or (W1 [H, D, E], W2 [H, E, D]);
            required unless ``initial_state`` is given and there are no resets / cu_seqlens.
        initial_state: carried TitansMemoryState with leading dim B (N with cu_seqlens).
        output_final_state: return the final TitansMemoryState (float32; float64 for float64 inputs).
        resets: [B, T] bool, True where a document starts (memory <- init_weights, momentum <- 0).
        cu_seqlens: [N + 1] sequence boundaries of a flattened row (B == 1).
        impl: "auto" | "naive" | "chunk" | "triton". The Triton kernel covers the linear (depth 1)
            memory only; ``impl="triton"`` with depth 2 raises. ``"auto"`` picks, explicitly: Triton
            for depth 1 on CUDA; the PyTorch chunk path for depth 2 on every device (Titans'
            default ``memory_depth=2``: a GPU then runs chunk-sized batched matmuls, launch-bound
            at small heads; see docs/performance.md), announced once per process by a
            ``RuntimeWarning``; chunk on CPU (naive for one token).
        chunk_size: mini-batch size C of the gradient descent (part of the math).
        activation: hidden activation of the depth-2 memory, "gelu" (exact) or "silu".
    Returns:
        y [B, T, H, D] in the input dtype, and the final state or None.
    """
    validate(q, k, v, theta, eta, alpha, init_weights, initial_state, resets, cu_seqlens, chunk_size, activation)
    depth = len(init_weights if init_weights is not None else initial_state.weights)
    name = resolve_impl(impl, q)
    if name == "triton" and depth != 1:
        if impl == "triton":
            raise NotImplementedError("the Triton titans_memory kernel covers the linear (depth 1) memory only")
        _warn_depth2_on_cuda()
        name = "chunk"
    if name == "triton":
        # imported here so that @triton.jit decorates only when the kernel is used (and after tests
        # have set TRITON_INTERPRET)
        from .triton import triton_titans_memory as fn
    else:
        fn = naive_titans_memory if name == "naive" else chunk_titans_memory
    if cu_seqlens is not None:
        y, state = varlen_loop(fn, q, k, v, theta, eta, alpha, init_weights, initial_state, cu_seqlens,
                               chunk_size=chunk_size, activation=activation)
    else:
        y, state = fn(q, k, v, theta, eta, alpha, init_weights=init_weights, initial_state=initial_state,
                      resets=resets, chunk_size=chunk_size, activation=activation)
    return y, (state if output_final_state else None)


def flops(B: int, T: int, H: int, D: int, depth: int = 1, hidden: int | None = None, chunk_size: int = 16) -> int:
    """Forward matmul FLOPs of the chunkwise form (multiply-add = 2), without the reset extras.

    Per chunk of C tokens, head and weight matrix [din, dout]: the read against M_0 and S_0
    (2 * 2 C din dout), the intra-chunk scores z x^T and (Gam * .) @ delta (2 C^2 din + 2 C^2 dout),
    the chunk-end updates of M and S (2 * 2 C din dout); plus the gradients at M_0 (forward through
    the memory and, for depth 2, the backward through W2) and the gate matrices L @ N (2 C^3).
    """
    E = hidden or 2 * D
    C = min(chunk_size, T)
    n_chunks = -(-T // C)
    shapes = [(D, D)] if depth == 1 else [(D, E), (E, D)]
    per_chunk = sum(8 * C * din * dout + 2 * C * C * (din + dout) for din, dout in shapes)
    per_chunk += 2 * C * D * D if depth == 1 else 3 * 2 * C * D * E
    per_chunk += 2 * C ** 3 + 2 * C * C
    return B * H * n_chunks * per_chunk
