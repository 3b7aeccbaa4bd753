"""RWKV-7 "Goose" (Peng et al., 2025; BlinkDL RWKV-LM ``x070``): the generalized delta rule with a
vector-valued in-context learning rate.

Time mixer per layer, for x [B, T, D] with H = D / N heads of size N, dx = x_prev - x (token shift):

    x_c = x + dx * x_c                 for c in r, w, k, v, a, g (learnt per-channel mixes)
    r = W_r x_r,  k = W_k x_k,  v = W_v x_v
    w = -exp(-0.5) * sigmoid(w0 + tanh(x_w w1) w2)        log decay in (-e^-0.5, 0)
    a = sigmoid(a0 + (x_a a1) a2)                         in-context learning rate (vector)
    g = sigmoid(x_g g1) g2                                output gate
    v = v + (v_first - v) * sigmoid(v0 + (x_v v1) v2)     value residual (layers > 0; v_first is
                                                          layer 0's v of the same token)
    kk = normalize_per_head(k * k_k)                      removal key, unit norm
    k = k * (1 + (a - 1) * k_a)                           replacement key
    S_t = S_{t-1} (diag(exp(w_t)) - kk_t^T (a_t * kk_t)) + v_t^T k_t     per head, S [N_v, N_k]
                                       (allow_neg_eigval: a_t (1 + exp(w_t)) in the transition)
    o_t = GroupNorm_h(S_t r_t) + (sum_h(r * k * r_k)) v_t                 bonus ("r_k") term
    out = W_o (o * g)

Eigenvalues of the transition (for a scalar a and decay e^w, along kk; the others are e^w): e^w - a
in (e^w - 1, e^w), i.e. about (-0.46, 1) overall, never -1: parity-like state tracking is out of
reach at any length. ``allow_neg_eigval`` widens it to (-1, 1) (config field docstring).

The recurrence runs through ``recurlm.kernels.dplr_delta_rule.dplr_delta_rule`` (fla's [key, value] state
orientation: q = r, a = -kk, b = kk * a, gk = w, scale 1). The log decay -exp(-softplus(-z) - 0.5)
of the official code equals -e^-0.5 sigmoid(z), computed in float32. The channel mixer is
``relu(W_k lerp(x, x_prev, x_k)) ** 2 → W_v`` with hidden width 4 D.

Optimizer groups (official ``configure_optimizers``): weight decay only on the projection matrices
(``receptance``, ``key``, ``value``, ``output``, channel-mix ``key``/``value``, embedding, head);
the LoRA matrices (w1, w2, a1, a2, v1, v2, g1, g2) and ``r_k`` are tagged ``_no_weight_decay``;
``w0`` (the decay bias) trains at twice the learning rate (``_lr_scale = 2``). Vectors and norms
get no decay through ``RecurrentLM.param_groups``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from recurlm.kernels.dplr_delta_rule import dplr_delta_rule, dplr_step
from recurlm.models.config import ModelConfig
from recurlm.models.rwkv_common import (ChannelMix, HeadGroupNorm, RWKVBlock, RWKVLM, depth_ratios,
                                        lerp_prev, no_weight_decay, orthogonal_, OrthogonalLinear,
                                        shift_mix_init)
from recurlm.models.layers import token_shift

LOG_DECAY_LIMIT = math.exp(-0.5)
"""|log decay| < e^-0.5: the per-step decay exp(w) stays in (exp(-e^-0.5), 1) ≈ (0.545, 1)."""


@dataclass
class RWKV7Config(ModelConfig):
    """``init_std`` is not used: every parameter gets the official RWKV-LM initialisation."""

    family: str = "rwkv7"
    norm_eps: float = 1e-5
    """Epsilon of the LayerNorms (ln0, ln1, ln2, ln_out); PyTorch's default, as official."""
    head_dim: Optional[int] = None
    """Head size N (64 in all released models); the state per layer is D * N values."""
    ffn_hidden: Optional[int] = None
    """Hidden width of the channel mixer (4 D in x070)."""
    decay_lora: Optional[int] = None
    """Rank of the decay LoRA (w1, w2)."""
    iclr_lora: Optional[int] = None
    """Rank of the in-context-learning-rate LoRA (a1, a2)."""
    value_lora: Optional[int] = None
    """Rank of the value-residual gate LoRA (v1, v2)."""
    gate_lora: Optional[int] = None
    """Rank of the output-gate LoRA (g1, g2)."""
    group_norm_eps: float = 64e-5
    """Epsilon of the per-head GroupNorm ``ln_x`` (official: 64e-5 whatever the head size; fla
    uses head_dim * norm_eps)."""
    allow_neg_eigval: bool = False
    """Let the transition reach eigenvalue -1 (Grazzi et al., 2025, "Unlocking State-Tracking in
    Linear RNNs Through Negative Eigenvalues"): the in-context learning rate of the removal term
    becomes a (1 + e^w) in (0, 1 + e^w) instead of a in (0, 1), so along kk the eigenvalue
    e^w - a(1 + e^w) spans (-1, e^w) instead of (e^w - 1, e^w) (at most -0.46 below zero). Up to
    doubling (no decay: e^w = 1); scaled by 1 + e^w rather than 2 so it never drops below -1
    (RWKV-7's decay is not multiplied into the rank-one part). The replacement key keeps a."""


