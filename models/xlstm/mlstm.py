"""The mLSTM layers of xLSTM: v1 (pre-up-projection, convolution, block-diagonal q/k/v) and xLSTM-7B
(soft-capped gates, output gate) (package docstring)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from recurlm.kernels.mlstm import MLSTMState, mlstm
from recurlm.models.layers import ShortConv, TruncNormalLinear
from recurlm.models.state import LayerState
from recurlm.models.xlstm.config import XLSTMConfig, norm_eps
from recurlm.models.xlstm.layers import (GateLinear, GroupLayerNorm, HeadwiseLinear, forget_bias_linspace, round_up,
                                         small_init_std, soft_cap, wang_init_std)

RECURRENCE_CHUNK = 64
"""Chunk length of the chunkwise mLSTM (for the FLOP count)."""


def mlstm_state(state: Optional[LayerState]) -> Optional[MLSTMState]:
    return None if state is None else MLSTMState(state["C"], state["n"], state["_m"])


def mlstm_state_dict(state: MLSTMState) -> LayerState:
    return {"C": state.C, "n": state.n, "_m": state.m}


def zero_mlstm_state(batch: int, heads: int, dk: int, dv: int, dtype: torch.dtype, device) -> LayerState:
    """The fresh mLSTM state (zeros), in float32 (float64 for float64 models)."""
    dtype = torch.promote_types(dtype, torch.float32)
    return {"C": torch.zeros(batch, heads, dk, dv, dtype=dtype, device=device),
            "n": torch.zeros(batch, heads, dk, dtype=dtype, device=device),
            "_m": torch.zeros(batch, heads, dtype=dtype, device=device)}


def mlstm_flops(heads: int, dk: int, dv: int, seq_len: int) -> int:
    """Chunkwise mLSTM per token: state read/update (~4 K V per head) and intra-chunk attention."""
    return heads * (4 * dk * dv + 2 * min(RECURRENCE_CHUNK, seq_len) * (dk + dv))


class MLSTMLayerV1(nn.Module):
    """The v1 mLSTM layer (pre-up-projection): x [B, T, D] -> [B, T, D] (package docstring)."""

    def __init__(self, cfg: XLSTMConfig):
        super().__init__()
        d, heads = cfg.d_model, cfg.n_heads
        inner = round_up(cfg.proj_factor * d, cfg.round_to)
        if inner % heads or inner % cfg.qkv_blocksize:
            raise ValueError(f"xlstm: inner width {inner} must be a multiple of n_heads={heads} and "
                             f"qkv_blocksize={cfg.qkv_blocksize}")
        self.inner, self.heads, self.conv_width = inner, heads, cfg.conv_width
        self.impl, self.eps = cfg.kernel_impl, cfg.mlstm_eps
        small = small_init_std(d)
        self.proj_up = TruncNormalLinear(d, 2 * inner, small)
        self.conv = ShortConv(inner, cfg.conv_width)
        blocks = inner // cfg.qkv_blocksize
        self.q_proj = HeadwiseLinear(inner, blocks, small)
        self.k_proj = HeadwiseLinear(inner, blocks, small)
        self.v_proj = HeadwiseLinear(inner, blocks, small)
        self.igate = GateLinear(3 * inner, heads, lambda b: nn.init.normal_(b, std=0.1))
        self.fgate = GateLinear(3 * inner, heads, forget_bias_linspace)
        self.norm = GroupLayerNorm(inner, heads, norm_eps(cfg), offset=True)
        self.skip = nn.Parameter(torch.ones(inner))
        self.proj_down = TruncNormalLinear(inner, d, wang_init_std(d, cfg.n_layers))

    def forward(self, x: torch.Tensor, resets: Optional[torch.Tensor], state: Optional[LayerState],
                return_state: bool) -> tuple[torch.Tensor, Optional[LayerState]]:
        B, T, _ = x.shape
        x_m, z = self.proj_up(x).split(self.inner, dim=-1)
        c, conv_history = self.conv(x_m, resets, None if state is None else state["conv"])
        c = F.silu(c)
        q, k, v = self.q_proj(c), self.k_proj(c), self.v_proj(x_m)
        gate_input = torch.cat([q, k, v], dim=-1)
        heads = (B, T, self.heads, self.inner // self.heads)
        h, final = mlstm(q.view(heads), k.view(heads), v.view(heads), self.igate(gate_input),
                         self.fgate(gate_input), initial_state=mlstm_state(state),
                         output_final_state=return_state, resets=resets, impl=self.impl, eps=self.eps)
        h = (self.norm(h.reshape(B, T, self.inner)) + self.skip * c) * F.silu(z)
        new_state = {**mlstm_state_dict(final), "conv": conv_history} if return_state else None
        return self.proj_down(h), new_state

    def init_state(self, batch_size: int, dtype: torch.dtype, device) -> LayerState:
        dh = self.inner // self.heads
        return {**zero_mlstm_state(batch_size, self.heads, dh, dh, dtype, device),
                "conv": torch.zeros(batch_size, self.conv_width - 1, self.inner, dtype=dtype, device=device)}

    def flops_per_token(self, seq_len: int) -> float:
        d, inner, dh = self.proj_up.in_features, self.inner, self.inner // self.heads
        projections = 2 * d * 2 * inner + 2 * inner * d + 3 * self.q_proj.flops_per_token() + 2 * 2 * 3 * inner * self.heads
        return projections + 2 * self.conv_width * inner + mlstm_flops(self.heads, dh, dh, seq_len) + 8 * inner


class MLSTMLayer7B(nn.Module):
    """The xLSTM-7B mLSTM layer: u [B, T, D] -> [B, T, D] (package docstring)."""

    def __init__(self, cfg: XLSTMConfig):
        super().__init__()
        d, heads = cfg.d_model, cfg.n_heads
        self.qk_dim, self.v_dim = int(d * cfg.qk_dim_factor), int(d * cfg.v_dim_factor)
        if self.qk_dim % heads or self.v_dim % heads:
            raise ValueError(f"xlstm: q/k width {self.qk_dim} and v width {self.v_dim} must be multiples "
                             f"of n_heads={heads}")
        self.heads, self.impl, self.eps, self.gate_soft_cap = heads, cfg.kernel_impl, cfg.mlstm_eps, cfg.gate_soft_cap
        small = small_init_std(d)
        self.q = TruncNormalLinear(d, self.qk_dim, small)
        self.k = TruncNormalLinear(d, self.qk_dim, small)
        self.v = TruncNormalLinear(d, self.v_dim, small)
        self.o_gate = TruncNormalLinear(d, self.v_dim, small)
        self.igate = GateLinear(d, heads, lambda b: b.fill_(-10.0))
        self.fgate = GateLinear(d, heads, forget_bias_linspace)
        self.norm = GroupLayerNorm(self.v_dim, heads, norm_eps(cfg))
        self.out_proj = TruncNormalLinear(self.v_dim, d, wang_init_std(d, cfg.n_layers))

    def forward(self, u: torch.Tensor, resets: Optional[torch.Tensor], state: Optional[LayerState],
                return_state: bool) -> tuple[torch.Tensor, Optional[LayerState]]:
        B, T, _ = u.shape
        q = self.q(u).view(B, T, self.heads, -1)
        k = self.k(u).view(B, T, self.heads, -1)
        v = self.v(u).view(B, T, self.heads, -1)
        i = soft_cap(self.igate(u), self.gate_soft_cap)
        f = soft_cap(self.fgate(u), self.gate_soft_cap)
        h, final = mlstm(q, k, v, i, f, initial_state=mlstm_state(state), output_final_state=return_state,
                         resets=resets, impl=self.impl, eps=self.eps)
        y = self.out_proj(torch.sigmoid(self.o_gate(u)) * self.norm(h.reshape(B, T, self.v_dim)))
        return y, (mlstm_state_dict(final) if return_state else None)

    def init_state(self, batch_size: int, dtype: torch.dtype, device) -> LayerState:
        h = self.heads
        return zero_mlstm_state(batch_size, h, self.qk_dim // h, self.v_dim // h, dtype, device)

    def flops_per_token(self, seq_len: int) -> float:
        d, h = self.q.in_features, self.heads
        projections = 2 * d * (2 * self.qk_dim + 3 * self.v_dim + 2 * h)
        return projections + mlstm_flops(h, self.qk_dim // h, self.v_dim // h, seq_len) + 8 * self.v_dim
