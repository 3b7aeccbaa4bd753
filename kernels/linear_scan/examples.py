"""Example inputs of ``linear_scan``: random tensors with realistic gates, document resets and states.

Runtime code, not test code: the GPU compile gate (``launch/compile_gate/capture.py``) and
``recurlm-doctor`` (``launch/doctor.py``) build the inputs they launch every kernel with from
here; the kernel tests and benchmarks use the same inputs.
"""
from __future__ import annotations

import torch


def make_inputs(batch: int, seq_len: int, dim: int, dtype: torch.dtype = torch.float32, seed: int = 0,
                log_decay_range: tuple[float, float] = (-1.0, 0.0), reset_prob: float = 0.0,
                initial_state: bool = False, requires_grad: bool = False,
                device: torch.device | str = "cpu") -> dict[str, torch.Tensor | None]:
    """Keyword arguments for ``linear_scan``: x [B, T, D] ~ N(0, 1) and g [B, T, D] uniform in
    ``log_decay_range`` (log decays, <= 0 for a contracting recurrence) in ``dtype``; resets [B, T]
    (Bernoulli(reset_prob), None if 0); initial_state [B, D] float32 (float64 for float64 inputs)
    or None. ``requires_grad`` marks x, g and the initial state as leaves."""
    gen = torch.Generator().manual_seed(seed)
    low, high = log_decay_range
    x = torch.randn(batch, seq_len, dim, generator=gen)
    g = low + (high - low) * torch.rand(batch, seq_len, dim, generator=gen)
    state_dtype = torch.promote_types(dtype, torch.float32)
    h0 = torch.randn(batch, dim, generator=gen).to(device, state_dtype) if initial_state else None
    resets = (torch.rand(batch, seq_len, generator=gen) < reset_prob).to(device) if reset_prob > 0 else None
    inputs = {"x": x.to(device, dtype), "g": g.to(device, dtype), "initial_state": h0, "resets": resets}
    if requires_grad:
        for name in ("x", "g", "initial_state"):
            if inputs[name] is not None:
                inputs[name].requires_grad_(True)
    return inputs
