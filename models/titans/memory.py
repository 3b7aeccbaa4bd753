"""The Titans neural long-term memory (package docstring, "Neural long-term memory")."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from recurlm.kernels.titans_memory import TitansMemoryState, flops as memory_flops, titans_memory
from recurlm.kernels.titans_memory.common import memory_forward
from recurlm.models.layers import RMSNorm, ShortConv, TruncNormalLinear, divide_width
from recurlm.models.titans.config import TitansConfig
from recurlm.models.titans.segments import Carry


def l2norm(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1, eps=1e-6)


class NeuralMemory(nn.Module):
    """The Titans long-term memory (package docstring): projections, gates, initial memory, output."""

    def __init__(self, cfg: TitansConfig):
        super().__init__()
        d, h = cfg.d_model, cfg.memory_heads
        self.n_heads, self.head_dim = h, divide_width("titans", d, h, "memory_heads")
        if cfg.memory_depth not in (1, 2):
            raise ValueError(f"titans: memory_depth must be 1 or 2, got {cfg.memory_depth}")
        self.chunk_size = cfg.memory_chunk_size
        self.activation, self.impl, self.max_lr = cfg.memory_activation, cfg.kernel_impl, cfg.memory_max_lr
        self.qk_l2norm, self.qkv_silu = cfg.memory_qk_l2norm, cfg.memory_qkv_silu
        self.q_proj, self.k_proj, self.v_proj = (TruncNormalLinear(d, d, cfg.init_std) for _ in range(3))
        self.convs = nn.ModuleDict({n: ShortConv(d, cfg.conv_width) for n in "qkv"}) if cfg.memory_conv else None
        # rows [theta | eta | alpha], H each; biases set the initial gates
        logit = lambda p: math.log(p / (1 - p))
        gate_bias = torch.zeros(3 * h)
        gate_bias[h:2 * h], gate_bias[2 * h:] = logit(cfg.memory_momentum_init), logit(cfg.memory_forget_init)
        self.gate_proj = TruncNormalLinear(d, 3 * h, cfg.init_std, bias_init=gate_bias)
        dh, e = self.head_dim, cfg.memory_expansion * self.head_dim
        shapes = [(dh, dh)] if cfg.memory_depth == 1 else [(dh, e), (e, dh)]
        self.init_weights = nn.ParameterList()
        for din, dout in shapes:
            w = nn.Parameter(torch.empty(h, din, dout))
            with torch.no_grad():
                nn.init.normal_(w, std=din ** -0.5)
            self.init_weights.append(w)
        self.out_norm = RMSNorm(d, cfg.norm_eps)
        self.out_proj = TruncNormalLinear(d, d, cfg.init_std / (2 * cfg.n_layers) ** 0.5)

    def fresh(self, dtype: torch.dtype, device, streams: tuple[str, ...] = ("q", "k", "v")) -> Carry:
        """The carry at a document start (batch dim 1): initial memory, zero momentum, empty conv histories."""
        state_dtype = torch.promote_types(dtype, torch.float32)
        carry = {}
        for layer, w in enumerate(self.init_weights):
            carry[f"mem_w{layer}"] = w.to(device=device, dtype=state_dtype)[None]
            carry[f"mem_s{layer}"] = torch.zeros(1, *w.shape, dtype=state_dtype, device=device)
        if self.convs is not None:
            width, d = self.convs["q"].width, self.q_proj.in_features
            for stream in streams:
                carry[f"mem_conv_{stream}"] = torch.zeros(1, width - 1, d, dtype=dtype, device=device)
        return carry

    def _project(self, u: torch.Tensor, name: str, carry: Carry, stream: str) -> tuple[torch.Tensor, Carry]:
        """Projection ``name`` (q, k, v) of u [B, C, d] through its conv (history ``mem_conv_<stream>``)
        and SiLU, l2-normalised for q and k -> ([B, C, H, Dh], updated carry entries)."""
        z = getattr(self, f"{name}_proj")(u)
        new = {}
        if self.convs is not None:
            z, new[f"mem_conv_{stream}"] = self.convs[name](z, None, carry[f"mem_conv_{stream}"])
        if self.qkv_silu:
            z = F.silu(z)
        z = z.unflatten(-1, (self.n_heads, self.head_dim))
        return (l2norm(z) if self.qk_l2norm and name != "v" else z), new

    def weights(self, carry: Carry) -> tuple[torch.Tensor, ...]:
        return tuple(carry[f"mem_w{layer}"] for layer in range(len(self.init_weights)))

    def output(self, m: torch.Tensor) -> torch.Tensor:
        """m [B, C, H, Dh] (memory reads) -> W_o RMSNorm(concat heads) [B, C, d]."""
        return self.out_proj(self.out_norm(m.flatten(-2)))

    def retrieve(self, u: torch.Tensor, carry: Carry, stream: str = "q") -> tuple[torch.Tensor, Carry]:
        """Read the memory of ``carry`` (no write) with the queries of u [B, C, d] -> ([B, C, H, Dh], carry)."""
        q, new = self._project(u, "q", carry, stream)
        weights = self.weights(carry)
        m = memory_forward(weights, q.transpose(1, 2).to(weights[0].dtype), self.activation)
        return m.transpose(1, 2).to(u.dtype), {**carry, **new}

    def write_read(self, u: torch.Tensor, carry: Carry) -> tuple[torch.Tensor, Carry]:
        """Write the keys/values of u [B, C, d] into the memory and read it with u's queries after
        each write -> (m [B, C, H, Dh], carry after the segment)."""
        new: Carry = {}
        qkv = []
        for name in "qkv":
            z, entries = self._project(u, name, carry, name)
            qkv.append(z)
            new.update(entries)
        theta, eta, alpha = torch.sigmoid(self.gate_proj(u)).chunk(3, dim=-1)
        depth = len(self.init_weights)
        start = TitansMemoryState(self.weights(carry), tuple(carry[f"mem_s{layer}"] for layer in range(depth)))
        m, final = titans_memory(*qkv, self.max_lr * theta, eta, alpha, initial_state=start,
                                 output_final_state=True, impl=self.impl, chunk_size=self.chunk_size,
                                 activation=self.activation)
        for layer in range(depth):
            new[f"mem_w{layer}"], new[f"mem_s{layer}"] = final.weights[layer], final.momentum[layer]
        return m, {**carry, **new}

    def flops_per_token(self, seq_len: int) -> float:
        d, h, dh = self.q_proj.in_features, self.n_heads, self.head_dim
        depth = len(self.init_weights)
        hidden = self.init_weights[0].shape[-1] if depth == 2 else None
        recurrence = memory_flops(1, seq_len, h, dh, depth, hidden, self.chunk_size) / seq_len
        return 2 * d * (4 * d + 3 * h) + recurrence
