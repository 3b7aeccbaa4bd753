"""The Titans blocks MAC, MAG and MAL (package docstring, "Variants") and the model."""
from __future__ import annotations

from typing import Optional

import torch

from recurlm.kernels.boundaries import positions_from_resets
from recurlm.models.base import Block, RecurrentLM
from recurlm.models.layers import GatedMLP, RMSNorm, TruncNormalLinear
from recurlm.models.state import REAL, RELATIVE, LayerState
from recurlm.models.titans.attention import PersistentAttention, SlidingWindowAttention, attend
from recurlm.models.titans.config import TitansConfig, TitansMACConfig, TitansMAGConfig
from recurlm.models.titans.memory import NeuralMemory
from recurlm.models.titans.segments import Carry, SegmentLayout, scan_segments, segment_layout


class TitansBlock(Block):
    """Shared skeleton: positions, the memory's segment scan, the MLP, states."""

    state_kinds = {**{f"mem_{w}{i}": RELATIVE for w in "ws" for i in range(2)},  # memory_depth is 1 or 2
                   **{f"mem_conv_{s}": REAL for s in ("qx", "q", "k", "v")}, "buffer": REAL, "k": REAL, "v": REAL}
    """Memory weights and momentum are content around their learnt initial value (noise at the
    N(0, 1) scale of a linear state turns the memory MLP's outputs into NaN); conv histories, the
    pending segment and the sliding-window cache hold recent tokens."""

    def __init__(self, cfg: TitansConfig, seg_len: int):
        super().__init__()
        d = cfg.d_model
        self.seg_len = seg_len
        self.memory = NeuralMemory(cfg)
        self.mix_norm = RMSNorm(d, cfg.norm_eps)
        self.mlp_norm = RMSNorm(d, cfg.norm_eps)
        self.mlp = GatedMLP(d, cfg.mlp_hidden, "silu", std=cfg.init_std,
                            out_std=cfg.init_std / (2 * cfg.n_layers) ** 0.5)

    streams: tuple[str, ...] = ("q", "k", "v")
    """Conv histories the block's memory carries (MAC adds the retrieval stream)."""

    def fresh(self, dtype, device) -> Carry:
        return self.memory.fresh(dtype, device, self.streams)

    def segment(self, x: torch.Tensor, carry: Carry) -> tuple[torch.Tensor, Carry]:
        """One segment of the memory path: x [B, C, d] -> ([B, C, d], carry)."""
        raise NotImplementedError

    def scan(self, x: torch.Tensor, positions: torch.Tensor, state: Optional[LayerState],
             return_state: bool, layout: SegmentLayout) -> tuple[torch.Tensor, Optional[LayerState]]:
        return scan_segments(x, positions, state, self.seg_len, self.fresh(x.dtype, x.device), self.segment,
                             return_state, layout)

    def mix(self, x: torch.Tensor, positions: torch.Tensor, state: Optional[LayerState],
            return_state: bool, layout: SegmentLayout) -> tuple[torch.Tensor, LayerState]:
        """The residual updates of the token mixer(s): x [B, T, d] (un-normed) -> (x, state entries)."""
        h, mem_state = self.scan(self.mix_norm(x), positions, state, return_state, layout)
        return x + h, mem_state or {}

    def forward(self, x, resets, state, return_state, layouts: Optional[dict[int, SegmentLayout]] = None):
        """``layouts``: the segment layouts already made in this forward, by segment length (every
        layer of a forward sees the same positions: its state's ``_pos`` equals every other layer's)."""
        B, T, _ = x.shape
        offset = 0 if state is None else state["_pos"]
        positions = positions_from_resets(resets, B, T, offset, device=x.device)
        layouts = {} if layouts is None else layouts
        if self.seg_len not in layouts:
            layouts[self.seg_len] = segment_layout(positions, self.seg_len)
        x, new_state = self.mix(x, positions, state, return_state, layouts[self.seg_len])
        x = x + self.mlp(self.mlp_norm(x))
        return x, ({**new_state, "_pos": positions[:, -1] + 1} if return_state else None)

    def init_state(self, batch_size: int, device=None) -> LayerState:
        dtype = self.mlp_norm.weight.dtype
        carry = {k: v.expand(batch_size, *v.shape[1:]).clone() for k, v in self.fresh(dtype, device).items()}
        d = self.mlp_norm.weight.shape[0]
        return {**carry, "buffer": torch.zeros(batch_size, self.seg_len - 1, d, dtype=dtype, device=device),
                "_pos": torch.zeros(batch_size, dtype=torch.long, device=device)}

    def flops_per_token(self, seq_len: int) -> float:
        return self.memory.flops_per_token(seq_len) + self.mlp.flops_per_token()


