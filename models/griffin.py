"""Griffin and Hawk (De et al., 2024), as released in RecurrentGemma (Botev et al., 2024).

Both stack pre-norm residual blocks on a token embedding scaled by sqrt(D):

    x = x + temporal_mix(RMSNorm(x))          RMSNorm with the (1 + w) convention
    x = x + W_down(gelu(W_gate x') * W_up x')  x' = RMSNorm(x); gated MLP of width M D, M = 3

and end with an RMSNorm and the tied embedding as output head, whose logits are soft-capped:
logits = c tanh(logits / c), c = 30. Hawk's temporal mixing is always the recurrent block; Griffin
repeats (recurrent, recurrent, attention) (``block_types``).

Recurrent block, for x [B, T, D] and RNN width R (``lru_width``):

    y = gelu(W_y x)                      [B, T, R]  (gate branch)
    u = Conv1D_4(W_x x)                  [B, T, R]  (causal depthwise, width 4)
    h = RG-LRU(u)                        [B, T, R]
    out = W_out (h * y)                  [B, T, D]

RG-LRU (per channel; the gates are block-diagonal linear maps with ``lru_heads`` blocks):

    r_t = sigmoid(W_a u_t + b_a)         recurrence gate
    i_t = sigmoid(W_i u_t + b_i)         input gate
    log a_t = -c r_t softplus(-Λ)        i.e. a_t = sigmoid(Λ)^(c r_t), c = 8, in log space
    h_t = a_t h_{t-1} + sqrt(1 - a_t^2) (i_t u_t)

with sqrt(1 - a_t^2) = sqrt(-expm1(2 log a_t)) (exact near a_t = 1, its derivative capped at 1000
as in RecurrentGemma). At a document start (position 0) the normaliser is 1 and h_{t-1} is dropped,
as RecurrentGemma does for ``segment_pos == 0``. The scan runs in ``recurlm.kernels.linear_scan``.

Eigenvalues: the transition is diag(a_t) with a_t in (0, 1), so parity-like state tracking fails
beyond short lengths like every non-negative diagonal recurrence (Grazzi et al., 2025).
``allow_neg_eigval`` (the option of the same name as RWKV-7's) uses a'_t = 2 a_t - 1 in (-1, 1)
instead, computed as 1 + 2 expm1(log a_t) (exact near a_t = 1). The log-space scan is kept:
``linear_scan`` takes log |a'_t| and the sign, and its chunk and Triton paths run a positive scan
of P_t x_t with the row's sign parity P_t (P_t h_t is an ordinary decaying recurrence), so no
kernel gives up its log-space stability. |a'_t| is floored at 1e-6 (log |a'| >= -13.8): at
a_t = 1/2 exactly the state is dropped either way.

State expansion (``state_expansion`` = f > 1, not in the papers): every channel r keeps f sub-states
h_t[r, k], k < f, each the recurrence above with its own decay Λ[r, k] (Λ[r, 0] = Λ[r]) and the
same gated input i_t u_t, read out as h_t[r] = Σ_k m[r, k] h_t[r, k] with learned mixing weights
m [R, f] initialised to [1, 0, ..., 0]. The state per layer grows f times for (2 f - 1) R
parameters; with m = [1, 0, ...] the block computes exactly what f = 1 computes, which is what
``recurlm.models.expand_state`` relies on to enlarge a trained model's state.

Attention block: local (sliding-window) multi-query attention, H query heads of width D / H sharing
``n_kv_heads`` (1) key/value heads, RoPE on the first half of every head (rotate-half pairing inside
that half), scale (D / H)^-0.5, each query seeing itself and the ``attention_window`` - 1 tokens
before it in its document (``recurlm.kernels.local_attention``). Positions restart at document
starts.

State per layer (batch first): recurrent blocks ``h`` [B, R f] (float32; [B, R, f] flattened, f =
``state_expansion``), ``conv`` [B, 3, R] (the last inputs of the convolution); attention blocks
``k``, ``v`` [B, window - 1, n_kv_heads, D / H] (keys after RoPE) and ``_valid`` [B, window - 1];
every block ``_pos`` [B] int64, the position inside its document of the next token (0: the next
token starts a document).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from recurlm.kernels.boundaries import positions_from_resets
from recurlm.kernels.linear_scan import linear_scan
from recurlm.kernels.local_attention import LocalAttentionState, local_attention
from recurlm.models.base import Block, RecurrentLM
from recurlm.models.config import ModelConfig
from recurlm.models.layers import (ACTIVATIONS, GatedMLP, RMSNorm, ShortConv, TruncNormalLinear,
                                   rotate_half_rope)
from recurlm.models.state import REAL, EntryKind, LayerState

BLOCK_TYPES = ("recurrent", "attention")
MAX_SQRT_GRADIENT = 1000.0
"""Cap of d sqrt(z) / dz in the RG-LRU input normaliser (RecurrentGemma's ``_MAX_SQRT_GRADIENT``)."""


@dataclass
class GriffinConfig(ModelConfig):
    family: str = "griffin"
    n_heads: Optional[int] = None
    """Query heads of the local attention (head width d_model / n_heads)."""
    lru_width: Optional[int] = None
    """Width R of the recurrent block (the RG-LRU state per layer); the paper uses about 4/3 d_model."""
    lru_heads: Optional[int] = None
    """Diagonal blocks of the RG-LRU gates; None = n_heads (as RecurrentGemma)."""
    mlp_hidden: Optional[int] = None
    """Width of each branch of the gated MLP (3 * d_model in the papers; HF's intermediate_size // 2)."""
    block_types: List[str] = field(default_factory=lambda: ["recurrent", "recurrent", "attention"])
    """Temporal-mixing pattern repeated over depth: "recurrent" (RG-LRU block) or "attention" (local MQA)."""
    attention_window: Optional[int] = None
    """Tokens each query sees, itself included (= HF attention_window_size = DeepMind window + 1);
    None = 2048."""
    n_kv_heads: int = 1
    """Key/value heads of the local attention (1 = multi-query attention, as Griffin)."""
    rope_fraction: float = 0.5
    """Fraction of each attention head rotated by RoPE (RecurrentGemma: the first half)."""
    rope_theta: float = 10_000.0
    """RoPE base wavelength."""
    conv_width: int = 4
    """Temporal width of the causal depthwise convolution in the recurrent block."""
    rglru_c: float = 8.0
    """Constant c in a_t = sigmoid(Λ)^(c r_t)."""
    a_init_min: float = 0.9
    """a = sigmoid(Λ) is initialised with a^2 uniform in [a_init_min^2, a_init_max^2]."""
    a_init_max: float = 0.999
    """Upper end of the initial range of a = sigmoid(Λ)."""
    state_expansion: int = 1
    """Sub-states f per RG-LRU channel (module docstring): each has its own decay (initialised on
    the same ring) and is fed the same gated input; learned mixing weights (initialised to
    [1, 0, ..., 0]) read them out. The recurrent state is f R per layer for (2 f - 1) R extra
    parameters; 1 = the paper's RG-LRU."""
    allow_neg_eigval: bool = False
    """Signed RG-LRU transition (Grazzi et al., 2025, "Unlocking State-Tracking in Linear RNNs Through
    Negative Eigenvalues", as they do for Mamba): a'_t = 2 a_t - 1 in (-1, 1) instead of a_t in
    (0, 1), normaliser sqrt(1 - a'_t^2). The scan keeps log |a'_t| and passes the sign separately
    (``linear_scan(sign=...)``, module docstring). Not in the papers of Griffin / Hawk."""
    logit_softcap: float = 30.0
    """Logits are c * tanh(logits / c); 0 disables."""
    scale_embeddings: bool = True
    """Multiply the embedding by sqrt(d_model), rounded to bfloat16 as RecurrentGemma does."""
    tie_embeddings: bool = True
    """Share the input embedding with the output head (Griffin, RecurrentGemma)."""
    init_std: float = 0.02
    """Std of the embedding (and of an untied head); ~1/sqrt(d_model) of RecurrentGemma at d = 2560.
    Every other projection uses Griffin's fan-in init: std sqrt(1 / fan_in), and
    sqrt(2 / (n_layers * fan_in)) for the last projection of each branch."""


@dataclass
class HawkConfig(GriffinConfig):
    family: str = "hawk"
    block_types: List[str] = field(default_factory=lambda: ["recurrent"])
    """Hawk: recurrent blocks only."""


class SqrtBoundedGrad(torch.autograd.Function):
    """sqrt(z) whose derivative 1 / (2 sqrt(z)) is capped at MAX_SQRT_GRADIENT (z -> 0 when a -> 1)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(z)
        return z.sqrt()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (z,) = ctx.saved_tensors
        return grad * torch.rsqrt((4.0 * z).clamp(min=MAX_SQRT_GRADIENT ** -2))


class BlockDiagonalGate(nn.Module):
    """sigmoid(x W + b) with W block-diagonal: x [..., H * E] -> [..., H * E], W [H, E, E], b [H, E]."""

    def __init__(self, width: int, blocks: int):
        super().__init__()
        self.blocks, self.block_width = blocks, width // blocks
        self.weight = nn.Parameter(torch.empty(blocks, self.block_width, self.block_width))
        self.bias = nn.Parameter(torch.zeros(blocks, self.block_width))
        with torch.no_grad():
            nn.init.normal_(self.weight, std=self.block_width ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xb = x.unflatten(-1, (self.blocks, self.block_width))
        z = torch.einsum("...hi,hij->...hj", xb, self.weight.to(x.dtype)) + self.bias.to(x.dtype)
        return torch.sigmoid(z).flatten(-2)


class RGLRU(nn.Module):
    """Real-Gated Linear Recurrent Unit over [B, T, R] (module docstring for the math)."""

    def __init__(self, cfg: GriffinConfig):
        super().__init__()
        width, heads = cfg.lru_width, cfg.lru_heads or cfg.n_heads
        if width % heads:
            raise ValueError(f"griffin: lru_width={width} must be a multiple of lru_heads={heads}")
        if cfg.state_expansion < 1:
            raise ValueError(f"griffin: state_expansion={cfg.state_expansion} must be >= 1")
        self.c, self.impl, self.sub_states = cfg.rglru_c, cfg.kernel_impl, cfg.state_expansion
        self.allow_neg_eigval = cfg.allow_neg_eigval
        self.input_gate = BlockDiagonalGate(width, heads)
        self.recurrence_gate = BlockDiagonalGate(width, heads)
        # Λ with a = sigmoid(Λ), a^2 ~ U[a_min^2, a_max^2] (uniform on a ring, as the paper)
        self.a_logit = nn.Parameter(self._ring_logits(cfg, width))
        if self.sub_states > 1:
            # Λ[:, 1:] [R, f - 1], the added sub-states' decays; m [R, f] = [1, 0, ..., 0]: the f = 1 function
            self.extra_a_logit = nn.Parameter(self._ring_logits(cfg, width, self.sub_states - 1))
            self.state_mix = nn.Parameter(F.one_hot(torch.zeros(width, dtype=torch.long), self.sub_states).float())
            for p in (self.extra_a_logit, self.state_mix):
                p._no_weight_decay = True  # decay would pull the read-out of sub-state 0 and the Λs to 0

    @staticmethod
    def _ring_logits(cfg: GriffinConfig, *shape: int) -> torch.Tensor:
        """Λ [*shape] with a = sigmoid(Λ), a^2 ~ U[a_init_min^2, a_init_max^2]."""
        a = torch.empty(shape).uniform_(cfg.a_init_min ** 2, cfg.a_init_max ** 2).sqrt()
        return torch.log(a) - torch.log1p(-a)

    def forward(self, u: torch.Tensor, doc_start: torch.Tensor, h0: Optional[torch.Tensor],
                return_state: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """u [B, T, R]; doc_start [B, T] bool (position 0); h0 [B, R f] -> (h [B, T, R] in u.dtype,
        h_{T-1} [B, R f] in float32 (float64 for float64 inputs) if return_state)."""
        uf = u.to(torch.promote_types(u.dtype, torch.float32))
        recurrence, gated = self.recurrence_gate(uf), uf * self.input_gate(uf)
        a_logit, starts = self.a_logit, doc_start[..., None]
        if self.sub_states > 1:  # every channel becomes f channels of the scan: [..., R] -> [..., R, f]
            a_logit = torch.cat([a_logit[:, None], self.extra_a_logit], 1)
            recurrence, gated, starts = recurrence[..., None], gated[..., None], starts[..., None]
        log_a = -self.c * recurrence * F.softplus(-a_logit.to(uf.dtype))
        sign = None
        if self.allow_neg_eigval:
            log_a, sign = signed_transition(log_a)
        normaliser = SqrtBoundedGrad.apply(-torch.expm1(2.0 * log_a))
        x = gated * torch.where(starts, 1.0, normaliser)
        if h0 is not None:
            h0 = h0.view(h0.shape[0], *log_a.shape[2:])
        h, h_last = linear_scan(x, log_a, h0, return_state, resets=doc_start, impl=self.impl, sign=sign)
        if self.sub_states > 1:
            h = torch.einsum("btrk,rk->btr", h, self.state_mix.to(h.dtype))
            h_last = None if h_last is None else h_last.flatten(1)
        return h.to(u.dtype), h_last

    def flops_per_token(self) -> float:
        width = self.a_logit.numel()
        gates = 2 * 2 * width * self.input_gate.block_width
        mix = 2 * width * self.sub_states if self.sub_states > 1 else 0
        return gates + 12 * width * self.sub_states + mix  # gates + elementwise (softplus, exp, sqrt, scan)


def signed_transition(log_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log a [...] (a in (0, 1)) -> (log |a'|, sign(a')) of a' = 2 a - 1 in (-1, 1), both finite
    (|a'| floored at 1e-6; the branch not taken never sees a log of a non-positive number)."""
    twice_gap = 2.0 * torch.expm1(log_a)  # 2 (a - 1) in (-2, 0): a' = 1 + 2 (a - 1)
    positive = twice_gap > -1.0
    log_abs = torch.where(positive, torch.log1p(twice_gap.clamp_min(-1.0 + 1e-6)),
                          torch.log((-1.0 - twice_gap).clamp_min(1e-6)))
    return log_abs, torch.where(positive, 1.0, -1.0).to(log_a.dtype)


class GriffinConv1D(ShortConv):
    """ShortConv (resets, state) initialised as RecurrentGemma: w ~ N(0, 0.01 / width), b = 0."""

    def __init__(self, dim: int, width: int):
        super().__init__(dim, width, bias=True)
        with torch.no_grad():
            nn.init.normal_(self.weight, std=math.sqrt(0.01 / width))


class RecurrentMixer(nn.Module):
    """Griffin's recurrent block: W_out(RG-LRU(Conv1D(W_x x)) * gelu(W_y x))."""

    def __init__(self, cfg: GriffinConfig):
        super().__init__()
        d, r = cfg.d_model, cfg.lru_width
        self.lru_width, self.conv_width = r, cfg.conv_width
        self.linear_y = TruncNormalLinear(d, r, d ** -0.5, bias=True)
        self.linear_x = TruncNormalLinear(d, r, d ** -0.5, bias=True)
        self.conv = GriffinConv1D(r, cfg.conv_width)
        self.rg_lru = RGLRU(cfg)
        self.linear_out = TruncNormalLinear(r, d, math.sqrt(2.0 / (cfg.n_layers * r)), bias=True)

    def forward(self, x: torch.Tensor, doc_start: torch.Tensor, positions: torch.Tensor,
                state: Optional[LayerState], return_state: bool) -> tuple[torch.Tensor, LayerState]:
        y = ACTIVATIONS["gelu"](self.linear_y(x))
        u, conv_history = self.conv(self.linear_x(x), doc_start, None if state is None else state["conv"])
        h, h_last = self.rg_lru(u, doc_start, None if state is None else state["h"], return_state)
        return self.linear_out(h * y), ({"h": h_last, "conv": conv_history} if return_state else {})

    def init_state(self, batch_size: int, dtype: torch.dtype, device) -> LayerState:
        state_dtype = torch.promote_types(dtype, torch.float32)
        h_width = self.lru_width * self.rg_lru.sub_states
        return {"h": torch.zeros(batch_size, h_width, dtype=state_dtype, device=device),
                "conv": torch.zeros(batch_size, self.conv_width - 1, self.lru_width, dtype=dtype, device=device)}

    def flops_per_token(self, seq_len: int) -> float:
        d, r = self.linear_x.in_features, self.lru_width
        return 2 * 3 * d * r + 2 * self.conv_width * r + self.rg_lru.flops_per_token() + 2 * r


class LocalAttentionMixer(nn.Module):
    """Local multi-query attention with partial RoPE (module docstring)."""

    def __init__(self, cfg: GriffinConfig):
        super().__init__()
        d, h = cfg.d_model, cfg.n_heads
        if d % h or h % cfg.n_kv_heads:
            raise ValueError(f"griffin: d_model={d} must be a multiple of n_heads={h}, itself a multiple "
                             f"of n_kv_heads={cfg.n_kv_heads}")
        self.n_heads, self.n_kv_heads, self.head_dim = h, cfg.n_kv_heads, d // h
        self.rotary_dim = 2 * int(self.head_dim * cfg.rope_fraction / 2)
        self.rope_theta, self.window, self.impl = cfg.rope_theta, cfg.attention_window or 2048, cfg.kernel_impl
        self.q_proj = TruncNormalLinear(d, h * self.head_dim, d ** -0.5)
        self.k_proj = TruncNormalLinear(d, self.n_kv_heads * self.head_dim, d ** -0.5)
        self.v_proj = TruncNormalLinear(d, self.n_kv_heads * self.head_dim, d ** -0.5)
        self.o_proj = TruncNormalLinear(h * self.head_dim, d, math.sqrt(2.0 / (cfg.n_layers * d)), bias=True)

    def forward(self, x: torch.Tensor, doc_start: torch.Tensor, positions: torch.Tensor,
                state: Optional[LayerState], return_state: bool) -> tuple[torch.Tensor, LayerState]:
        B, T, _ = x.shape
        rope = dict(positions=positions, rotary_dim=self.rotary_dim, theta=self.rope_theta)
        q = rotate_half_rope(self.q_proj(x).view(B, T, self.n_heads, self.head_dim), **rope)
        k = rotate_half_rope(self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim), **rope)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        cache = None if state is None else LocalAttentionState(state["k"], state["v"], state["_valid"])
        o, cache = local_attention(q, k, v, self.window, self.head_dim ** -0.5, initial_state=cache,
                                   output_final_state=return_state, resets=doc_start, impl=self.impl)
        new_state = {"k": cache.k, "v": cache.v, "_valid": cache.valid} if return_state else {}
        return self.o_proj(o.reshape(B, T, -1)), new_state

    def init_state(self, batch_size: int, dtype: torch.dtype, device) -> LayerState:
        cache = LocalAttentionState.empty(batch_size, self.window, self.n_kv_heads, self.head_dim,
                                          torch.promote_types(dtype, torch.float32), device)
        return {"k": cache.k, "v": cache.v, "_valid": cache.valid}

    def flops_per_token(self, seq_len: int) -> float:
        d, hd = self.q_proj.in_features, self.head_dim
        projections = 2 * d * hd * (2 * self.n_heads + 2 * self.n_kv_heads)
        w, t = self.window, seq_len
        mean_context = (t + 1) / 2 if t <= w else (w * (w + 1) / 2 + (t - w) * w) / t
        return projections + 2 * 2 * self.n_heads * hd * mean_context


