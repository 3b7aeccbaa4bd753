"""Sequential reference of the Titans memory: one token at a time, explicit gradients.

For every token t (mini-batch size C = ``chunk_size``):

    if resets[t]:   M <- W_init, S <- 0                    (a document starts from the initial memory)
    if t % C == 0 or resets[t]:   M_base <- M              (a mini-batch starts)
    G_t = grad_W ||M_base(k_t) - v_t||^2                   (rank one per weight matrix, common.py)
    S_t = eta_t * S_{t-1} - theta_t * G_t                  (momentum / "surprise")
    M_t = (1 - alpha_t) * M_{t-1} + S_t                    (forgetting)
    y_t = M_t(q_t)                                         (read with the updated memory)

With C = 1, M_base = M_{t-1}: exact per-token gradient descent (the Titans recurrence).
Runs in float64 for float64 inputs.
"""
from __future__ import annotations

import torch

from recurlm.kernels.dispatch import compute_dtype
from recurlm.kernels.titans_memory.common import TitansMemoryState, Weights, memory_forward, memory_gradient, start_state


def naive_titans_memory(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, theta: torch.Tensor,
                        eta: torch.Tensor, alpha: torch.Tensor, init_weights: Weights | None = None,
                        initial_state: TitansMemoryState | None = None, resets: torch.Tensor | None = None,
                        chunk_size: int = 1, activation: str = "gelu",
                        ) -> tuple[torch.Tensor, TitansMemoryState]:
    """q, k, v [B, T, H, D]; theta, eta, alpha [B, T, H]; resets [B, T] -> (y [B, T, H, D], final state)."""
    B, T, H, D = q.shape
    out_dtype, dtype = q.dtype, compute_dtype(q.dtype)
    state = start_state(init_weights, initial_state, B, dtype)
    mem, mom = list(state.weights), list(state.momentum)
    fresh = None if init_weights is None else [w.to(dtype).expand(B, *w.shape) for w in init_weights]
    q, k, v = (x.to(dtype).transpose(1, 2) for x in (q, k, v))              # [B, H, T, D]
    theta, eta, alpha = (g.to(dtype).transpose(1, 2)[..., None, None] for g in (theta, eta, alpha))
    base = mem
    outputs = []
    for t in range(T):
        if resets is not None:
            r = resets[:, t, None, None, None]                                # [B, 1, 1, 1]
            mem = [torch.where(r, w0, w) for w0, w in zip(fresh, mem)]
            mom = [torch.where(r, torch.zeros_like(s), s) for s in mom]
            base = [torch.where(r, w0, w) for w0, w in zip(fresh, base)]
        if t % chunk_size == 0:
            base = mem
        factors = memory_gradient(base, k[:, :, t:t + 1], v[:, :, t:t + 1], activation)
        grads = [x.transpose(-1, -2) @ d for x, d in factors]                # outer products [B, H, din, dout]
        mom = [eta[:, :, t] * s - theta[:, :, t] * g for s, g in zip(mom, grads)]
        mem = [(1 - alpha[:, :, t]) * w + s for w, s in zip(mem, mom)]
        outputs.append(memory_forward(mem, q[:, :, t:t + 1], activation))
    y = torch.cat(outputs, dim=2).transpose(1, 2)
    return y.to(out_dtype), TitansMemoryState(tuple(mem), tuple(mom))
