"""RWKV-6 "Finch" (Peng et al., 2024, "Eagle and Finch"; BlinkDL RWKV-LM ``x060``): matrix-valued
states with data-dependent token shift (ddlerp) and data-dependent decay.

Time mixer per layer, for x [B, T, D] with H = D / N heads of size N, dx = x_prev - x (token shift):

    xx = x + dx * maa_x
    [m_w, m_k, m_v, m_r, m_g] = tanh(xx maa_w1) maa_w2          5 LoRAs sharing the first factor
    x_c = x + dx * (maa_c + m_c)                                ddlerp, for c in w, k, v, r, g
    r = W_r x_r,  k = W_k x_k,  v = W_v x_v,  g = silu(W_g x_g)
    w = -exp(time_decay + tanh(x_w decay_w1) decay_w2)           data-dependent log decay (< 0)
    o_t = (S_{t-1} + diag(u) k_t v_t^T)^T r_t,  S_t = diag(exp(w_t)) S_{t-1} + k_t v_t^T   per head
    out = W_o (GroupNorm_h(o) * g)                               u = ``time_faaaa`` (the bonus)

The recurrence runs through ``recurlm.kernels.rwkv6.rwkv6`` (scale 1). The channel mixer is
``sigmoid(W_r lerp(x, x_prev, maa_r)) * W_v relu(W_k lerp(x, x_prev, maa_k)) ** 2`` with hidden
width 3.5 D (rounded down to a multiple of 32).

Optimizer groups (official ``configure_optimizers`` with ``layerwise_lr``): ``time_decay`` at twice
the learning rate (``_lr_scale = 2``); the LoRA factors (``time_maa_w1/w2``, ``time_decay_w1/w2``)
and ``time_faaaa`` without weight decay (``_no_weight_decay``); weight decay on the projection
matrices, embedding and head. Vectors and norms get no decay through ``RecurrentLM.param_groups``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from recurlm.kernels.rwkv6 import rwkv6
from recurlm.models.config import ModelConfig
from recurlm.models.layers import token_shift
from recurlm.models.rwkv_common import (ChannelMix, HeadGroupNorm, RWKVBlock, RWKVLM, channel_ramp,
                                        depth_ratios, lerp_prev, no_weight_decay, OrthogonalLinear,
                                        shift_mix_init)

DDLERP_TARGETS = ("w", "k", "v", "r", "g")
"""Order of the five ddlerp LoRA outputs (official ``mw, mk, mv, mr, mg``)."""


@dataclass
class RWKV6Config(ModelConfig):
    """``init_std`` is not used: every parameter gets the official RWKV-LM initialisation."""

    family: str = "rwkv6"
    norm_eps: float = 1e-5
    """Epsilon of the LayerNorms (ln0, ln1, ln2, ln_out); PyTorch's default, as official."""
    head_dim: Optional[int] = None
    """Head size N (64 in all released models); the state per layer is D * N values."""
    ffn_hidden: Optional[int] = None
    """Hidden width of the channel mixer (int(3.5 D) // 32 * 32 official)."""
    mix_lora: Optional[int] = None
    """Rank of each of the five ddlerp LoRAs (official 32; 64 at D = 4096)."""
    decay_lora: Optional[int] = None
    """Rank of the decay LoRA (official 64; 128 at D = 4096)."""
    group_norm_eps: float = 64e-5
    """Epsilon of the per-head GroupNorm ``ln_x`` (official 1e-5 * head_size_divisor ** 2 = 64e-5;
    fla uses norm_eps)."""


