"""xLSTM (Beck et al., 2024) and the xLSTM-7B architecture (Beck et al., 2025), family ``xlstm``.

``architecture="v1"``: the paper's xLSTM[a:b], a stack of pre-LayerNorm residual blocks of two
kinds (``block_types`` repeated over depth, or explicit ``slstm_at`` positions), ending with a
LayerNorm and the output head. As the ``xlstm`` package's ``xLSTMLMModel``, every LayerNorm has no
bias and stores its weight as w - 1 (y = LN(x) * (1 + w)), eps 1e-5.

mLSTM block (pre-up-projection), for x [B, T, D], inner width I = round_up(proj_factor * D):

    x_m, z = split(W_up LN(x))                     [B, T, I] each
    c = silu(Conv1D_4(x_m))                        causal depthwise conv, resets at documents
    q = Q c,  k = K c,  v = V x_m                  block-diagonal maps (blocks of qkv_blocksize)
    i = W_i [q, k, v] + b_i,  f = W_f [q, k, v] + b_f          [B, T, H] gate preactivations
    h = mLSTM(q, k, v, i, f)                       H heads of width I / H (recurlm.kernels.mlstm)
    y = W_down ((GroupNorm_H(h) + s * c) * silu(z))            s: learnable skip [I]
    x = x + y

sLSTM block (post-up-projection), heads Hs (``slstm_heads``):

    u = LN(x),  c = silu(Conv1D_4(u))
    i, f = R_i c, R_f c;   z, o = R_z u, R_o u     block-diagonal (Hs blocks), no bias
    h = sLSTM(i, f, z, o)                          exponential input gate, per-head recurrence
    x = x + GroupNorm_Hs(h)
    x = x + W_down(gelu(W_g LN(x)) * W_u LN(x))    gated MLP of width round_up(slstm_ffn_factor D)

with the sLSTM cell per head (recurlm.kernels.slstm), gates (i, f, z, o) + bias + R h_{t-1}:
m_t = max(i_t, log sigmoid(f_t) + m_{t-1}), c_t = f' c_{t-1} + i' tanh(z_t), n_t = f' n_{t-1} + i',
h_t = sigmoid(o_t) c_t / n_t.

``architecture="xlstm7b"``: the ``xlstm`` package's ``xlstm_large`` model (xLSTM-7B), mLSTM blocks
only, each followed by a SwiGLU FFN, RMSNorm pre-norms, no convolution:

    u = RMSNorm(x)
    q = W_q u [B, T, H, qk_dim_factor D / H],  k = W_k u,  v = W_v u [B, T, H, v_dim_factor D / H]
    i = cap(W_i u + b_i),  f = cap(W_f u + b_f),   cap(a) = g tanh(a / g), g = gate_soft_cap
    h = mLSTM(q, k, v, i, f)
    x = x + W_out(sigmoid(W_o u) * LayerNorm_H(h))             per-head LayerNorm, plain weight
    x = x + W_down(silu(W_g RMSNorm(x)) * W_u RMSNorm(x))      width round_up_7b(ffn_factor D)

ending with an RMSNorm, the head and a logit soft-cap 30 * tanh(logits / 30).

The mLSTM (both architectures), per head with q scaled by K^-1/2: m_t = max(log sigmoid(f_t) +
m_{t-1}, i_t), C_t = f' C_{t-1} + i' k_t v_t^T, n_t = f' n_{t-1} + i' k_t,
h_t = C_t^T q_t / (max(|n_t . q_t|, exp(-m_t)) + eps), with f' = exp(log sigmoid(f_t) + m_{t-1} - m_t),
i' = exp(i_t - m_t).

Document starts (``resets``) restart the convolution windows and the mLSTM / sLSTM states.

State per block (batch first): mLSTM ``C`` [B, H, K, V], ``n`` [B, H, K], ``_m`` [B, H] (float32,
float64 for float64 models) and, in v1, ``conv`` [B, conv_width - 1, I]; sLSTM ``c``, ``n``, ``h``,
``_m`` [B, Hs, D / Hs], ``conv`` [B, conv_width - 1, D] and ``_fresh`` [B] bool (True until the
first token: an sLSTM's fresh state is not the zero state, see ``recurlm.kernels.slstm``).

Initialisation follows the references: small init sqrt(2 / (5 D)) for input projections, Wang's
init 2 / (L sqrt(D)) for output projections (v1, transformers' xLSTM), zero gate weights with
forget-gate biases linspace(3, 6) over heads; v1 input-gate bias N(0, 0.1), xLSTM-7B input-gate
bias -10; sLSTM recurrent weights 0 and forget biases by the paper's power law over depth.
Normal inits are truncated at 3 std, recurlm's default.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from recurlm.kernels.mlstm import MLSTMState, mlstm
from recurlm.kernels.slstm import SLSTMState, slstm
from recurlm.models.base import Block, RecurrentLM
from recurlm.models.config import ModelConfig
from recurlm.models.layers import GatedMLP, RMSNorm, ShortConv, TruncNormalLinear, divide_width, init_normal_
from recurlm.models.state import POSITIVE, REAL, LayerState

ARCHITECTURES = ("v1", "xlstm7b")
BLOCK_KINDS = ("mlstm", "slstm")
RECURRENCE_CHUNK = 64
"""Chunk length of the chunkwise mLSTM (for the FLOP count)."""


@dataclass
class XLSTMConfig(ModelConfig):
    family: str = "xlstm"
    architecture: Optional[str] = None
    """"v1": the paper's mixed mLSTM/sLSTM stack (xlstm package ``xLSTMLMModel``); "xlstm7b":
    mLSTM + SwiGLU blocks with soft-capped gates (``xlstm.xlstm_large``, transformers' xLSTM).
    None: the size preset's (``7b``: xlstm7b), else v1."""
    n_heads: Optional[int] = None
    """Heads of the mLSTM matrix memory (v1 paper: 4; xLSTM-7B: 8)."""
    block_types: List[str] = field(default_factory=lambda: ["mlstm", "slstm"] + ["mlstm"] * 6)
    """v1: block kinds ("mlstm" / "slstm") repeated over depth; the default is 7:1 with the sLSTM
    second in every group of 8 (the xlstm package's examples put it at index 1)."""
    slstm_at: Optional[List[int]] = None
    """v1: explicit indices of the sLSTM blocks (all others mLSTM); when set it replaces block_types."""
    proj_factor: float = 2.0
    """v1 mLSTM: up-projection factor, inner width I = round_up(proj_factor * d_model, round_to)."""
    qkv_blocksize: int = 4
    """v1 mLSTM: width of the diagonal blocks of the q, k, v projections."""
    conv_width: int = 4
    """v1: width of the causal depthwise convolutions (mLSTM and sLSTM)."""
    slstm_heads: int = 4
    """v1 sLSTM: heads of the block-diagonal recurrence and its group norm."""
    slstm_ffn_factor: float = 4.0 / 3.0
    """v1 sLSTM: gated-MLP width factor, width round_up(factor * d_model, round_to) (the paper's 4/3;
    the xlstm package's examples use 1.3, which converted models keep)."""
    slstm_ffn_activation: str = "gelu_exact"
    """v1 sLSTM: gate activation of the gated MLP (the xlstm package uses the exact GeLU)."""
    qk_dim_factor: float = 0.5
    """xlstm7b: query/key width = int(qk_dim_factor * d_model)."""
    v_dim_factor: float = 1.0
    """xlstm7b: value (and output gate) width = int(v_dim_factor * d_model)."""
    ffn_factor: float = 2.667
    """xlstm7b: SwiGLU width factor, width ffn_factor * d_model rounded up to round_to (see round_up_7b)."""
    round_to: int = 64
    """Up-projection widths (v1 mLSTM inner, sLSTM MLP, xlstm7b FFN) are rounded up to multiples of this."""
    gate_soft_cap: float = 15.0
    """xlstm7b: input/forget gate preactivations are g * tanh(a / g); 0 disables."""
    logit_softcap: Optional[float] = None
    """Logits are c * tanh(logits / c); None = architecture default (v1: none, xlstm7b: 30); 0 disables."""
    norm_eps: Optional[float] = None
    """Epsilon of every norm; None = architecture default (v1: 1e-5 as the xlstm LayerNorm, xlstm7b: 1e-6)."""
    mlstm_eps: float = 1e-6
    """Epsilon added to the mLSTM denominator."""


def architecture(cfg: XLSTMConfig) -> str:
    """The architecture ``cfg`` builds: its own (``apply_preset`` has filled in the size preset's), else v1."""
    return cfg.architecture or "v1"


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


def norm_eps(cfg: XLSTMConfig) -> float:
    return cfg.norm_eps if cfg.norm_eps is not None else (1e-5 if architecture(cfg) == "v1" else 1e-6)


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


# ---------------------------------------------------------------------------------------------------
# v1: mLSTM and sLSTM layers

class MLSTMLayerV1(nn.Module):
    """The v1 mLSTM layer (pre-up-projection): x [B, T, D] -> [B, T, D] (module docstring)."""

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


def slstm_forget_bias(head_dim: int, block_idx: int, n_layers: int) -> torch.Tensor:
    """The xLSTM "powerlaw_blockdependent" forget-gate bias per head unit: -(-5 + 12 (j / (E - 1))^p),
    p = 0.3 + 1.3 * block_idx / (L - 1), from +5 (slow forgetting) down to -7; deeper blocks keep
    more units slow."""
    ratio = block_idx / (n_layers - 1) if n_layers > 1 else 0.0
    return -(-5.0 + 12.0 * (torch.arange(head_dim) / max(head_dim - 1, 1)) ** (0.3 + 1.3 * ratio))


class SLSTMLayer(nn.Module):
    """The v1 sLSTM layer: u [B, T, D] -> GroupNorm(sLSTM(gates)) [B, T, D] (module docstring)."""

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


# ---------------------------------------------------------------------------------------------------
# xLSTM-7B: mLSTM layer

class MLSTMLayer7B(nn.Module):
    """The xLSTM-7B mLSTM layer: u [B, T, D] -> [B, T, D] (module docstring)."""

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


# ---------------------------------------------------------------------------------------------------
# blocks and model

class XLSTMBlock(Block):
    """x + mixer(norm(x)), then (sLSTM and xLSTM-7B blocks) x + FFN(ffn_norm(x)).

    kind "mlstm" (v1: no FFN), "slstm" (v1: GeLU gated MLP) or "mlstm7b" (SwiGLU FFN)."""

    def __init__(self, cfg: XLSTMConfig, kind: str, block_idx: int):
        super().__init__()
        d, eps, self.kind = cfg.d_model, norm_eps(cfg), kind
        # C, c, h and the mLSTM's n are content; the sLSTM's normaliser n must stay positive (h = c / n);
        # the causal conv buffer holds recent tokens
        self.state_kinds = {"conv": REAL, **({"n": POSITIVE} if kind == "slstm" else {})}
        if kind == "mlstm7b":
            self.mixer_norm, self.ffn_norm = RMSNorm(d, eps), RMSNorm(d, eps)
            self.mixer = MLSTMLayer7B(cfg)
            hidden = round_up_7b(cfg.ffn_factor * d, cfg.round_to)
            self.ffn = GatedMLP(d, hidden, "silu", std=small_init_std(d), out_std=wang_init_std(hidden, cfg.n_layers))
            return
        self.mixer_norm = GroupLayerNorm(d, eps=eps, offset=True)
        if kind == "mlstm":
            self.mixer, self.ffn_norm, self.ffn = MLSTMLayerV1(cfg), None, None
        else:
            self.mixer = SLSTMLayer(cfg, block_idx)
            self.ffn_norm = GroupLayerNorm(d, eps=eps, offset=True)
            self.ffn = GatedMLP(d, round_up(cfg.slstm_ffn_factor * d, cfg.round_to), cfg.slstm_ffn_activation,
                                std=small_init_std(d), out_std=wang_init_std(d, cfg.n_layers))

    def forward(self, x, resets, state, return_state):
        y, new_state = self.mixer(self.mixer_norm(x), resets, state, return_state)
        x = x + y
        if self.ffn is not None:
            x = x + self.ffn(self.ffn_norm(x))
        return x, new_state

    def init_state(self, batch_size: int, device=None) -> LayerState:
        return self.mixer.init_state(batch_size, self.mixer_norm.weight.dtype, device)

    def flops_per_token(self, seq_len: int) -> float:
        return self.mixer.flops_per_token(seq_len) + (0 if self.ffn is None else self.ffn.flops_per_token())


def block_kinds(cfg: XLSTMConfig) -> list[str]:
    """The kind of every block: "mlstm7b" for xlstm7b; v1 from slstm_at or the block_types pattern."""
    if architecture(cfg) not in ARCHITECTURES:
        raise ValueError(f"xlstm: architecture must be one of {ARCHITECTURES}, got {cfg.architecture!r}")
    if architecture(cfg) == "xlstm7b":
        return ["mlstm7b"] * cfg.n_layers
    if cfg.slstm_at is not None:
        bad = [i for i in cfg.slstm_at if not 0 <= i < cfg.n_layers]
        if bad:
            raise ValueError(f"xlstm: slstm_at {bad} outside 0..{cfg.n_layers - 1}")
        return ["slstm" if i in cfg.slstm_at else "mlstm" for i in range(cfg.n_layers)]
    unknown = sorted(set(cfg.block_types) - set(BLOCK_KINDS))
    if not cfg.block_types or unknown:
        raise ValueError(f"xlstm: block_types must be a non-empty list of {BLOCK_KINDS}, got {cfg.block_types}")
    return [cfg.block_types[i % len(cfg.block_types)] for i in range(cfg.n_layers)]


class XLSTMLM(RecurrentLM):
    """xLSTM v1 (mixed mLSTM/sLSTM) or xLSTM-7B (``architecture``)."""

    def __init__(self, cfg: XLSTMConfig):
        kinds = block_kinds(cfg)
        eps = norm_eps(cfg)
        v1 = architecture(cfg) == "v1"
        final_norm = GroupLayerNorm(cfg.d_model, eps=eps, offset=True) if v1 else RMSNorm(cfg.d_model, eps)
        softcap = cfg.logit_softcap if cfg.logit_softcap is not None else (None if v1 else 30.0)
        super().__init__(cfg, [XLSTMBlock(cfg.for_layer(i), kind, i) for i, kind in enumerate(kinds)], final_norm,
                         logit_softcap=softcap or None)


CONFIG = XLSTMConfig
MODEL = XLSTMLM
