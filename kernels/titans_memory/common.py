"""Shared pieces of the Titans memory op: the state type, the memory MLP, its explicit gradient,
input validation and the varlen loop.

The memory of one head is an MLP applied to row vectors (no biases, no norm, no residual):

- depth 1 (linear memory): ``M(x) = x @ W``,                     W  [D, D];
- depth 2:                 ``M(x) = act(x @ W1) @ W2``,         W1 [D, E], W2 [E, D].

It is trained online on the associative loss ``l(M; k, v) = ||M(k) - v||^2`` (a plain sum of
squares, so the gradient carries a factor 2). For every weight matrix W_l the per-token gradient
is rank one, ``dl/dW_l = x_l^T delta_l``, with

- depth 1: ``x_1 = k``, ``delta_1 = 2 (k W - v)``;
- depth 2: ``h = k W1``, ``a = act(h)``, ``r = 2 (a W2 - v)``;
  ``x_1 = k, delta_1 = (r W2^T) * act'(h)``;  ``x_2 = a, delta_2 = r``.

The rank-one structure is what makes the chunkwise form matmul-rich (see chunk.py).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F

Weights = tuple[torch.Tensor, ...]


class TitansMemoryState(NamedTuple):
    """Carried state of the memory, float32 (float64 when the inputs are float64).

    weights:  the memory MLP's weight matrices, batch first: depth 1 ``(W [B, H, D, D],)``,
              depth 2 ``(W1 [B, H, D, E], W2 [B, H, E, D])``.
    momentum: the momentum ("surprise") S of every weight matrix, same shapes as ``weights``.
    With ``cu_seqlens`` the leading dim is the number of sequences N instead of B.
    """
    weights: Weights
    momentum: Weights


def _gelu_vjp(grad: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """grad * GELU'(h) for the exact (erf) GELU, GELU'(h) = Phi(h) + h * phi(h): aten's fused op,
    which autograd differentiates (the chunk path's backward goes through it)."""
    return torch.ops.aten.gelu_backward(grad, h)


def _silu_vjp(grad: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """grad * SiLU'(h), SiLU'(h) = sigma(h) (1 + h (1 - sigma(h))) (aten's silu_backward has no
    derivative w.r.t. h, so it is spelled out)."""
    s = torch.sigmoid(h)
    return grad * (s * (1.0 + h * (1.0 - s)))


# activation name -> (act, (grad, h) -> grad * act'(h)) for the hidden layer of the depth-2 memory
ACTIVATIONS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor],
                             Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]] = {
    "gelu": (F.gelu, _gelu_vjp),
    "silu": (F.silu, _silu_vjp),
}


def memory_forward(weights: Sequence[torch.Tensor], x: torch.Tensor, activation: str) -> torch.Tensor:
    """Apply the memory MLP: x [..., n, D] with weights [..., D, E], [..., E, D] -> [..., n, D]."""
    act = ACTIVATIONS[activation][0]
    for layer, w in enumerate(weights):
        if layer > 0:
            x = act(x)
        x = x @ w
    return x