class FirstLayerValue:
    """Carries layer 0's values v [B, T, D] to the later layers within one forward call (the value
    residual mixes each token's v with the first layer's v of the *same* token: no cross-token state)."""

    def __init__(self):
        self.v: Optional[torch.Tensor] = None


def lora_up(rank: int, dim: int) -> nn.Parameter:
    """Second LoRA factor [rank, dim], orthogonal with gain 0.1 (official ``ortho_init(..., 0.1)``)."""
    return no_weight_decay(nn.Parameter(orthogonal_(torch.empty(rank, dim), 0.1)))


def lora_down(dim: int, rank: int) -> nn.Parameter:
    """First LoRA factor [dim, rank], zero-initialised (official)."""
    return no_weight_decay(nn.Parameter(torch.zeros(dim, rank)))


class RWKV7TimeMix(nn.Module):
    """The x070 time mixer (module docstring). Parameter names and shapes follow BlinkDL's code,
    with the [1, 1, D] vectors stored as [D]."""

    def __init__(self, cfg: RWKV7Config, layer_idx: int):
        super().__init__()
        D, N = cfg.d_model, cfg.head_dim
        if D % N:
            raise ValueError(f"rwkv7: d_model={D} must be a multiple of head_dim={N}")
        self.layer_idx, self.n_heads, self.head_dim, self.impl = layer_idx, D // N, N, cfg.kernel_impl
        self.allow_neg_eigval = cfg.allow_neg_eigval
        r01, r10 = depth_ratios(layer_idx, cfg.n_layers)
        n = torch.arange(D, dtype=torch.float32)
        linear = n / (D - 1) - 0.5
        zigzag = ((n % N) - (N - 1) / 2) / ((N - 1) / 2)
        zigzag = zigzag * zigzag.abs()
        decay_speed = -6 + 6 * (n / (D - 1)) ** (1 + r01 ** 0.3)

        self.x_r = nn.Parameter(shift_mix_init(D, 0.2 * r10))
        self.x_w = nn.Parameter(shift_mix_init(D, 0.9 * r10))
        self.x_k = nn.Parameter(shift_mix_init(D, 0.7 * r10))
        self.x_v = nn.Parameter(shift_mix_init(D, 0.7 * r10))
        self.x_a = nn.Parameter(shift_mix_init(D, 0.9 * r10))
        self.x_g = nn.Parameter(shift_mix_init(D, 0.2 * r10))

        self.w0 = no_weight_decay(nn.Parameter(decay_speed + 0.5 + zigzag * 2.5), lr_scale=2.0)
        self.w1, self.w2 = lora_down(D, cfg.decay_lora), lora_up(cfg.decay_lora, D)
        self.a0 = nn.Parameter(-0.19 + zigzag * 0.3 + linear * 0.4)
        self.a1, self.a2 = lora_down(D, cfg.iclr_lora), lora_up(cfg.iclr_lora, D)
        if layer_idx > 0:  # layer 0 is the source of the value residual
            self.v0 = nn.Parameter(0.73 - linear * 0.4)
            self.v1, self.v2 = lora_down(D, cfg.value_lora), lora_up(cfg.value_lora, D)
        self.g1, self.g2 = lora_down(D, cfg.gate_lora), lora_up(cfg.gate_lora, D)

        self.k_k = nn.Parameter(0.71 - linear * 0.1)
        self.k_a = nn.Parameter(torch.full((D,), 1.02))
        self.r_k = no_weight_decay(nn.Parameter(torch.full((self.n_heads, N), -0.04)))

        self.receptance = OrthogonalLinear(D, D, 1.0)
        self.key = OrthogonalLinear(D, D, 0.1)
        self.value = OrthogonalLinear(D, D, 1.0)
        self.output = OrthogonalLinear(D, D, 0.0)
        self.ln_x = HeadGroupNorm(self.n_heads, D, cfg.group_norm_eps,
                                  weight_init=((layer_idx + 1) / cfg.n_layers) ** 0.7)

    def _inputs(self, x: torch.Tensor, dx: torch.Tensor, first_value: FirstLayerValue
                ) -> tuple[torch.Tensor, ...]:
        """x, dx = x_prev - x [..., D] -> r, k, v, a, g [..., D], w [..., D] (log decay, at least
        float32) and kk [..., H, N] (module docstring)."""
        mixes = (self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g)
        xr, xw, xk, xv, xa, xg = (lerp_prev(x, dx, mu) for mu in mixes)
        r = self.receptance(xr)
        k = self.key(xk)
        v = self.value(xv)
        acc = torch.promote_types(x.dtype, torch.float32)  # the log decay in at least float32
        w = -LOG_DECAY_LIMIT * torch.sigmoid(self.w0.to(acc) + (torch.tanh(xw @ self.w1) @ self.w2).to(acc))
        if self.layer_idx == 0:
            first_value.v = v
        else:
            mix = torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2)  # float32 under autocast, like v0
            v = torch.lerp(v, first_value.v, mix.to(v.dtype))
        a = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)
        g = torch.sigmoid(xg @ self.g1) @ self.g2
        kk = F.normalize((k * self.k_k).unflatten(-1, (self.n_heads, self.head_dim)), dim=-1)
        k = k * (1 + (a - 1) * self.k_a)
        return r, k, v, a, g, w, kk

    def _removal_rate(self, a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The in-context learning rate in the transition: a, or a (1 + e^w) with ``allow_neg_eigval``."""
        return a * (1 + w.exp()).to(a.dtype) if self.allow_neg_eigval else a

    def _output(self, o: torch.Tensor, r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor
                ) -> torch.Tensor:
        """Recurrence output o and r, k, v [..., H, N], gate g [..., D] -> the mixer's output [..., D]."""
        bonus = (r * k * self.r_k).sum(-1, keepdim=True) * v
        return self.output((self.ln_x(o) + bonus.flatten(-2)) * g)

    def forward(self, x: torch.Tensor, resets: Optional[torch.Tensor], wkv: Optional[torch.Tensor],
                shift: Optional[torch.Tensor], return_state: bool, first_value: FirstLayerValue
                ) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
        """x [B, T, D] → (out [B, T, D], wkv state [B, H, N, N] or None, last token [B, D])."""
        x_prev, new_shift = token_shift(x, resets, shift)
        r, k, v, a, g, w, kk = self._inputs(x, x_prev - x, first_value)
        r, k, v, a, w = (t.unflatten(-1, (self.n_heads, self.head_dim)) for t in (r, k, v, a, w))
        o, new_wkv = dplr_delta_rule(r, k, v, -kk, kk * self._removal_rate(a, w), w, scale=1.0, initial_state=wkv,
                                     output_final_state=return_state, resets=resets, impl=self.impl,
                                     gk_lower_bound=-LOG_DECAY_LIMIT)
        return self._output(o, r, k, v, g), new_wkv, new_shift

    def step(self, x: torch.Tensor, wkv: torch.Tensor, shift: torch.Tensor, first_value: FirstLayerValue
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One token (decoding): x [B, D], wkv [B, H, N, N], shift [B, D] (the previous token) →
        (out [B, D], new wkv, x as the next shift). Same math as ``forward`` at T = 1, without the
        kernel dispatch and the [B, 1, ...] time axis."""
        r, k, v, a, g, w, kk = self._inputs(x, shift - x, first_value)
        r, k, v, a, w = (t.unflatten(-1, (self.n_heads, self.head_dim)) for t in (r, k, v, a, w))
        o, wkv = dplr_step(r, k, v, -kk, kk * self._removal_rate(a, w), w, 1.0, wkv)
        return self._output(o, r, k, v, g), wkv, x

    def flops_per_token(self, seq_len: int, chunk: int = 64) -> float:
        D, N = self.n_heads * self.head_dim, self.head_dim
        ranks = self.w1.shape[1] + self.a1.shape[1] + self.g1.shape[1] + (self.v1.shape[1] if self.layer_idx else 0)
        projections = 2 * 4 * D * D + 2 * 2 * D * ranks
        # per head: decay + low-rank read/update + rank-1 write + read-out of an [N, N] state, and
        # the intra-chunk terms of the chunkwise form (~4 C N)
        recurrence = self.n_heads * (8 * N * N + 4 * min(chunk, seq_len) * N)
        return projections + recurrence


class RWKV7LM(RWKVLM):
    def __init__(self, cfg: RWKV7Config):
        blocks = []
        for i in range(cfg.n_layers):
            r10 = depth_ratios(i, cfg.n_layers)[1]
            ffn = ChannelMix(cfg.d_model, cfg.ffn_hidden, mix_power=r10 ** 4, receptance=False)
            blocks.append(RWKVBlock(cfg.d_model, cfg.norm_eps, i, RWKV7TimeMix(cfg.for_layer(i), i), ffn))
        super().__init__(cfg, blocks)

    def block_extras(self):
        first_value = FirstLayerValue()  # fresh per call: written by block 0, read by the others
        return [{"first_value": first_value} for _ in self.blocks]


CONFIG = RWKV7Config
MODEL = RWKV7LM