class GriffinBlock(Block):
    """Residual block: x + mix(RMSNorm(x)), then x + GeGLU-MLP(RMSNorm(x))."""

    state_kinds = {"h": EntryKind("gaussian", None), "conv": REAL, "k": REAL, "v": REAL}
    """The RG-LRU vector is content (one distribution per layer: it has no heads); the conv buffer
    and the local-attention key/value cache hold recent tokens themselves."""

    def __init__(self, cfg: GriffinConfig, kind: str):
        super().__init__()
        d = cfg.d_model
        self.kind = kind
        self.temporal_norm = RMSNorm(d, cfg.norm_eps, offset=True)
        self.mixer = RecurrentMixer(cfg) if kind == "recurrent" else LocalAttentionMixer(cfg)
        self.mlp_norm = RMSNorm(d, cfg.norm_eps, offset=True)
        self.mlp = GatedMLP(d, cfg.mlp_hidden, "gelu", bias=True, std=d ** -0.5,
                            out_std=math.sqrt(2.0 / (cfg.n_layers * cfg.mlp_hidden)))

    def forward(self, x, resets, state, return_state):
        B, T, _ = x.shape
        offset = 0 if state is None else state["_pos"]
        positions = positions_from_resets(resets, B, T, offset, device=x.device)
        doc_start = positions == 0
        h, new_state = self.mixer(self.temporal_norm(x), doc_start, positions, state, return_state)
        x = x + h
        x = x + self.mlp(self.mlp_norm(x))
        return x, ({**new_state, "_pos": positions[:, -1] + 1} if return_state else None)

    def init_state(self, batch_size: int, device=None) -> LayerState:
        dtype = self.mlp_norm.weight.dtype
        return {**self.mixer.init_state(batch_size, dtype, device),
                "_pos": torch.zeros(batch_size, dtype=torch.long, device=device)}

    def flops_per_token(self, seq_len: int) -> float:
        return self.mixer.flops_per_token(seq_len) + self.mlp.flops_per_token()


