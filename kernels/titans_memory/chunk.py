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

i.e. a masked "attention" (Gam * z x^T) @ delta plus matmuls against the chunk-start states; the
chunk-end state is K^T diag(Gam[C-1]) Delta, as in a gated delta rule. The loop over chunks is
sequential, everything inside a chunk is batched matmuls. chunk_size = 1 reproduces the exact
per-token recurrence of naive.py.

Layout. With C = 16 the per-chunk products are small next to the state they read and write (a
few FLOPs per byte), so the loop is arranged to make few passes over the state and few ops:
- batch and heads are flattened, BH = B * H, so every per-chunk product is one bmm;
- each layer's weights and momentum are carried stacked, [M; S] [BH, 2 din, dout], and never
  sliced (a slice's backward zero-fills and adds a state-sized tensor). The read against both is
  one product, [B_t z_t | F_t z_t] @ [M; S]; the chunk-end update of both is a bmm and a baddbmm,
  ``[[B_c, F_c], [0, E_c]] @ [M; S] - [X^T diag(Gam[c]); X^T diag(N[c])] @ Delta`` (c = last row);
- the first layer's inputs q and k do not depend on the state, so its read and write operands
  are built for all chunks at once, and [k | 0] is stacked over the read operand so that one
  product gives k M_0 (for the gradient) and the read;
- only chunks that contain a reset (found with one host sync) compute the W_init terms.
Gradients are autograd's through this loop.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from recurlm.kernels.dispatch import compute_dtype
from recurlm.kernels.titans_memory.common import ACTIVATIONS, TitansMemoryState, Weights, memory_gradient, start_state


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


def _read_operands(z: torch.Tensor, x: torch.Tensor, read_gates: torch.Tensor, read_grad: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Left operands of the read of one layer, for ``z M_t = [B_t z_t | F_t z_t] @ [M_0; S_0] - scores @ delta``.

    z [..., C, din] (layer input of the queries), x [..., C, din] (of the keys), read_gates
    [..., C, 2, 1] (B_t, F_t), read_grad [..., C, C] (Gam) -> (zs [..., C, 2 din], scores [..., C, C]).
    """
    return (read_gates * z.unsqueeze(-2)).flatten(-2), read_grad * (z @ x.transpose(-1, -2))


def _write_operand(x: torch.Tensor, write_gates: torch.Tensor) -> torch.Tensor:
    """x [..., C, din], write_gates [..., 2, 1, C] (rows of Gam and N at the chunk end)
    -> [..., 2 din, C], so that ``operand @ delta`` is the gradient part of the chunk-end [M; S]."""
    return (write_gates * x.transpose(-1, -2).unsqueeze(-3)).flatten(-3, -2)


def _gradient_from_carry(k_w1: torch.Tensor, k: torch.Tensor, v: torch.Tensor, carry: list[torch.Tensor],
                         activation: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``common.memory_gradient`` at the chunk-start weights, read from the stacked carry [M; S]
    without slicing it: k_w1 = k @ M_0[0] [BH, C, d1] comes with the first read, the second layer
    multiplies [a | 0] by [W2; S2] and keeps the first E columns of r @ [W2; S2]^T.
    k, v [BH, C, D]; carry as in chunk_titans_memory -> [(x_l, delta_l)] as memory_gradient.
    """
    if len(carry) == 1:
        return [(k, 2.0 * (k_w1 - v))]
    act, act_vjp = ACTIVATIONS[activation]
    hidden = k_w1.shape[-1]
    a = act(k_w1)
    r = torch.baddbmm(v, F.pad(a, (0, hidden)), carry[1], beta=-2.0, alpha=2.0)     # 2 (a W2 - v)
    return [(k, act_vjp((r @ carry[1].transpose(1, 2))[..., :hidden], k_w1)), (a, r)]


def chunk_titans_memory(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, theta: torch.Tensor,
                        eta: torch.Tensor, alpha: torch.Tensor, init_weights: Weights | None = None,
                        initial_state: TitansMemoryState | None = None, resets: torch.Tensor | None = None,
                        chunk_size: int = 16, activation: str = "gelu",
                        ) -> tuple[torch.Tensor, TitansMemoryState]:
    """q, k, v [B, T, H, D]; theta, eta, alpha [B, T, H]; resets [B, T] -> (y [B, T, H, D], final state)."""
    B, T, H, D = q.shape
    out_dtype, dtype = q.dtype, compute_dtype(q.dtype)
    C, BH = chunk_size, B * H
    N = -(-T // C)
    c = chunk_coefficients(theta.to(dtype), eta.to(dtype), alpha.to(dtype), resets, C)
    state = start_state(init_weights, initial_state, B, dtype)
    depth = len(state.weights)
    act = ACTIVATIONS[activation][0]

    def per_chunk(x: torch.Tensor) -> tuple[torch.Tensor, ...]:  # [B, H, N, ...] -> N x [BH, ...]
        return x.reshape(BH, *x.shape[2:]).unbind(1)

    carry = [torch.cat([w, s], dim=-2).reshape(BH, 2 * w.shape[-2], w.shape[-1])
             for w, s in zip(state.weights, state.momentum)]
    zero = torch.zeros_like(c.mem_mem)
    # [B, H, N, 2, 2]: weights of [M_0; S_0] in the chunk-end [M; S]
    carry_gates = torch.stack([c.mem_mem, c.mem_mom, zero, c.mom_mom], dim=-1).unflatten(-1, (2, 2))
    read_gates = torch.stack([c.read_mem, c.read_mom], dim=-1)[..., None]            # [B, H, N, C, 2, 1]
    write_gates = torch.stack([c.mem_grad, c.mom_grad], dim=-2)[..., None, :]       # [B, H, N, 2, 1, C]
    q, k, v = (F.pad(x.to(dtype).transpose(1, 2), (0, 0, 0, N * C - T)).reshape(B, H, N, C, D) for x in (q, k, v))
    first_zs, first_scores = _read_operands(q, k, read_gates, c.read_grad)
    # [k | 0] stacked over the first layer's read operand: one product with [M_0; S_0] gives both
    # k M_0 (for the gradient) and the read against the chunk-start state
    first_left = torch.cat([F.pad(k, (0, D)), first_zs], dim=-2)                    # [B, H, N, 2C, 2D]
    first_written = _write_operand(k, write_gates)
    q, k, v, first_left, first_scores, first_written, read_gates, read_grad, write_gates, carry_gates = map(
        per_chunk, (q, k, v, first_left, first_scores, first_written, read_gates, c.read_grad, write_gates,
                    carry_gates))
    if c.fresh is None:
        reset_chunks = [False] * N
    else:
        # on CPU one host sync lets only the chunks that contain a reset pay for the terms of the
        # initial memory; on CUDA every chunk pays (no sync: it would stall the kernel queue per layer)
        reset_chunks = [True] * N if c.fresh.is_cuda else c.fresh.any(dim=-1).any(dim=0)[0].tolist()
        init = [w.to(dtype).expand(B, *w.shape).reshape(BH, *w.shape[1:]) for w in init_weights]
        fresh = per_chunk(c.fresh.expand(B, H, N, C)[..., None])
        read_init = per_chunk(c.read_init[..., None])
        init_gates = per_chunk(torch.stack([c.mem_init, zero], dim=-1)[..., None])  # [B, H, N, 2, 1]
    outputs = []
    for n in range(N):
        first = first_left[n] @ carry[0]                                            # [BH, 2C, d1]
        factors = _gradient_from_carry(first[:, :C], k[n], v[n], carry, activation)
        if reset_chunks[n]:
            at_init = memory_gradient(init, k[n], v[n], activation)
            factors = [(torch.where(fresh[n], xi, x), torch.where(fresh[n], di, d))
                       for (x, d), (xi, di) in zip(factors, at_init)]
        z = q[n]
        for layer, ((x, delta), ws) in enumerate(zip(factors, carry)):
            if layer == 0:
                read, scores = first[:, C:], first_scores[n]
            else:
                zs, scores = _read_operands(z, x, read_gates[n], read_grad[n])
                read = zs @ ws
            z_next = torch.baddbmm(read, scores, delta, alpha=-1)
            if reset_chunks[n]:
                z_next = torch.baddbmm(z_next, read_init[n] * z, init[layer])
            z = act(z_next) if layer < depth - 1 else z_next
        outputs.append(z)
        new_carry = []
        for layer, ((x, delta), ws) in enumerate(zip(factors, carry)):
            kept = torch.bmm(carry_gates[n], ws.view(BH, 2, -1))                     # [BH, 2, din * dout]
            if reset_chunks[n]:
                kept = kept + init_gates[n] * init[layer].view(BH, 1, -1)
            written = first_written[n] if layer == 0 else _write_operand(x, write_gates[n])
            new_carry.append(torch.baddbmm(kept.view_as(ws), written, delta, alpha=-1))
        carry = new_carry
    y = torch.stack(outputs, dim=1).view(B, H, N * C, D)[:, :, :T].transpose(1, 2)
    final = [ws.view(B, H, 2, ws.shape[1] // 2, ws.shape[2]).unbind(2) for ws in carry]
    return y.to(out_dtype), TitansMemoryState(tuple(w for w, _ in final), tuple(s for _, s in final))