class MACBlock(TitansBlock):
    """Memory as context (package docstring): segment attention over [persistent, memory reads, tokens]."""

    streams = ("qx", "q", "k", "v")

    def __init__(self, cfg: TitansMACConfig):
        super().__init__(cfg, cfg.segment_len)
        self.attn = PersistentAttention(cfg)
        self.o_proj = TruncNormalLinear(cfg.d_model, cfg.d_model, cfg.init_std / (2 * cfg.n_layers) ** 0.5)

    def segment(self, x: torch.Tensor, carry: Carry) -> tuple[torch.Tensor, Carry]:
        B, C, _ = x.shape
        a = self.attn
        retrieved, carry = self.memory.retrieve(x, carry, stream="qx")
        h = self.memory.output(retrieved)  # memory tokens [B, C, d], from the memory at the segment start
        positions = torch.arange(C, device=x.device).expand(B, C)  # RoPE is relative: in-segment positions
        q = a.rope(a.heads(a.q_proj(x)), positions)
        tokens = torch.cat([h, x], 1)
        k = a.rope(a.heads(a.k_proj(tokens)), torch.cat([positions, positions], 1))
        v = a.heads(a.v_proj(tokens))
        causal = torch.ones(C, C, dtype=torch.bool, device=x.device).tril()
        allowed = torch.cat([causal, causal], 1).expand(B, C, 2 * C)
        y = self.o_proj(attend(q, k, v, allowed, *a.sinks(), a.head_dim ** -0.5).flatten(-2))
        m, carry = self.memory.write_read(y, carry)
        return y * torch.sigmoid(self.memory.output(m)), carry

    def flops_per_token(self, seq_len: int) -> float:
        c = min(self.seg_len, seq_len)
        d = self.o_proj.in_features
        return (super().flops_per_token(seq_len) + self.memory.flops_per_token(seq_len) / 2  # retrieval read
                + self.attn.flops_per_token(c + 1) + 2 * 2 * d * d)  # 2 (C + 1) / 2 keys; memory tokens' k, v


class MAGBlock(TitansBlock):
    """Memory as gating: W_out(RMSNorm(SWA(x)) * sigmoid(memory(x)))."""

    def __init__(self, cfg: TitansMAGConfig):
        super().__init__(cfg, cfg.memory_chunk_size)
        self.attn = SlidingWindowAttention(cfg)
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.o_proj = TruncNormalLinear(cfg.d_model, cfg.d_model, cfg.init_std / (2 * cfg.n_layers) ** 0.5)

    def segment(self, x: torch.Tensor, carry: Carry) -> tuple[torch.Tensor, Carry]:
        m, carry = self.memory.write_read(x, carry)
        return self.memory.output(m), carry

    def mix(self, x, positions, state, return_state, layout):
        xn = self.mix_norm(x)
        attn, attn_state = self.attn(xn, positions == 0, positions, state, return_state)
        m, mem_state = self.scan(xn, positions, state, return_state, layout)
        h = self.o_proj(self.attn_norm(attn) * torch.sigmoid(m))
        return x + h, {**(mem_state or {}), **attn_state}

    def init_state(self, batch_size: int, device=None) -> LayerState:
        dtype = self.mlp_norm.weight.dtype
        return {**super().init_state(batch_size, device), **self.attn.init_state(batch_size, dtype, device)}

    def flops_per_token(self, seq_len: int) -> float:
        d = self.o_proj.in_features
        return super().flops_per_token(seq_len) + self.attn.flops_per_token(seq_len) + 2 * d * d


class MALBlock(MAGBlock):
    """Memory as layer: x + memory(RMSNorm(x)), then x + W_out SWA(RMSNorm(x)) (``attn_norm`` is
    the attention sublayer's pre-norm here)."""

    def mix(self, x, positions, state, return_state, layout):
        x, mem_state = TitansBlock.mix(self, x, positions, state, return_state, layout)
        attn, attn_state = self.attn(self.attn_norm(x), positions == 0, positions, state, return_state)
        return x + self.o_proj(attn), {**mem_state, **attn_state}


class TitansLM(RecurrentLM):
    BLOCKS = {"titans_mac": MACBlock, "titans_mag": MAGBlock, "titans_mal": MALBlock}

    def __init__(self, cfg: TitansConfig):
        block = self.BLOCKS[cfg.family]
        super().__init__(cfg, [block(cfg.for_layer(i)) for i in range(cfg.n_layers)], RMSNorm(cfg.d_model, cfg.norm_eps))

    def block_extras(self):
        layouts: dict[int, SegmentLayout] = {}  # fresh per call: made by the first block, shared by all
        return [{"layouts": layouts} for _ in self.blocks]