class RWKV6TimeMix(nn.Module):
    """The x060 time mixer (module docstring). Parameter names follow BlinkDL's code, with the
    [1, 1, D] vectors stored as [D]."""

    def __init__(self, cfg: RWKV6Config, layer_idx: int):
        super().__init__()
        D, N = cfg.d_model, cfg.head_dim
        if D % N:
            raise ValueError(f"rwkv6: d_model={D} must be a multiple of head_dim={N}")
        self.n_heads, self.head_dim, self.impl = D // N, N, cfg.kernel_impl
        r01, r10 = depth_ratios(layer_idx, cfg.n_layers)
        n = torch.arange(D, dtype=torch.float32)

        self.time_maa_x = nn.Parameter(shift_mix_init(D, r10))
        self.time_maa_w = nn.Parameter(shift_mix_init(D, r10))
        self.time_maa_k = nn.Parameter(shift_mix_init(D, r10))
        self.time_maa_v = nn.Parameter(1.0 - (channel_ramp(D) ** r10 + 0.3 * r01))
        self.time_maa_r = nn.Parameter(shift_mix_init(D, 0.5 * r10))
        self.time_maa_g = nn.Parameter(shift_mix_init(D, 0.5 * r10))
        self.time_maa_w1 = no_weight_decay(nn.Parameter(torch.zeros(D, 5 * cfg.mix_lora)))
        self.time_maa_w2 = no_weight_decay(nn.Parameter(torch.empty(5, cfg.mix_lora, D).uniform_(-0.01, 0.01)))

        self.time_decay = no_weight_decay(nn.Parameter(-6 + 5 * (n / (D - 1)) ** (0.7 + 1.3 * r01)), lr_scale=2.0)
        self.time_decay_w1 = no_weight_decay(nn.Parameter(torch.zeros(D, cfg.decay_lora)))
        self.time_decay_w2 = no_weight_decay(nn.Parameter(torch.empty(cfg.decay_lora, D).uniform_(-0.01, 0.01)))
        bonus = r01 * (1 - n / (D - 1)) + ((n + 1) % 3 - 1) * 0.1
        self.time_faaaa = no_weight_decay(nn.Parameter(bonus.view(self.n_heads, N)))

        self.receptance = OrthogonalLinear(D, D, 1.0)
        self.key = OrthogonalLinear(D, D, 0.1)
        self.value = OrthogonalLinear(D, D, 1.0)
        self.gate = OrthogonalLinear(D, D, 0.1)
        self.output = OrthogonalLinear(D, D, 0.0)
        self.ln_x = HeadGroupNorm(self.n_heads, D, cfg.group_norm_eps)

    def forward(self, x: torch.Tensor, resets: Optional[torch.Tensor], wkv: Optional[torch.Tensor],
                shift: Optional[torch.Tensor], return_state: bool
                ) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
        """x [B, T, D] → (out [B, T, D], wkv state [B, H, N, N] or None, last token [B, D])."""
        B, T, D = x.shape
        H, N = self.n_heads, self.head_dim
        x_prev, new_shift = token_shift(x, resets, shift)
        dx = x_prev - x
        low = torch.tanh(lerp_prev(x, dx, self.time_maa_x) @ self.time_maa_w1).view(B, T, 5, -1)
        m = torch.einsum("btfr,frd->fbtd", low, self.time_maa_w2)  # [5, B, T, D] in DDLERP_TARGETS order
        maa = (self.time_maa_w, self.time_maa_k, self.time_maa_v, self.time_maa_r, self.time_maa_g)
        xw, xk, xv, xr, xg = (lerp_prev(x, dx, mu + m_c) for mu, m_c in zip(maa, m))

        r = self.receptance(xr).view(B, T, H, N)
        k = self.key(xk).view(B, T, H, N)
        v = self.value(xv).view(B, T, H, N)
        g = F.silu(self.gate(xg))
        acc = torch.promote_types(x.dtype, torch.float32)  # the log decay in at least float32
        w = -torch.exp(self.time_decay.to(acc) + (torch.tanh(xw @ self.time_decay_w1) @ self.time_decay_w2).to(acc))
        o, new_wkv = rwkv6(r, k, v, w.view(B, T, H, N), self.time_faaaa, scale=1.0, initial_state=wkv,
                           output_final_state=return_state, resets=resets, impl=self.impl)
        return self.output(self.ln_x(o) * g), new_wkv, new_shift

    def flops_per_token(self, seq_len: int, chunk: int = 64) -> float:
        D, N = self.n_heads * self.head_dim, self.head_dim
        ranks = self.time_maa_w1.shape[1] + self.time_decay_w1.shape[1]
        projections = 2 * 5 * D * D + 2 * 2 * D * ranks
        # per head: decay + write + read of an [N, N] state, and the intra-chunk terms (~4 C N)
        recurrence = self.n_heads * (6 * N * N + 4 * min(chunk, seq_len) * N)
        return projections + recurrence


class RWKV6LM(RWKVLM):
    def __init__(self, cfg: RWKV6Config):
        blocks = []
        for i in range(cfg.n_layers):
            r10 = depth_ratios(i, cfg.n_layers)[1]
            ffn = ChannelMix(cfg.d_model, cfg.ffn_hidden, mix_power=r10, receptance=True)
            blocks.append(RWKVBlock(cfg.d_model, cfg.norm_eps, i, RWKV6TimeMix(cfg.for_layer(i), i), ffn))
        super().__init__(cfg, blocks)


CONFIG = RWKV6Config
MODEL = RWKV6LM
