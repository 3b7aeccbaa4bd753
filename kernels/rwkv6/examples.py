"""Example inputs of ``rwkv6``: random tensors with realistic gates, document resets and states.

Runtime code, not test code: the GPU compile gate (``launch/compile_gate/capture.py``) and
``recurlm-doctor`` (``launch/doctor.py``) build the inputs they launch every kernel with from
here; the kernel tests and benchmarks use the same inputs.
"""
from __future__ import annotations

import torch

from recurlm.kernels.gla.examples import make_inputs as make_gla_inputs


def make_inputs(*args, seed: int = 0, **kwargs) -> dict[str, torch.Tensor]:
    """RWKV-6 inputs: the arguments of :func:`recurlm.kernels.gla.examples.make_inputs`, returned as
    {"r", "k", "w": [B, T, H, K], "v": [B, T, H, V], "u": [H, K], and optionally "resets",
    "initial_state"}; the bonus ``u`` is drawn like RWKV-6's ``time_faaaa`` (O(1) values)."""
    inputs = make_gla_inputs(*args, seed=seed, **kwargs)
    q, g = inputs.pop("q"), inputs.pop("g")
    heads, head_dim = q.shape[2], q.shape[3]
    u = (0.5 * torch.randn(heads, head_dim, generator=torch.Generator().manual_seed(seed + 1),
                         dtype=torch.float64)).to(q.device, q.dtype)
    return {"r": q, "w": g, "u": u.requires_grad_(q.requires_grad), **inputs}
