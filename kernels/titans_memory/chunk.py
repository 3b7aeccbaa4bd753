"""Chunkwise (mini-batch gradient descent) form of the Titans memory: the CPU fast path.

The sequence is cut into chunks of C = ``chunk_size`` tokens (the TTT/Titans mini-batches). Inside
a chunk every gradient is taken at the weights M_0 the chunk starts from (or at the initial memory
W_init for tokens after a reset inside the chunk), so the gradients G_s = x_s^T delta_s (rank one,
see common.py) are all known up front and the momentum/forgetting recurrence becomes linear:

    S_t = E_t S_0 - sum_{s<=t} N[t, s] G_s,             N[t, s] = theta_s * prod_{j=s+1..t} eta_j
    M_t = B_t M_0 + F_t S_0 + I_t W_init - sum_{s<=t} Gam[t, s] G_s,
    Gam = L @ N,                                          L[t, i] = prod_{j=i+1..t} (1 - alpha_j)

with E_t = prod_{j<=t} eta_j, B_t = prod_{j<=t} (1 - alpha_j), F = L @ E and I_t = (1 - alpha_r) L[t, r]
for the last reset r <= t. All products are formed as exp of differences of cumulative log-gates,
masked to i <= t and to "same document" (no reset in (i, t]) *before* the exp, so strong decays
and resets never produce inf - inf. Every term above that a reset cuts is zeroed by that mask.

Reading y_t = M_t(q_t) layer by layer never materialises M_t: with z the layer input,

    z_t M_t = B_t (z_t M_0) + F_t (z_t S_0) + I_t (z_t W_init) - sum_s Gam[t, s] (z_t . x_s) delta_s,

i.e. a masked "attention" (Gam * z x^T) @ delta plus three matmuls against the chunk-start
states; the chunk-end state is K^T diag(Gam[C-1]) Delta, as in a gated delta rule. The loop over
chunks is sequential, everything inside a chunk is batched matmuls. chunk_size = 1 reproduces the
exact per-token recurrence of naive.py.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .common import ACTIVATIONS, TitansMemoryState, Weights, compute_dtype, memory_gradient, start_state


class ChunkCoefficients(NamedTuple):
    """Gate-only coefficients of the chunkwise form; N chunks of C tokens (the last one padded).

    read_grad  [B, H, N, C, C]: Gam[t, s], weight of token s's gradient in M_t (masked, incl. theta_s).
    read_mem, read_mom, read_init [B, H, N, C]: weights of M_0, S_0, W_init in M_t.
    mem_grad, mom_grad [B, H, N, C]: weights of G_s in the chunk-end M and S (rows of Gam and N).
    mem_mem, mem_mom, mem_init, mom_mom [B, H, N]: weights of M_0, S_0, W_init in the chunk-end
    M, and of S_0 in the chunk-end S.
    fresh [B, 1, N, C] bool: token's gradient is taken at W_init (a reset precedes it in its chunk).
    Without resets read_init, mem_init and fresh are None.
    """
    read_grad: torch.Tensor
    read_mem: torch.Tensor
    read_mom: torch.Tensor
    read_init: torch.Tensor | None
    mem_grad: torch.Tensor
    mom_grad: torch.Tensor
    mem_mem: torch.Tensor
    mem_mom: torch.Tensor
    mem_init: torch.Tensor | None
    mom_mom: torch.Tensor
    fresh: torch.Tensor | None


def _segment_decay(log_cum: torch.Tensor, same_doc: torch.Tensor) -> torch.Tensor:
    """[..., C] inclusive cumulative log-gates -> [..., C, C] with [t, i] = exp(log_cum_t - log_cum_i)
    where i <= t in the same document, else 0 (masked before the exp)."""
    diff = log_cum[..., :, None] - log_cum[..., None, :]
    return torch.exp(torch.where(same_doc, diff, torch.full_like(diff, float("-inf"))))


# Per-step log gates are floored here: a factor e^-40 (4e-18) is zero at the resolution of O(1)
# terms in float32 and float64, and the floor keeps a gate that rounded to exactly 0 (alpha = 1 in
# bf16/fp32) from putting -inf into the cumulative sums.
LOG_GATE_FLOOR = -40.0


def _log_gate(gate: torch.Tensor) -> torch.Tensor:
    """log(gate) for gate in [0, 1], floored at LOG_GATE_FLOOR, with finite gradients at gate = 0."""
    positive = gate > 0
    safe = torch.where(positive, gate, torch.ones_like(gate))
    return torch.where(positive, torch.log(safe), torch.full_like(gate, LOG_GATE_FLOOR)).clamp_min(LOG_GATE_FLOOR)


def chunk_coefficients(theta: torch.Tensor, eta: torch.Tensor, alpha: torch.Tensor,
                       resets: torch.Tensor | None, chunk_size: int) -> ChunkCoefficients:
    """theta, eta, alpha [B, T, H] in (0, 1), resets [B, T] bool or None -> ChunkCoefficients.

    Padding tokens (to a multiple of C) get theta = 0, eta = 1, alpha = 0; they only affect rows
    past the last real token, and chunk-end values are read at each chunk's last real row.
    """
    B, T, H = theta.shape
    C = chunk_size
    N = -(-T // C)
    pad = N * C - T

    def chunked(x: torch.Tensor, value: float) -> torch.Tensor:  # [B, T, H] -> [B, H, N, C]
        return F.pad(x.transpose(1, 2), (0, pad), value=value).reshape(B, H, N, C)

    theta_c = chunked(theta, 0.0)
    keep_c = chunked(1 - alpha, 1.0)                                          # 1 - alpha
    log_keep = chunked(_log_gate(1 - alpha), 0.0).cumsum(-1)
    log_eta = chunked(_log_gate(eta), 0.0).cumsum(-1)
    causal = torch.ones(C, C, dtype=torch.bool, device=theta.device).tril()
    if resets is None:
        doc = None
        same_doc = causal
    else:
        reset_c = F.pad(resets, (0, pad), value=False).reshape(B, 1, N, C)
        doc = reset_c.long().cumsum(-1)                                       # document index inside the chunk
        same_doc = causal & (doc[..., :, None] == doc[..., None, :])
    decay = _segment_decay(log_keep, same_doc)                                # L [B, H, N, C, C]
    momentum = theta_c[..., None, :] * _segment_decay(log_eta, same_doc)      # N (incl. theta_s)
    read_grad = decay @ momentum                                              # Gam
    carried = torch.exp(log_eta) if doc is None else torch.exp(log_eta) * (doc == 0)
    read_mem = torch.exp(log_keep) if doc is None else torch.exp(log_keep) * (doc == 0)
    read_mom = (decay @ carried[..., None]).squeeze(-1)
    read_init = None if doc is None else (decay @ (keep_c * reset_c)[..., None]).squeeze(-1)

    last = torch.full((N,), C - 1, dtype=torch.long, device=theta.device)
    last[-1] = T - 1 - (N - 1) * C
    chunks = torch.arange(N, device=theta.device)
    return ChunkCoefficients(
        read_grad=read_grad, read_mem=read_mem, read_mom=read_mom, read_init=read_init,
        mem_grad=read_grad[:, :, chunks, last], mom_grad=momentum[:, :, chunks, last],
        mem_mem=read_mem[:, :, chunks, last], mem_mom=read_mom[:, :, chunks, last],
        mem_init=None if doc is None else read_init[:, :, chunks, last],
        mom_mom=carried[:, :, chunks, last],
        fresh=None if doc is None else doc > 0,
    )


def chunk_titans_memory(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, theta: torch.Tensor,
                        eta: torch.Tensor, alpha: torch.Tensor, init_weights: Weights | None = None,
                        initial_state: TitansMemoryState | None = None, resets: torch.Tensor | None = None,
                        chunk_size: int = 16, activation: str = "gelu",
                        ) -> tuple[torch.Tensor, TitansMemoryState]:
    """q, k, v [B, T, H, D]; theta, eta, alpha [B, T, H]; resets [B, T] -> (y [B, T, H, D], final state)."""
    B, T, H, D = q.shape
    out_dtype, dtype = q.dtype, compute_dtype(q)
    C = chunk_size
    N = -(-T // C)
    coeffs = chunk_coefficients(theta.to(dtype), eta.to(dtype), alpha.to(dtype), resets, C)
    state = start_state(init_weights, initial_state, B, dtype)
    mem, mom = list(state.weights), list(state.momentum)
    fresh_weights = None if coeffs.fresh is None else [w.to(dtype).expand(B, *w.shape) for w in init_weights]
    q, k, v = (F.pad(x.to(dtype).transpose(1, 2), (0, 0, 0, N * C - T)).reshape(B, H, N, C, D) for x in (q, k, v))
    act = ACTIVATIONS[activation][0]
    outputs = []
    for n in range(N):
        c = {name: None if value is None else value[:, :, n] for name, value in coeffs._asdict().items()}
        factors = memory_gradient(mem, k[:, :, n], v[:, :, n], activation)
        if c["fresh"] is not None and c["fresh"].any():
            at_init = memory_gradient(fresh_weights, k[:, :, n], v[:, :, n], activation)
            mask = c["fresh"][..., None]
            factors = [(torch.where(mask, xi, x), torch.where(mask, di, d)) for (x, d), (xi, di) in zip(factors, at_init)]
        z = q[:, :, n]
        for layer, ((x, delta), w, s) in enumerate(zip(factors, mem, mom)):
            z_next = (c["read_mem"][..., None] * (z @ w) + c["read_mom"][..., None] * (z @ s)
                      - (c["read_grad"] * (z @ x.transpose(-1, -2))) @ delta)
            if c["read_init"] is not None:
                z_next = z_next + c["read_init"][..., None] * (z @ fresh_weights[layer])
            z = act(z_next) if layer < len(mem) - 1 else z_next
        outputs.append(z)
        new_mem = []
        for layer, ((x, delta), w, s) in enumerate(zip(factors, mem, mom)):
            w_end = (c["mem_mem"][..., None, None] * w + c["mem_mom"][..., None, None] * s
                     - x.transpose(-1, -2) @ (c["mem_grad"][..., None] * delta))
            if c["mem_init"] is not None:
                w_end = w_end + c["mem_init"][..., None, None] * fresh_weights[layer]
            new_mem.append(w_end)
        mom = [c["mom_mom"][..., None, None] * s - x.transpose(-1, -2) @ (c["mom_grad"][..., None] * delta)
               for (x, delta), s in zip(factors, mom)]
        mem = new_mem
    y = torch.stack(outputs, dim=2).reshape(B, H, N * C, D)[:, :, :T].transpose(1, 2)
    return y.to(out_dtype), TitansMemoryState(tuple(mem), tuple(mom))
