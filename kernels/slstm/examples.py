"""Example inputs of ``slstm``: random tensors with realistic gates, document resets and states.

Runtime code, not test code: the GPU compile gate (``launch/compile_gate/capture.py``) and
``recurlm-doctor`` (``launch/doctor.py``) build the inputs they launch every kernel with from
here; the kernel tests and benchmarks use the same inputs.
"""
from __future__ import annotations

import torch

from recurlm.kernels.slstm.state import SLSTMState


def make_inputs(batch: int, seq_len: int, heads: int, dim: int, dtype: torch.dtype = torch.float32,
                seed: int = 0, recurrent_scale: float = 0.5, gate_scale: float = 1.0,
                reset_prob: float = 0.0, initial_state: bool = False, requires_grad: bool = False,
                device: torch.device | str = "cpu") -> dict[str, object]:
    """Keyword arguments for ``slstm``: x [B, T, 4, H, D] ~ gate_scale * N(0, 1), R [H, D, 4, D]
    ~ recurrent_scale * N(0, 1 / D), bias [4, H, D] ~ N(0, 1); resets [B, T] Bernoulli(reset_prob)
    (None if 0); initial_state an ``SLSTMState`` (n >= 1 as in a running sequence) or None.
    ``requires_grad`` marks x, R, bias and the initial state as leaves."""
    gen = torch.Generator().manual_seed(seed)
    x = gate_scale * torch.randn(batch, seq_len, 4, heads, dim, generator=gen)
    R = recurrent_scale * torch.randn(heads, dim, 4, dim, generator=gen) / dim ** 0.5
    bias = torch.randn(4, heads, dim, generator=gen)
    inputs: dict[str, object] = {"x": x.to(device, dtype), "R": R.to(device, dtype), "bias": bias.to(device, dtype)}
    state = None
    if initial_state:
        state_dtype = torch.promote_types(dtype, torch.float32)
        c, m, h = torch.randn(3, batch, heads, dim, generator=gen)
        n = 1 + torch.rand(batch, heads, dim, generator=gen)
        state = SLSTMState(*(s.to(device, state_dtype) for s in (c, n, m, h)))
    resets = (torch.rand(batch, seq_len, generator=gen) < reset_prob).to(device) if reset_prob > 0 else None
    if requires_grad:
        for name in ("x", "R", "bias"):
            inputs[name].requires_grad_(True)
        if state is not None:
            state = SLSTMState(*(s.requires_grad_(True) for s in state))
    inputs.update(initial_state=state, resets=resets)
    return inputs
