"""Example inputs of ``dplr_delta_rule``: random tensors with realistic gates, document resets and states.

Runtime code, not test code: the GPU compile gate (``launch/compile_gate/capture.py``) and
``recurlm-doctor`` (``launch/doctor.py``) build the inputs they launch every kernel with from
here; the kernel tests and benchmarks use the same inputs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

RWKV7_LOG_DECAY_FLOOR = -math.exp(-0.5)
"""RWKV-7's log decay is -e^{-0.5} * sigmoid(.) in (-0.607, 0)."""


def make_inputs(
    batch: int = 2,
    seq_len: int = 64,
    heads: int = 2,
    dk: int = 16,
    dv: int = 16,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    log_decay_floor: float = RWKV7_LOG_DECAY_FLOOR,
    initial_state: bool = False,
    reset_prob: float = 0.0,
    requires_grad: bool = False,
    seed: int = 0,
    neg_eigval: bool = False,
) -> dict[str, torch.Tensor]:
    """Random inputs shaped like RWKV-7's call of the op.

    kk is the L2-normalised key (times a per-channel k_k), a = -kk, b = kk * iclr with the in-context
    learning rate iclr = sigmoid(.) in (0, 1), so the low-rank part removes an iclr-weighted
    projection onto kk and the transition's spectral radius stays below 1;
    gk = log_decay_floor * sigmoid(w0 + x), w0 spread from -6 to 3 over the key channels and
    x ~ N(0, 0.5^2) (RWKV-7's floor by default; pass e.g. -20 for strong decays). Keys and queries
    are O(1) per channel.

    Returns a dict with q, k, a, b, gk [B, T, H, K], v [B, T, H, V], and when asked
    ``initial_state`` [B, H, K, V] and ``resets`` [B, T] bool (each token starts a document with
    probability ``reset_prob``). Leaf tensors with ``requires_grad`` as given (resets excepted).
    ``neg_eigval``: RWKV-7's ``allow_neg_eigval``, b = kk * iclr * (1 + e^gk), so the transition's
    eigenvalue along kk, e^gk - iclr (1 + e^gk), reaches down to -1.
    """
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    shape = (batch, seq_len, heads, dk)
    raw_k = randn(*shape)
    kk = F.normalize(raw_k * (0.5 + 0.5 * torch.rand(heads, dk, generator=gen, dtype=torch.float64)), dim=-1)
    iclr = torch.sigmoid(randn(*shape))
    k_a = torch.rand(heads, dk, generator=gen, dtype=torch.float64)
    # RWKV-7: gk = -e^{-0.5} sigmoid(w0 + lora(x)), w0 spread over channels (slow to fast decay)
    gk = log_decay_floor * torch.sigmoid(torch.linspace(-6.0, 3.0, dk, dtype=torch.float64) + 0.5 * randn(*shape))
    removal = iclr * (1 + gk.exp()) if neg_eigval else iclr
    inputs = {
        "q": randn(*shape),
        "k": raw_k * (1 + (iclr - 1) * k_a),  # RWKV-7 scales k by the iclr through k_a
        "v": randn(batch, seq_len, heads, dv),
        "a": -kk,
        "b": kk * removal,
        "gk": gk,
    }
    if initial_state:
        inputs["initial_state"] = randn(batch, heads, dk, dv)
    tensors = {name: x.to(dtype=dtype, device=device).requires_grad_(requires_grad)
               for name, x in inputs.items()}
    if reset_prob > 0:
        tensors["resets"] = (torch.rand(batch, seq_len, generator=gen) < reset_prob).to(device)
    return tensors
