"""Random inputs and FLOP counts for ``rwkv6`` (tests and benchmarks)."""
from __future__ import annotations

import torch

from recurlm.kernels.gla import testing as gla_testing
from recurlm.kernels.gla.chunk import CHUNK_SIZE


def make_inputs(*args, seed: int = 0, **kwargs) -> dict[str, torch.Tensor]:
    """RWKV-6 inputs: the arguments of :func:`recurlm.kernels.gla.testing.make_inputs`, returned as
    {"r", "k", "w": [B, T, H, K], "v": [B, T, H, V], "u": [H, K], and optionally "resets",
    "initial_state"}; the bonus ``u`` is drawn like RWKV-6's ``time_faaaa`` (O(1) values)."""
    inputs = gla_testing.make_inputs(*args, seed=seed, **kwargs)
    q, g = inputs.pop("q"), inputs.pop("g")
    heads, head_dim = q.shape[2], q.shape[3]
    u = (0.5 * torch.randn(heads, head_dim, generator=torch.Generator().manual_seed(seed + 1),
                         dtype=torch.float64)).to(q.device, q.dtype)
    return {"r": q, "w": g, "u": u.requires_grad_(q.requires_grad), **inputs}


def flops(batch: int, seq_len: int, heads: int, head_dim: int, value_dim: int | None = None,
          chunk_size: int = CHUNK_SIZE) -> int:
    """Forward FLOPs of the chunkwise form: GLA's (see :func:`recurlm.kernels.gla.testing.flops`)
    plus the bonus term (r . (u * k)) v: 3 K + 2 V per token and head."""
    value_dim = head_dim if value_dim is None else value_dim
    bonus = batch * heads * seq_len * (3 * head_dim + 2 * value_dim)
    return gla_testing.flops(batch, seq_len, heads, head_dim, value_dim, chunk_size) + bonus
