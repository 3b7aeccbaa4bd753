"""HGRN2 (Qin et al., 2024): gated linear RNN with outer-product state expansion.

Token mixer per layer, for x [B, T, D] with H = D / E heads of key width E (``expand_ratio``):

    f = lb + (1 - lb) * sigmoid(W_f x)     forget gate, lower bound lb grows with depth
    k = 1 - f                              input gate tied to the forget gate
    q = silu(W_q x),  v = W_i x
    S_t = diag(f_t) S_{t-1} + k_t v_t^T    per head: an [E, E] state (the "state expansion")
    o_t = S_t^T q_t * E^-0.5 → RMSNorm → (optional output gate) → W_o

The lower bounds are one [L, D] parameter turned into per-layer bounds by a softmax over layers
and a cumulative sum (layer 0 has none), as in the paper and flash-linear-attention. The channel
mixer is a SwiGLU MLP. The recurrence runs through ``recurlm.kernels.gla``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from recurlm.kernels.gla import gla
from recurlm.models.base import Block, RecurrentLM
from recurlm.models.config import ModelConfig
from recurlm.models.layers import GatedMLP, RMSNorm, TruncNormalLinear, divide_width
from recurlm.models.state import LayerState


@dataclass
class HGRN2Config(ModelConfig):
    family: str = "hgrn2"
    expand_ratio: Optional[int] = None
    """Key width E of each head; the state per layer is D * E values (the state-expansion knob)."""
    mlp_hidden: Optional[int] = None
    """Hidden width of the SwiGLU channel mixer."""
    output_gate: bool = True
    """Multiply the normalised recurrence output by silu(W_g x) (HGRN2 paper); fla's HGRN2 has none."""
    use_lower_bound: bool = True
    """Learnable forget-gate lower bounds increasing with depth."""
    gate_norm_eps: float = 1e-5
    """Epsilon of the output RMSNorm (fla uses 1e-5 whatever norm_eps says)."""


class HGRN2Mixer(nn.Module):
    def __init__(self, cfg: HGRN2Config):
        super().__init__()
        d, e = cfg.d_model, cfg.expand_ratio
        self.n_heads, self.head_dim, self.impl = divide_width("hgrn2", d, e, "expand_ratio"), e, cfg.kernel_impl
        self.q_proj = TruncNormalLinear(d, d, cfg.init_std)
        self.f_proj = TruncNormalLinear(d, d, cfg.init_std)
        self.i_proj = TruncNormalLinear(d, d, cfg.init_std)
        self.g_proj = TruncNormalLinear(d, d, cfg.init_std) if cfg.output_gate else None
        self.g_norm = RMSNorm(d, eps=cfg.gate_norm_eps)
        self.o_proj = TruncNormalLinear(d, d, cfg.init_std / (2 * cfg.n_layers) ** 0.5)

    def forward(self, x: torch.Tensor, resets: Optional[torch.Tensor], state: Optional[torch.Tensor],
                return_state: bool, lower_bound: Optional[torch.Tensor]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        B, T, D = x.shape
        q = F.silu(self.q_proj(x))
        g = F.logsigmoid(self.f_proj(x).float())
        if lower_bound is not None:
            # log(lb + (1 - lb) * sigmoid(f)), computed stably in log space
            g = torch.logaddexp(lower_bound.log(), torch.log1p(-lower_bound) + g)
        k = -torch.expm1(g)  # 1 - f
        v = self.i_proj(x)
        shape = (B, T, self.n_heads, self.head_dim)
        o, new_state = gla(q.view(shape), k.to(x.dtype).view(shape), v.view(shape), g.view(shape),
                           initial_state=state, output_final_state=return_state, resets=resets, impl=self.impl)
        o = self.g_norm(o.reshape(B, T, D))
        if self.g_proj is not None:
            o = o * F.silu(self.g_proj(x))
        return self.o_proj(o), new_state

    def flops_per_token(self, seq_len: int, chunk: int = 64) -> float:
        d, e = self.n_heads * self.head_dim, self.head_dim
        projections = 2 * d * d * (5 if self.g_proj is not None else 4)
        # chunkwise GLA per head: state read + update (4 E^2) and intra-chunk attention (~2 C E)
        recurrence = self.n_heads * (4 * e * e + 2 * min(chunk, seq_len) * e)
        return projections + recurrence


class HGRN2Block(Block):
    def __init__(self, cfg: HGRN2Config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = HGRN2Mixer(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = GatedMLP(cfg.d_model, cfg.mlp_hidden, "silu", std=cfg.init_std,
                            out_std=cfg.init_std / (2 * cfg.n_layers) ** 0.5)

    def forward(self, x, resets, state, return_state, lower_bound=None):
        h, s = self.mixer(self.attn_norm(x), resets, None if state is None else state["S"], return_state, lower_bound)
        x = x + h
        x = x + self.mlp(self.mlp_norm(x))
        return x, ({"S": s} if return_state else None)

    def init_state(self, batch_size: int, device=None) -> LayerState:
        m = self.mixer
        return {"S": torch.zeros(batch_size, m.n_heads, m.head_dim, m.head_dim, device=device)}

    def flops_per_token(self, seq_len: int) -> float:
        return self.mixer.flops_per_token(seq_len) + self.mlp.flops_per_token()


class HGRN2LM(RecurrentLM):
    def __init__(self, cfg: HGRN2Config):
        super().__init__(cfg, [HGRN2Block(cfg.for_layer(i), i) for i in range(cfg.n_layers)], RMSNorm(cfg.d_model, cfg.norm_eps))
        self.lower_bounds = nn.Parameter(torch.zeros(cfg.n_layers, cfg.d_model)) if cfg.use_lower_bound else None
        if self.lower_bounds is not None:
            self.lower_bounds._no_weight_decay = True

    def block_extras(self) -> list[dict[str, Any]]:
        if self.lower_bounds is None:
            return super().block_extras()
        bounds = self.lower_bounds.float().softmax(0)
        bounds = bounds.cumsum(0) - bounds[0]
        return [{"lower_bound": bounds[i] if i > 0 else None} for i in range(len(self.blocks))]


CONFIG = HGRN2Config
MODEL = HGRN2LM
