"""Example inputs of ``mlstm``: random tensors with realistic gates, document resets and states.

Runtime code, not test code: the GPU compile gate (``launch/compile_gate/capture.py``) and
``recurlm-doctor`` (``launch/doctor.py``) build the inputs they launch every kernel with from
here; the kernel tests and benchmarks use the same inputs.
"""
from __future__ import annotations

import torch

from recurlm.kernels.mlstm.state import MLSTMState


def make_inputs(batch: int, seq_len: int, heads: int, dk: int, dv: int | None = None,
                dtype: torch.dtype = torch.float32, seed: int = 0,
                forget_range: tuple[float, float] = (-2.0, 6.0), input_scale: float = 1.0,
                reset_prob: float = 0.0, initial_state: bool = False, requires_grad: bool = False,
                device: torch.device | str = "cpu") -> dict[str, object]:
    """Keyword arguments for ``mlstm``: q, k [B, T, H, K], v [B, T, H, V] ~ N(0, 1); i [B, T, H]
    ~ input_scale * N(0, 1); f [B, T, H] uniform in ``forget_range`` (preactivations:
    f = -20 gives a log decay of about -20); resets [B, T] Bernoulli(reset_prob) (None if 0);
    initial_state an ``MLSTMState`` (float32, float64 for float64 inputs) or None.
    ``requires_grad`` marks every tensor input as a leaf."""
    dv = dk if dv is None else dv
    gen = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, batch, seq_len, heads, dk, generator=gen)
    v = torch.randn(batch, seq_len, heads, dv, generator=gen)
    i = input_scale * torch.randn(batch, seq_len, heads, generator=gen)
    low, high = forget_range
    f = low + (high - low) * torch.rand(batch, seq_len, heads, generator=gen)
    inputs: dict[str, object] = {name: x.to(device, dtype) for name, x in
                                 (("q", q), ("k", k), ("v", v), ("i", i), ("f", f))}
    state = None
    if initial_state:
        state_dtype = torch.promote_types(dtype, torch.float32)
        state = MLSTMState(torch.randn(batch, heads, dk, dv, generator=gen).to(device, state_dtype),
                           torch.randn(batch, heads, dk, generator=gen).to(device, state_dtype),
                           torch.randn(batch, heads, generator=gen).to(device, state_dtype))
    resets = (torch.rand(batch, seq_len, generator=gen) < reset_prob).to(device) if reset_prob > 0 else None
    if requires_grad:
        for name in ("q", "k", "v", "i", "f"):
            inputs[name].requires_grad_(True)
        if state is not None:
            state = MLSTMState(*(s.requires_grad_(True) for s in state))
    inputs.update(initial_state=state, resets=resets)
    return inputs
