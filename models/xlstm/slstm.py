"""The sLSTM layer of xLSTM v1 (package docstring)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from recurlm.kernels.slstm import SLSTMState, slstm
from recurlm.models.layers import ShortConv, divide_width
from recurlm.models.state import LayerState
from recurlm.models.xlstm.config import XLSTMConfig, norm_eps
from recurlm.models.xlstm.layers import GroupLayerNorm, HeadwiseLinear, small_init_std


def slstm_forget_bias(head_dim: int, block_idx: int, n_layers: int) -> torch.Tensor:
    """The xLSTM "powerlaw_blockdependent" forget-gate bias per head unit: -(-5 + 12 (j / (E - 1))^p),
    p = 0.3 + 1.3 * block_idx / (L - 1), from +5 (slow forgetting) down to -7; deeper blocks keep
    more units slow."""
    ratio = block_idx / (n_layers - 1) if n_layers > 1 else 0.0
    return -(-5.0 + 12.0 * (torch.arange(head_dim) / max(head_dim - 1, 1)) ** (0.3 + 1.3 * ratio))


class SLSTMLayer(nn.Module):
    """The v1 sLSTM layer: u [B, T, D] -> GroupNorm(sLSTM(gates)) [B, T, D] (package docstring)."""

    def __init__(self, cfg: XLSTMConfig, block_idx: int):
        super().__init__()
        d, heads = cfg.d_model, cfg.slstm_heads
        self.d_model, self.heads, self.head_dim = d, heads, divide_width("xlstm", d, heads, "slstm_heads")
        self.conv_width, self.impl = cfg.conv_width, cfg.kernel_impl
        small = small_init_std(d)
        self.conv = ShortConv(d, cfg.conv_width)
        self.i_proj = HeadwiseLinear(d, heads, small)
        self.f_proj = HeadwiseLinear(d, heads, small)
        self.z_proj = HeadwiseLinear(d, heads, small)
        self.o_proj = HeadwiseLinear(d, heads, small)
        # R[h, d, g, j]: from unit d of head h to unit j of gate g (i, f, z, o); zero init as xLSTM
        self.R = nn.Parameter(torch.zeros(heads, self.head_dim, 4, self.head_dim))
        self.R._no_weight_decay = True  # as the xlstm package, which decays only "*weight" tensors
        self.bias = nn.Parameter(torch.zeros(4, heads, self.head_dim))
        self.bias._no_weight_decay = True
        with torch.no_grad():
            self.bias[1] = slstm_forget_bias(self.head_dim, block_idx, cfg.n_layers)
        self.norm = GroupLayerNorm(d, heads, norm_eps(cfg), offset=True)

    def forward(self, u: torch.Tensor, resets: Optional[torch.Tensor], state: Optional[LayerState],
                return_state: bool) -> tuple[torch.Tensor, Optional[LayerState]]:
        B, T, D = u.shape
        if state is not None:  # a state that has seen no token is the fresh state, not zeros
            resets = torch.zeros(B, T, dtype=torch.bool, device=u.device) if resets is None else resets.clone()
            resets[:, 0] |= state["_fresh"]
        c, conv_history = self.conv(u, resets, None if state is None else state["conv"])
        c = F.silu(c)
        gates = torch.stack([self.i_proj(c), self.f_proj(c), self.z_proj(u), self.o_proj(u)], dim=2)
        initial = None if state is None else SLSTMState(state["c"], state["n"], state["_m"], state["h"])
        h, final = slstm(gates.view(B, T, 4, self.heads, self.head_dim), self.R, self.bias,
                         initial_state=initial, output_final_state=return_state, resets=resets, impl=self.impl)
        new_state = None
        if return_state:
            new_state = {"c": final.c, "n": final.n, "_m": final.m, "h": final.h, "conv": conv_history,
                         "_fresh": torch.zeros(B, dtype=torch.bool, device=u.device)}
        return self.norm(h.reshape(B, T, D)), new_state

    def init_state(self, batch_size: int, dtype: torch.dtype, device) -> LayerState:
        state_dtype = torch.promote_types(dtype, torch.float32)
        cell = {key: torch.zeros(batch_size, self.heads, self.head_dim, dtype=state_dtype, device=device)
                for key in ("c", "n", "_m", "h")}
        return {**cell, "conv": torch.zeros(batch_size, self.conv_width - 1, self.d_model, dtype=dtype, device=device),
                "_fresh": torch.ones(batch_size, dtype=torch.bool, device=device)}

    def flops_per_token(self, seq_len: int) -> float:
        d = self.d_model
        gates = 4 * self.i_proj.flops_per_token() + 2 * self.R.numel()  # input and recurrent maps
        return gates + 2 * self.conv_width * d + 12 * d
