"""Random inputs, FLOP counts and torch's SDPA as the peer reference for sliding-window attention
(tests and benchmarks)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from recurlm.kernels.boundaries import doc_ids_from_resets
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


def flops(batch: int, seq_len: int, heads: int, head_dim: int, window: int) -> int:
    """Forward matmul FLOPs of the exact band (q.k and p.v, 2 per multiply-add), no cache."""
    attended = sum(min(t + 1, window) for t in range(seq_len))
    return 4 * batch * heads * head_dim * attended


def banded_sdpa_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
                          resets: torch.Tensor | None = None) -> torch.Tensor:
    """torch's ``scaled_dot_product_attention`` with an explicit dense [T, T] banded causal and
    same-document mask (no cache): q [B, T, H, D], k, v [B, T, Hkv, D] -> o [B, T, H, D].
    O(T^2) memory: the peer reference the sequential ``naive`` path is tested and timed against."""
    seq_len = q.shape[1]
    position = torch.arange(seq_len, device=q.device)
    distance = position[:, None] - position[None, :]
    docs = (doc_ids_from_resets(resets) if resets is not None
            else torch.zeros(q.shape[:2], dtype=torch.long, device=q.device))
    mask = (distance >= 0) & (distance < window) & (docs[:, :, None] == docs[:, None, :])  # [B, T, T]
    group = q.shape[2] // k.shape[2]
    keys, values = (x.repeat_interleave(group, dim=2).transpose(1, 2) for x in (k, v))
    out = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=mask[:, None])
    return out.transpose(1, 2)
