"""Pieces RWKV-6 (Finch) and RWKV-7 (Goose) share: init ramps, per-head group norm, channel mix.

Both families are pre-LayerNorm residual stacks (``ln0`` on the embedding in block 0, then
``x += TimeMix(ln1(x)); x += ChannelMix(ln2(x))``) whose mixers read the previous token through a
*token shift*: ``lerp(x_t, x_{t-1}, mu) = x_t + (x_{t-1} - x_t) * mu`` with a learnt per-channel
``mu``. The previous token is zero at a document start (``recurlm.models.layers.token_shift``), and
the last token of a window is carried in the layer state.

Initialisations follow BlinkDL's RWKV-LM training code (``RWKV_Tmix_x060`` / ``x070``,
``RWKV_CMix_x060`` / ``x070`` and ``generate_init_weight``), computed in the module constructors.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from recurlm.models.base import Block, RecurrentLM
from recurlm.models.config import ModelConfig
from recurlm.models.layers import token_shift
from recurlm.models.state import REAL, LayerState


def depth_ratios(layer_idx: int, n_layers: int) -> tuple[float, float]:
    """(ratio_0_to_1, ratio_1_to_almost0) of the official init: layer position from 0 to 1, and
    1 - layer / n_layers (from 1 down to 1/n_layers)."""
    return layer_idx / max(n_layers - 1, 1), 1.0 - layer_idx / n_layers


def channel_ramp(dim: int) -> torch.Tensor:
    """[dim] ramp i / dim, the ``ddd`` of the official token-shift init."""
    return torch.arange(dim, dtype=torch.float32) / dim


def shift_mix_init(dim: int, power: float) -> torch.Tensor:
    """Token-shift coefficients 1 - (i / dim) ** power, [dim]: near 1 (previous token) at the first
    channels, towards 0 (current token) at the last ones; ``power`` shrinks with depth."""
    return 1.0 - channel_ramp(dim) ** power


def orthogonal_(weight: torch.Tensor, gain: float) -> torch.Tensor:
    """Orthogonal init computed in float32 (``nn.init.orthogonal_`` needs a QR); zero for gain 0."""
    with torch.no_grad():
        if gain == 0:
            return weight.zero_()
        w = torch.empty(weight.shape, dtype=torch.float32)
        nn.init.orthogonal_(w, gain=gain)
        return weight.copy_(w)


class OrthogonalLinear(nn.Linear):
    """Bias-free projection, orthogonally initialised with ``gain`` (0 = zeros), as the official
    ``generate_init_weight`` does for every ``.weight`` matrix. The init runs in the constructor
    (ZeRO-3's ``zero.Init`` partitions a module's parameters when its constructor returns)."""

    def __init__(self, d_in: int, d_out: int, gain: float):
        super().__init__(d_in, d_out, bias=False)
        orthogonal_(self.weight, gain)


class TinyUniformEmbedding(nn.Embedding):
    """Embedding initialised uniformly in ±``bound`` (official RWKV: 1e-4; ``ln0`` normalises it)."""

    def __init__(self, vocab_size: int, dim: int, bound: float = 1e-4):
        super().__init__(vocab_size, dim)
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)


def no_weight_decay(p: nn.Parameter, lr_scale: float = 1.0) -> nn.Parameter:
    """Tag ``p`` for ``RecurrentLM.param_groups``: no weight decay, learning rate times ``lr_scale``."""
    p._no_weight_decay = True
    if lr_scale != 1.0:
        p._lr_scale = lr_scale
    return p


def lerp_prev(x: torch.Tensor, dx: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """x + (x_prev - x) * mu with dx = x_prev - x: [B, T, D] (mu [D] or [B, T, D])."""
    return torch.addcmul(x, dx, mu.to(x.dtype))


class HeadGroupNorm(nn.Module):
    """GroupNorm with one group per head (the ``ln_x`` of RWKV-6/7), over [..., H, N] → [..., H * N].

    y = (o - mean_h(o)) / sqrt(var_h(o) + eps) * weight + bias, statistics per token and head,
    computed in float32. The official models use eps = 64e-5 (1e-5 * head_size_divisor ** 2)."""

    def __init__(self, n_heads: int, dim: int, eps: float, weight_init: float = 1.0):
        super().__init__()
        self.n_heads, self.eps = n_heads, eps
        self.weight = nn.Parameter(torch.full((dim,), float(weight_init)))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, o: torch.Tensor) -> torch.Tensor:
        """o [..., H, N] -> [..., H * N]."""
        *lead, H, N = o.shape
        y = F.group_norm(o.float().reshape(-1, H * N), H, self.weight.float(), self.bias.float(), self.eps)
        return y.view(*lead, H * N).to(o.dtype)


class ChannelMix(nn.Module):
    """RWKV channel mixer with its own token shift. For x [B, T, D]:

        k = relu(W_key lerp(x, x_prev, x_k)) ** 2                  [B, T, F]
        out = W_value k                                             (RWKV-7)
        out = sigmoid(W_receptance lerp(x, x_prev, x_r)) * W_value k (RWKV-6)

    State: the block's last input token, [B, D]. Init (official): x_k = 1 - (i/D) ** ``mix_power``,
    W_key orthogonal, W_value and W_receptance zero."""

    def __init__(self, d_model: int, d_hidden: int, mix_power: float, receptance: bool):
        super().__init__()
        self.x_k = nn.Parameter(shift_mix_init(d_model, mix_power))
        self.x_r = nn.Parameter(shift_mix_init(d_model, mix_power)) if receptance else None
        self.key = OrthogonalLinear(d_model, d_hidden, 1.0)
        self.value = OrthogonalLinear(d_hidden, d_model, 0.0)
        self.receptance = OrthogonalLinear(d_model, d_model, 0.0) if receptance else None

    def forward(self, x: torch.Tensor, resets: Optional[torch.Tensor], last: Optional[torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, D], resets [B, T], last [B, D] → (out [B, T, D], new last [B, D])."""
        x_prev, new_last = token_shift(x, resets, last)
        return self._mix(x, x_prev - x), new_last

    def step(self, x: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """One token: x [B, D], last [B, D] (the previous token's input) → out [B, D]."""
        return self._mix(x, last - x)

    def _mix(self, x: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
        """x, dx = x_prev - x [..., D] → out [..., D]."""
        out = self.value(torch.relu(self.key(lerp_prev(x, dx, self.x_k))).square())
        if self.receptance is not None:
            out = torch.sigmoid(self.receptance(lerp_prev(x, dx, self.x_r))) * out
        return out

    def flops_per_token(self) -> int:
        d, f = self.key.in_features, self.key.out_features
        return 2 * 2 * d * f + (2 * d * d if self.receptance is not None else 0)


class RWKVBlock(Block):
    state_kinds = {"shift_att": REAL, "shift_ffn": REAL}
    """The wkv matrices are content; the token-shift buffers hold the previous token."""

    """Pre-LayerNorm residual block: ``x = ln0(x)`` (block 0 only), ``x += att(ln1(x))``,
    ``x += ffn(ln2(x))``.

    ``att(x, resets, wkv, shift, return_state, **extra) -> (out, wkv, shift)`` is the family's time
    mixer (with ``n_heads``, ``head_dim`` and ``flops_per_token(seq_len)``). State per layer:
    ``wkv`` [B, H, N, N] (the matrix state, flash-linear-attention's [key, value] orientation),
    ``shift_att`` and ``shift_ffn`` [B, D] (the last inputs of the two token shifts)."""

    def __init__(self, d_model: int, norm_eps: float, layer_idx: int, att: nn.Module, ffn: ChannelMix):
        super().__init__()
        self.d_model = d_model
        self.ln0 = nn.LayerNorm(d_model, eps=norm_eps) if layer_idx == 0 else None
        self.ln1 = nn.LayerNorm(d_model, eps=norm_eps)
        self.ln2 = nn.LayerNorm(d_model, eps=norm_eps)
        self.att, self.ffn = att, ffn

    def forward(self, x, resets, state, return_state, **extra):
        state = state or {}
        if self.ln0 is not None:
            x = self.ln0(x)
        h, wkv, shift_att = self.att(self.ln1(x), resets, state.get("wkv"), state.get("shift_att"),
                                     return_state, **extra)
        x = x + h
        h, shift_ffn = self.ffn(self.ln2(x), resets, state.get("shift_ffn"))
        x = x + h
        return x, ({"wkv": wkv, "shift_att": shift_att, "shift_ffn": shift_ffn} if return_state else None)

    def step(self, x, state, **extra):
        """One token through the mixers' own ``step`` where the time mixer has one (RWKV-7), else
        through ``forward`` at T = 1."""
        if not hasattr(self.att, "step"):
            return super().step(x, state, **extra)
        if self.ln0 is not None:
            x = self.ln0(x)
        h, wkv, shift_att = self.att.step(self.ln1(x), state["wkv"], state["shift_att"], **extra)
        x = x + h
        ffn_in = self.ln2(x)
        x = x + self.ffn.step(ffn_in, state["shift_ffn"])
        return x, {"wkv": wkv, "shift_att": shift_att, "shift_ffn": ffn_in}

    def init_state(self, batch_size: int, device=None) -> LayerState:
        H, N, D = self.att.n_heads, self.att.head_dim, self.d_model
        return {"wkv": torch.zeros(batch_size, H, N, N, device=device),
                "shift_att": torch.zeros(batch_size, D, device=device),
                "shift_ffn": torch.zeros(batch_size, D, device=device)}

    def flops_per_token(self, seq_len: int) -> float:
        return self.att.flops_per_token(seq_len) + self.ffn.flops_per_token()


class RWKVLM(RecurrentLM):
    """RecurrentLM with RWKV's final LayerNorm (``ln_out``) and official embedding / head init:
    embedding uniform in ±1e-4, head orthogonal with gain 0.5 * sqrt(V / D) (0.5 when V <= D).
    Both replace the base class's modules with modules that initialise in their constructors."""

    def __init__(self, cfg: ModelConfig, blocks: list[RWKVBlock]):
        super().__init__(cfg, blocks, nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps))
        V, D = cfg.vocab_size, cfg.d_model
        self.embed = TinyUniformEmbedding(V, D)
        if self.head is not None:
            self.head = OrthogonalLinear(D, V, 0.5 * (V / D) ** 0.5 if V > D else 0.5)
