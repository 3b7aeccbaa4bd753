"""Example inputs of ``gla``: random tensors with realistic gates, document resets and states.

Runtime code, not test code: the GPU compile gate (``launch/compile_gate/capture.py``) and
``recurlm-doctor`` (``launch/doctor.py``) build the inputs they launch every kernel with from
here; the kernel tests and benchmarks use the same inputs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def make_inputs(
    batch: int = 2,
    seq_len: int = 64,
    heads: int = 2,
    head_dim: int = 16,
    value_dim: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    decay_scale: float = 1.0,
    min_log_decay: float = -20.0,
    reset_prob: float = 0.0,
    initial_state: bool = False,
    requires_grad: bool = False,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random GLA inputs with realistic gates.

    Args:
        decay_scale: log decays are ``decay_scale * logsigmoid(randn)`` (median about -0.7 *
            ``decay_scale``), clamped at ``min_log_decay``; e.g. 8 gives strong decays down to -20.
        reset_prob: probability of a document start at each token (``resets`` [B, T]; position 0
            included); 0 gives no ``resets`` entry.
        initial_state: include an ``initial_state`` [B, H, K, V] (float32, or float64 for float64).
        seed: seeds a private generator (the global RNG is left alone).

    Returns:
        {"q", "k", "g": [B, T, H, K], "v": [B, T, H, V], and optionally "resets", "initial_state"}.
    """
    value_dim = head_dim if value_dim is None else value_dim
    shape = (batch, seq_len, heads, head_dim)
    generator = torch.Generator().manual_seed(seed)

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=generator, dtype=torch.float64).to(device)

    log_decay = (decay_scale * F.logsigmoid(randn(*shape))).clamp_min(min_log_decay)
    inputs = {"q": randn(*shape), "k": randn(*shape), "v": randn(batch, seq_len, heads, value_dim), "g": log_decay}
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    inputs = {name: x.to(dtype) for name, x in inputs.items()}
    if initial_state:
        inputs["initial_state"] = randn(batch, heads, head_dim, value_dim).to(state_dtype)
    for x in inputs.values():
        x.requires_grad_(requires_grad)
    if reset_prob > 0:
        inputs["resets"] = torch.rand(batch, seq_len, generator=generator).to(device) < reset_prob
    return inputs
