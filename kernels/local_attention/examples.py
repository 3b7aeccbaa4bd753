"""Example inputs of ``local_attention``: random tensors with realistic gates, document resets and states.

Runtime code, not test code: the GPU compile gate (``launch/compile_gate/capture.py``) and
``recurlm-doctor`` (``launch/doctor.py``) build the inputs they launch every kernel with from
here; the kernel tests and benchmarks use the same inputs.
"""
from __future__ import annotations

import torch

from recurlm.kernels.local_attention.state import LocalAttentionState


def make_inputs(batch: int, seq_len: int, heads: int, kv_heads: int, head_dim: int, window: int,
                dtype: torch.dtype = torch.float32, seed: int = 0, reset_prob: float = 0.0,
                initial_state: bool = False, requires_grad: bool = False,
                device: torch.device | str = "cpu") -> dict:
    """Keyword arguments for ``local_attention``: q [B, T, H, D], k, v [B, T, Hkv, D] ~ N(0, 1) in
    ``dtype``; window; resets [B, T] (Bernoulli(reset_prob), None if 0); initial_state a
    ``LocalAttentionState`` with random k, v and a random suffix of valid slots (or None).
    ``requires_grad`` marks q, k, v and the state's k and v as leaves."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, seq_len, heads, head_dim, generator=gen)
    k, v = (torch.randn(batch, seq_len, kv_heads, head_dim, generator=gen) for _ in range(2))
    inputs = {"q": q.to(device, dtype), "k": k.to(device, dtype), "v": v.to(device, dtype), "window": window,
              "resets": (torch.rand(batch, seq_len, generator=gen) < reset_prob).to(device) if reset_prob > 0 else None,
              "initial_state": None}
    if initial_state:
        state_dtype = torch.promote_types(dtype, torch.float32)
        # a document that started inside the cached window: only the newest slots are valid
        first_valid = torch.randint(0, window, (batch, 1), generator=gen)
        valid = torch.arange(window - 1)[None, :] >= first_valid
        cache = [(torch.randn(batch, window - 1, kv_heads, head_dim, generator=gen) * valid[..., None, None])
                 .to(device, state_dtype) for _ in range(2)]
        inputs["initial_state"] = LocalAttentionState(cache[0], cache[1], valid.to(device))
    if requires_grad:
        for tensor in (inputs["q"], inputs["k"], inputs["v"], *(inputs["initial_state"] or ())[:2]):
            tensor.requires_grad_(True)
    return inputs
