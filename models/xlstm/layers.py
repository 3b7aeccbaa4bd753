"""The pieces both xLSTM architectures build on: widths, inits, norms, block-diagonal maps and gate
layers (package docstring, "Initialisation")."""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from recurlm.models.layers import init_normal_


def round_up(x: float, multiple: int) -> int:
    """The smallest multiple of ``multiple`` >= x (v1 widths, the xlstm package's ``UpProjConfigMixin``)."""
    return int(math.ceil(x / multiple) * multiple)


def round_up_7b(x: float, multiple: int) -> int:
    """(x + multiple - 1) // multiple * multiple, the xLSTM-7B FFN rounding: for a fractional x it
    rounds down when x exceeds a multiple by less than 1 (384 * 2.6667 = 1024.01 -> 1024)."""
    return int((x + multiple - 1) // multiple * multiple)


def small_init_std(d_model: int) -> float:
    """sqrt(2 / (5 D)) (Nguyen & Salazar, 2019), the xLSTM init of input projections."""
    return math.sqrt(2.0 / (5.0 * d_model))


def wang_init_std(dim: int, n_layers: int) -> float:
    """2 / (L sqrt(dim)) (Wang, GPT-NeoX), the xLSTM init of output projections."""
    return 2.0 / n_layers / math.sqrt(dim)


def soft_cap(x: torch.Tensor, cap: float) -> torch.Tensor:
    return cap * torch.tanh(x / cap) if cap else x


class GroupLayerNorm(nn.Module):
    """LayerNorm without bias over ``groups`` equal slices of the last dim: x [..., G * E] -> same.

    groups = 1 is a plain LayerNorm; groups = heads is xLSTM's multi-head (group) norm. With
    ``offset`` the weight is stored as w - 1 (the xlstm package's v1 convention). Computed in float32
    (float64 for float64 inputs)."""

    def __init__(self, dim: int, groups: int = 1, eps: float = 1e-5, offset: bool = False):
        super().__init__()
        self.groups, self.eps, self.offset = groups, eps, offset
        self.weight = nn.Parameter(torch.zeros(dim) if offset else torch.ones(dim))
        self.weight._no_weight_decay = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.to(torch.promote_types(x.dtype, torch.float32)).unflatten(-1, (self.groups, -1))
        y = F.layer_norm(xf, xf.shape[-1:], eps=self.eps).flatten(-2)
        w = self.weight.to(y.dtype) + 1.0 if self.offset else self.weight.to(y.dtype)
        return (y * w).to(x.dtype)


class HeadwiseLinear(nn.Module):
    """Block-diagonal linear map: x [..., G * E] -> [..., G * E], weight [G, E_out, E_in] (the xlstm
    package's ``LinearHeadwiseExpand`` layout), normal init with std ``std``."""

    def __init__(self, dim: int, blocks: int, std: float, bias: bool = False):
        super().__init__()
        if dim % blocks:
            raise ValueError(f"xlstm: width {dim} is not a multiple of {blocks} blocks")
        self.blocks = blocks
        self.weight = nn.Parameter(torch.empty(blocks, dim // blocks, dim // blocks))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None
        with torch.no_grad():
            init_normal_(self.weight, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("...gi,goi->...go", x.unflatten(-1, (self.blocks, -1)), self.weight).flatten(-2)
        return y if self.bias is None else y + self.bias

    def flops_per_token(self) -> int:
        return 2 * self.weight.numel()


class GateLinear(nn.Linear):
    """Gate preactivation layer: zero weight, bias filled by ``fill_bias`` (in the constructor, for ZeRO-3)."""

    def __init__(self, d_in: int, d_out: int, fill_bias: Callable[[torch.Tensor], object]):
        super().__init__(d_in, d_out, bias=True)
        with torch.no_grad():
            self.weight.zero_()
            fill_bias(self.bias)


def forget_bias_linspace(bias: torch.Tensor) -> None:
    """Forget-gate biases linspace(3, 6) over heads (sigmoid(f) between 0.95 and 0.998)."""
    bias.copy_(torch.linspace(3.0, 6.0, bias.numel()))
