"""Titans attention with persistent memory (package docstring): the projections shared by MAC's
segment attention, and MAG/MAL's sliding-window attention with its key/value cache."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from recurlm.kernels.local_attention.state import LocalAttentionState, extend_with_state, final_state_from
from recurlm.models.layers import TruncNormalLinear, divide_width, rotate_half_rope
from recurlm.models.state import LayerState
from recurlm.models.titans.config import TitansConfig, TitansMAGConfig


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor,
           sink_k: torch.Tensor, sink_v: torch.Tensor, scale: float) -> torch.Tensor:
    """Softmax attention over masked keys plus always-visible persistent keys.

    q [N, T, H, Dh]; k, v [N, S, H, Dh]; allowed [N, T, S] bool; sink_k, sink_v [P, H, Dh]
    -> [N, T, H, Dh]: o_t = sum over {persistent} u {s : allowed[t, s]} of softmax(scale q_t . k) v.
    Runs through ``F.scaled_dot_product_attention`` (a fused kernel on GPU: the [T, S] scores are
    never stored for backward), the persistent tokens prepended to the keys."""
    N, T, P = q.shape[0], q.shape[1], sink_k.shape[0]
    keys = torch.cat([sink_k.to(k.dtype).expand(N, -1, -1, -1), k], 1)
    values = torch.cat([sink_v.to(v.dtype).expand(N, -1, -1, -1), v], 1)
    mask = torch.cat([allowed.new_ones(N, T, P), allowed], -1)[:, None]       # [N, 1, T, P + S]
    o = F.scaled_dot_product_attention(q.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2),
                                       attn_mask=mask, scale=scale)
    return o.transpose(1, 2)


class PersistentAttention(nn.Module):
    """Multi-head attention projections with RoPE and ``n_persistent`` persistent tokens."""

    def __init__(self, cfg: TitansConfig):
        super().__init__()
        d, h = cfg.d_model, cfg.n_heads
        self.n_heads, self.head_dim, self.rope_theta = h, divide_width("titans", d, h, "n_heads"), cfg.rope_theta
        self.q_proj, self.k_proj, self.v_proj = (TruncNormalLinear(d, d, cfg.init_std) for _ in range(3))
        self.persistent = nn.Parameter(torch.empty(cfg.n_persistent, d))
        with torch.no_grad():
            nn.init.normal_(self.persistent, std=cfg.init_std)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.n_heads, self.head_dim))

    def rope(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return rotate_half_rope(x, positions, self.head_dim, self.rope_theta)

    def sinks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the persistent tokens, [P, H, Dh] each (no RoPE: they have no position)."""
        return self.heads(self.k_proj(self.persistent)), self.heads(self.v_proj(self.persistent))

    def flops_per_token(self, context: float) -> float:
        d = self.q_proj.in_features
        return 2 * 3 * d * d + 2 * 2 * d * (context + self.persistent.shape[0])


class SlidingWindowAttention(PersistentAttention):
    """Causal sliding-window attention (``attention_window`` tokens incl. itself, same document)
    plus the persistent tokens, with a key/value cache state."""

    def __init__(self, cfg: TitansMAGConfig):
        super().__init__(cfg)
        self.window = cfg.attention_window

    def forward(self, x: torch.Tensor, doc_start: torch.Tensor, positions: torch.Tensor,
                state: Optional[LayerState], return_state: bool) -> tuple[torch.Tensor, LayerState]:
        """x [B, T, d] -> (heads concatenated [B, T, d], cache entries k, v, _valid)."""
        B, T, _ = x.shape
        W, H, Dh = self.window, self.n_heads, self.head_dim
        q = self.rope(self.heads(self.q_proj(x)), positions)
        k = self.rope(self.heads(self.k_proj(x)), positions)
        v = self.heads(self.v_proj(x))
        cache = None if state is None else LocalAttentionState(state["k"], state["v"], state["_valid"])
        dtype = torch.promote_types(x.dtype, torch.float32)
        k_ext, v_ext, doc_ext = extend_with_state(k, v, cache, doc_start, W, dtype)
        # query block j (tokens jW .. jW + W - 1) needs extended keys jW .. jW + 2W - 2
        n_blocks = -(-T // W)
        pad = n_blocks * W - T
        q_blocks = F.pad(q, (0, 0, 0, 0, 0, pad)).view(B * n_blocks, W, H, Dh)
        k_blocks, v_blocks = (F.pad(z.to(x.dtype), (0, 0, 0, 0, 0, pad)).unfold(1, 2 * W - 1, W)
                              .permute(0, 1, 4, 2, 3).reshape(B * n_blocks, 2 * W - 1, H, Dh) for z in (k_ext, v_ext))
        doc_pad = F.pad(doc_ext, (0, pad), value=-2)  # padded queries see padded keys only: finite
        key_docs = doc_pad.unfold(1, 2 * W - 1, W).reshape(B * n_blocks, 1, 2 * W - 1)
        query_docs = doc_pad[:, W - 1:].reshape(B * n_blocks, W, 1)
        i, s = torch.arange(W, device=x.device)[:, None], torch.arange(2 * W - 1, device=x.device)
        allowed = (s >= i) & (s <= i + W - 1) & (key_docs == query_docs)
        o = attend(q_blocks, k_blocks, v_blocks, allowed, *self.sinks(), Dh ** -0.5)
        o = o.reshape(B, n_blocks * W, H * Dh)[:, :T]
        if not return_state:
            return o, {}
        cache = final_state_from(k_ext, v_ext, doc_ext, W)
        return o, {"k": cache.k, "v": cache.v, "_valid": cache.valid}

    def init_state(self, batch_size: int, dtype: torch.dtype, device) -> LayerState:
        cache = LocalAttentionState.empty(batch_size, self.window, self.n_heads, self.head_dim,
                                          torch.promote_types(dtype, torch.float32), device)
        return {"k": cache.k, "v": cache.v, "_valid": cache.valid}

    def flops_per_token(self, seq_len: int) -> float:
        w, t = self.window, seq_len
        mean_context = (t + 1) / 2 if t <= w else (w * (w + 1) / 2 + (t - w) * w) / t
        return super().flops_per_token(mean_context)