def memory_gradient(weights: Sequence[torch.Tensor], k: torch.Tensor, v: torch.Tensor,
                    activation: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-token gradient of ||M(k) - v||^2 as rank-one factors, one pair per weight matrix.

    weights: [..., D, D] (depth 1) or [..., D, E], [..., E, D] (depth 2); k, v: [..., n, D].
    Returns ``[(x_l, delta_l)]`` with x_l [..., n, din_l], delta_l [..., n, dout_l] such that the
    gradient of token i's loss w.r.t. W_l is ``x_l[i]^T delta_l[i]`` (formulas in the module doc).
    """
    act, act_vjp = ACTIVATIONS[activation]
    if len(weights) == 1:
        return [(k, 2.0 * (k @ weights[0] - v))]
    w1, w2 = weights
    h = k @ w1
    a = act(h)
    r = 2.0 * (a @ w2 - v)
    return [(k, act_vjp(r @ w2.transpose(-1, -2), h)), (a, r)]


def validate(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, theta: torch.Tensor, eta: torch.Tensor,
             alpha: torch.Tensor, init_weights: Weights | None, initial_state: TitansMemoryState | None,
             resets: torch.Tensor | None, cu_seqlens: torch.Tensor | None, chunk_size: int,
             activation: str) -> None:
    """Check shapes and arguments of titans_memory; raise ValueError with a clear message."""
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must share the shape [B, T, H, D]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    B, T, H, D = q.shape
    if T == 0:
        raise ValueError("empty sequence (T = 0)")
    for name, g in (("theta", theta), ("eta", eta), ("alpha", alpha)):
        if g.shape != (B, T, H):
            raise ValueError(f"{name} must have shape [B, T, H] = {(B, T, H)}, got {tuple(g.shape)}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
    if init_weights is None and initial_state is None:
        raise ValueError("pass init_weights (the learnable initial memory) or an initial_state")
    if init_weights is None and (resets is not None or cu_seqlens is not None):
        raise ValueError("resets / cu_seqlens restore the initial memory: pass init_weights")
    n_rows = B
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError(f"with cu_seqlens the batch size must be 1, got {B}")
        if resets is not None:
            raise ValueError("pass either resets or cu_seqlens, not both")
        if cu_seqlens.dim() != 1 or cu_seqlens[0] != 0 or cu_seqlens[-1] != T or (cu_seqlens.diff() <= 0).any():
            raise ValueError(f"cu_seqlens must increase strictly from 0 to T = {T}, got {cu_seqlens.tolist()}")
        n_rows = cu_seqlens.numel() - 1
    if resets is not None and (resets.shape != (B, T) or resets.dtype != torch.bool):
        raise ValueError(f"resets must be a bool tensor [B, T] = {(B, T)}, got {resets.dtype} {tuple(resets.shape)}")
    if init_weights is not None:
        if len(init_weights) not in (1, 2):
            raise ValueError(f"memory depth must be 1 or 2 (got {len(init_weights)} weight matrices)")
        _check_weight_shapes(tuple(init_weights), (H,), D, "init_weights")
    if initial_state is not None:
        if not isinstance(initial_state, TitansMemoryState):
            raise ValueError("initial_state must be a TitansMemoryState(weights, momentum)")
        if init_weights is not None and len(initial_state.weights) != len(init_weights):
            raise ValueError("initial_state and init_weights describe memories of different depth")
        _check_weight_shapes(initial_state.weights, (n_rows, H), D, "initial_state.weights")
        if [w.shape for w in initial_state.momentum] != [w.shape for w in initial_state.weights]:
            raise ValueError("initial_state.momentum must have the shapes of initial_state.weights")


def _check_weight_shapes(weights: Weights, lead: tuple[int, ...], D: int, name: str) -> None:
    if len(weights) not in (1, 2):
        raise ValueError(f"{name}: memory depth must be 1 or 2 (got {len(weights)} weight matrices)")
    expected_in = D
    for layer, w in enumerate(weights):
        out = D if layer == len(weights) - 1 else w.shape[-1]
        expected = (*lead, expected_in, out)
        if tuple(w.shape) != expected:
            raise ValueError(f"{name}[{layer}] must have shape {expected}, got {tuple(w.shape)}")
        expected_in = out


def start_state(init_weights: Weights | None, initial_state: TitansMemoryState | None, batch: int,
                dtype: torch.dtype) -> TitansMemoryState:
    """The state carried into token 0: ``initial_state``, or the initial memory with zero momentum."""
    if initial_state is not None:
        return TitansMemoryState(tuple(w.to(dtype) for w in initial_state.weights),
                                 tuple(s.to(dtype) for s in initial_state.momentum))
    weights = tuple(w.to(dtype).expand(batch, *w.shape) for w in init_weights)
    return TitansMemoryState(weights, tuple(torch.zeros_like(w) for w in weights))


def varlen_loop(op: Callable, q, k, v, theta, eta, alpha, init_weights: Weights,
                initial_state: TitansMemoryState | None, cu_seqlens: torch.Tensor, **kwargs
                ) -> tuple[torch.Tensor, TitansMemoryState]:
    """Run ``op`` (a batch-only implementation) on each sequence of a flattened row separately.

    The memory is nonlinear in its inputs and a padded step cannot be an identity (momentum keeps
    moving the weights), so sequences are not padded into a batch: each runs as its own row, with
    its own mini-batch grid starting at its first token. Returns y [1, T, H, D] and a state with
    leading dim N.
    """
    outputs, finals = [], []
    bounds = cu_seqlens.tolist()
    for n, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        state = None if initial_state is None else TitansMemoryState(
            tuple(w[n:n + 1] for w in initial_state.weights), tuple(s[n:n + 1] for s in initial_state.momentum))
        y, final = op(*(x[:, start:end] for x in (q, k, v, theta, eta, alpha)), init_weights=init_weights,
                      initial_state=state, resets=None, **kwargs)
        outputs.append(y)
        finals.append(final)
    state = TitansMemoryState(tuple(torch.cat(ws) for ws in zip(*(f.weights for f in finals))),
                              tuple(torch.cat(ss) for ss in zip(*(f.momentum for f in finals))))
    return torch.cat(outputs, dim=1), state