def bfloat16_sqrt(d: int) -> float:
    """sqrt(d) rounded to bfloat16, the embedding normaliser RecurrentGemma trained with."""
    return float(torch.tensor(math.sqrt(d), device="cpu").to(torch.bfloat16))  # also under a meta device context


class GriffinLM(RecurrentLM):
    """Griffin (``block_types`` with attention) or Hawk (recurrent only)."""

    def __init__(self, cfg: GriffinConfig):
        unknown = sorted(set(cfg.block_types) - set(BLOCK_TYPES))
        if not cfg.block_types or unknown:
            raise ValueError(f"{cfg.family}: block_types must be a non-empty list of {BLOCK_TYPES}, "
                             f"got {cfg.block_types}")
        kinds = [cfg.block_types[i % len(cfg.block_types)] for i in range(cfg.n_layers)]
        super().__init__(cfg, [GriffinBlock(cfg.for_layer(i), kind) for i, kind in enumerate(kinds)],
                         RMSNorm(cfg.d_model, cfg.norm_eps, offset=True),
                         embed_scale=bfloat16_sqrt(cfg.d_model) if cfg.scale_embeddings else 1.0,
                         logit_softcap=cfg.logit_softcap or None)


CONFIGS = {"griffin": GriffinConfig, "hawk": HawkConfig}
MODELS = {"griffin": GriffinLM, "hawk": GriffinLM}
