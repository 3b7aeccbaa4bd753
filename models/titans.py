"""Titans (Behrouz et al., 2024, "Titans: Learning to Memorize at Test Time"): MAC, MAG and MAL.

Every variant stacks pre-norm residual blocks (token mixer, then a SwiGLU MLP, each ``x + f(RMSNorm(x))``)
built from two components.

**Neural long-term memory** (``NeuralMemory``), per memory head of width Dh = d_model / memory_heads,
on an input stream u [B, T, d]:

    q = l2norm(SiLU(Conv4(W_q u))),  k = l2norm(SiLU(Conv4(W_k u))),  v = SiLU(Conv4(W_v u))   [B, T, H, Dh]
    theta = max_lr * sigmoid(W_theta u + b),  eta = sigmoid(W_eta u + b),  alpha = sigmoid(W_alpha u + b)
    S_t = eta_t S_{t-1} - theta_t grad ||M_base(k_t) - v_t||^2      momentum ("surprise")
    M_t = (1 - alpha_t) M_{t-1} + S_t                                forgetting
    m_t = W_o RMSNorm(concat_h M_t(q_t))                             read after the write

M is a per-head MLP of ``memory_depth`` 1 (linear) or 2 (act(x W1) W2, hidden ``memory_expansion`` * Dh),
its initial weights are parameters; M_base is the memory at the start of the token's mini-batch of
``memory_chunk_size`` tokens (the paper's mini-batch gradient descent). The recurrence runs in
``recurlm.kernels.titans_memory``. The convs are causal depthwise (``ShortConv``).

**Attention with persistent memory**: multi-head attention with RoPE whose keys/values include
``n_persistent`` learnable, input-independent tokens P [Np, d] (projected by the same W_K, W_V, no
RoPE), visible to every query; they replace the paper's prepending of P to the sequence, which the
exact state contract (window / segment independent of where P sits) would not allow.

Variants (block = token mixer + MLP):

- **MAC** (memory as context). Documents are cut into segments of ``segment_len`` tokens. For a
  segment with inputs x (the normed residual stream) and memory state M_{n-1} at its start:
      h = m(M_{n-1}; q(x))          retrieval with the segment's queries, no write   [B, C, d]
      y = W_O Attn(q = x, keys/values = [P, h_{<=i}, x_{<=i}])   causal inside the segment
      M_n = memory written with y (keys, values, gates from y),  o = y * sigmoid(m(M_t; q(y_t)))
  Simplifications (exact in parallel and step mode): retrieval for the whole segment uses the
  memory at the segment start; token i attends to the persistent tokens, the memory tokens h_j
  and the segment tokens x_j for j <= i (h_j comes from x_j, so later ones would leak the future);
  the final read m(M_t; q(y_t)) is per token after its own write (the kernel's causal read).
- **MAG** (memory as gating): o = W_out(RMSNorm(SWA(x)) * sigmoid(m(x))), with sliding-window
  attention of ``attention_window`` tokens (itself included) plus the persistent tokens.
- **MAL** (memory as layer): x = x + m(RMSNorm(x)); x = x + W_out SWA(RMSNorm(x)); then the MLP.

**Segments, mini-batches and exact state.** The memory's mini-batches (and MAC's segments) are laid
on a grid starting at every document start, so a packed row equals its documents run alone, and a
sequence fed in pieces (or token by token) equals it whole. ``scan_segments`` realigns each row so
every document starts at a multiple of the segment length C (padding after each document's end,
where nothing reads it), then loops over segments with a carried state that a document start resets.
The state of a block therefore holds the sub-states at the start of the *current, unfinished*
segment plus its inputs so far (``buffer`` [B, C - 1, d]); the next call re-runs those buffered
tokens before the new ones. Step mode costs O(C) per token for the memory (and the MAC attention).

State per block (batch first): ``mem_w{l}``, ``mem_s{l}`` memory weights and momentum at the start
of the current segment (float32; float64 for float64 models), ``mem_conv_{q,k,v}`` conv histories
[B, width - 1, d] (MAC adds ``mem_conv_qx``, the retrieval stream's), ``buffer``; MAG/MAL add the
sliding-window cache ``k``, ``v`` [B, window - 1, H, Dh] and ``_valid``; ``_pos`` [B] is the position
inside its document of the next token.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from recurlm.kernels.boundaries import positions_from_resets
from recurlm.kernels.local_attention.state import LocalAttentionState, extend_with_state, final_state_from
from recurlm.kernels.titans_memory import TitansMemoryState, titans_memory
from recurlm.kernels.titans_memory.common import memory_forward
from recurlm.kernels.titans_memory import flops as memory_flops
from recurlm.models.base import Block, RecurrentLM
from recurlm.models.config import ModelConfig
from recurlm.models.layers import GatedMLP, RMSNorm, ShortConv, linear, rotate_half_rope
from recurlm.models.state import REAL, RELATIVE, LayerState

Carry = dict[str, torch.Tensor]


@dataclass
class TitansConfig(ModelConfig):
    family: str = "titans_mac"
    n_heads: Optional[int] = None
    """Attention heads (head width d_model / n_heads)."""
    memory_heads: Optional[int] = None
    """Heads of the neural memory; each owns an MLP memory over Dh = d_model / memory_heads."""
    mlp_hidden: Optional[int] = None
    """Hidden width of the SwiGLU channel mixer."""
    n_persistent: Optional[int] = None
    """Learnable persistent-memory tokens visible to every attention query (0: none)."""
    memory_chunk_size: Optional[int] = None
    """Mini-batch size of the memory's inner gradient descent (gradients at the mini-batch's
    starting weights); part of the model, not only a speed knob. 1 = exact per-token descent."""
    memory_depth: int = 2
    """Layers of the memory MLP: 1 = linear memory (M(x) = x W), 2 = act(x W1) W2 (the paper's deep memory).
    Only depth 1 has a Triton kernel: on CUDA, depth 2 runs the PyTorch chunk path (``titans_memory``)."""
    memory_expansion: int = 2
    """Hidden width of the depth-2 memory MLP in units of the memory head width."""
    memory_activation: str = "gelu"
    """Hidden activation of the depth-2 memory: "gelu" (exact) or "silu"."""
    memory_max_lr: float = 0.02
    """theta = memory_max_lr * sigmoid(.): the largest inner learning rate. A mini-batch sums C
    gradients taken at the same weights and momentum amplifies steps by up to 1 / (1 - eta), so the
    inner descent stays stable only for roughly 2 theta C / (1 - eta) < 2 in the worst case: 0.2
    diverged within 100 tokens at C = 16 in float32 at random init (titans-pytorch's default, max_lr 1 on a loss
    averaged over Dh = 64, is theta <= 1 / 64)."""
    memory_momentum_init: float = 0.8
    """Initial momentum eta (sets the bias of its sigmoid projection); 0.9 with max_lr 0.02 and
    C = 16 diverged in a random-init 2-layer model (see memory_max_lr)."""
    memory_forget_init: float = 0.01
    """Initial forgetting rate alpha (sets the bias of its sigmoid projection)."""
    memory_conv: bool = True
    """Short causal depthwise convolution on the memory's q, k, v (paper); False for plain projections."""
    memory_qk_l2norm: bool = True
    """l2-normalise the memory's queries and keys per head (paper)."""
    memory_qkv_silu: bool = True
    """SiLU on the memory's q, k, v after the convolution (paper, sec. 4.4: "SiLU(.) activation as the
    non-linear activation for computing query, key, and values"); False: the linear projections only."""
    conv_width: int = 4
    """Width of the short convolutions."""
    rope_theta: float = 10_000.0
    """RoPE base wavelength of the attention (full head width rotated)."""


@dataclass
class TitansMACConfig(TitansConfig):
    family: str = "titans_mac"
    segment_len: Optional[int] = None
    """Tokens per MAC segment: attention runs inside a segment; the memory is read at its start."""


@dataclass
class TitansMAGConfig(TitansConfig):
    family: str = "titans_mag"
    attention_window: Optional[int] = None
    """Tokens each sliding-window query sees, itself included (persistent tokens come on top)."""


@dataclass
class TitansMALConfig(TitansMAGConfig):
    family: str = "titans_mal"


def _where_rows(mask: torch.Tensor, a: Carry, b: Carry) -> Carry:
    """Per batch row (mask [B] bool): a where True, else b."""
    return {key: torch.where(mask.view(-1, *[1] * (a[key].dim() - 1)), a[key], b[key]) for key in a}


def l2norm(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1, eps=1e-6)


# -- segment realignment --------------------------------------------------------------------------

def document_slots(valid: torch.Tensor, pos: torch.Tensor, seg_len: int) -> tuple[torch.Tensor, int]:
    """Where every element goes when each document is laid out from a multiple of ``seg_len``.

    valid [B, S] bool (elements to place), pos [B, S] int64 position inside its document (the first
    valid element of a document has pos % seg_len == 0). Documents follow each other in row order,
    each occupying ceil(len / seg_len) whole segments. Returns slot [B, S] (invalid elements: L, a
    dump slot) and L, the aligned length (a multiple of seg_len)."""
    B, S = valid.shape
    first_in_row = valid & (valid.long().cumsum(1) == 1)
    start = valid & ((pos == 0) | first_in_row)
    doc = (start.long().cumsum(1) - 1).clamp_min(0)
    lengths = torch.zeros(B, S, dtype=torch.long, device=valid.device).scatter_add(1, doc, valid.long())
    n_segments = (lengths + seg_len - 1) // seg_len
    doc_offset = seg_len * (n_segments.cumsum(1) - n_segments)
    first_pos = torch.zeros_like(lengths).scatter_add(1, doc, torch.where(start, pos, 0))
    L = int(n_segments.sum(1).max()) * seg_len
    slot = doc_offset.gather(1, doc) + pos - first_pos.gather(1, doc)
    return torch.where(valid, slot, L), L


@dataclass
class SegmentLayout:
    """Where the tokens of one call (buffered ones first) sit on the segment grid; it depends only on
    the tokens' positions, so every Titans layer of a forward shares one (``TitansLM.block_extras``)
    and the one host sync that sizes the grid (``L``) happens once per forward, not once per layer."""

    valid: torch.Tensor
    """[B, C - 1 + T] bool: buffered tokens of the current segment, then every new token."""
    slot: torch.Tensor
    """[B, C - 1 + T] int64: each element's slot on the aligned grid (invalid ones: ``L``)."""
    L: int
    """Aligned length, a multiple of C."""
    doc_starts: torch.Tensor
    """[B, L + 1] bool: slots that start a document."""
    current: torch.Tensor
    """[B] int64: the segment the next token falls in."""


def segment_layout(positions: torch.Tensor, seg_len: int) -> SegmentLayout:
    """The :class:`SegmentLayout` of tokens at ``positions`` [B, T] (see :func:`scan_segments`)."""
    C = seg_len
    pos0 = positions[:, 0]
    buffered = torch.where(pos0 > 0, pos0 % C, 0)  # tokens of the current segment seen before
    j = torch.arange(C - 1, device=positions.device)
    valid = torch.cat([j < buffered[:, None], torch.ones_like(positions, dtype=torch.bool)], 1)
    pos = torch.cat([pos0[:, None] - buffered[:, None] + j, positions], 1)
    slot, L = document_slots(valid, pos, C)
    doc_starts = torch.zeros(positions.shape[0], L + 1, dtype=torch.bool, device=positions.device).scatter(
        1, slot, valid & (pos == 0))
    last = slot.masked_fill(~valid, -1).max(1).values
    return SegmentLayout(valid, slot, L, doc_starts, (last + 1) // C)


def scan_segments(x: torch.Tensor, positions: torch.Tensor, state: Optional[LayerState], seg_len: int,
                  fresh: Carry, step: Callable[[torch.Tensor, Carry], tuple[torch.Tensor, Carry]],
                  return_state: bool, layout: Optional[SegmentLayout] = None
                  ) -> tuple[torch.Tensor, Optional[LayerState]]:
    """Run ``step`` over the segments of every document, exactly resumable mid-segment.

    x [B, T, D]; positions [B, T] inside the documents (0 = document start; token 0 continues the
    previous call's document when its position is > 0); state: the carry at the start of the
    current segment plus ``buffer`` [B, seg_len - 1, D] (that segment's inputs so far); fresh: the
    carry at a document start (broadcastable to batch B). ``step(x_seg [B, C, D], carry) ->
    (y_seg [B, C, Dy], carry)`` processes one whole segment; ``layout``: ``segment_layout(positions,
    seg_len)`` if already made. Returns y [B, T, Dy] and the new state (carry + buffer) if
    ``return_state``."""
    B, T, D = x.shape
    C = seg_len
    layout = layout or segment_layout(positions, C)
    L = layout.L
    carry = {key: value.expand(B, *value.shape[1:]) for key, value in fresh.items()}
    buffer = x.new_zeros(B, C - 1, D)
    if state is not None:
        carry, buffer = {key: state[key] for key in fresh}, state["buffer"].to(x.dtype)
    index = layout.slot[..., None].expand(-1, -1, D)
    aligned = x.new_zeros(B, L + C, D).scatter(1, index, torch.cat([buffer, x], 1))
    outputs, snapshot = [], None
    for n in range(L // C):
        carry = _where_rows(layout.doc_starts[:, n * C], {k: v.expand_as(carry[k]) for k, v in fresh.items()},
                            carry)
        if return_state:
            snapshot = carry if snapshot is None else _where_rows(layout.current == n, carry, snapshot)
        y, carry = step(aligned[:, n * C:(n + 1) * C], carry)
        outputs.append(y)
    y_aligned = torch.cat(outputs + [y.new_zeros(B, 1, *y.shape[2:])], 1).flatten(2)
    y = y_aligned.gather(1, layout.slot[..., None].expand(-1, -1, y_aligned.shape[-1]))[:, C - 1:].unflatten(
        2, y.shape[2:])
    if not return_state:
        return y, None
    snapshot = _where_rows(layout.current == L // C, carry, snapshot)
    j = torch.arange(C - 1, device=x.device)
    rest = (layout.current[:, None] * C + j)[..., None].expand(-1, -1, D)
    return y, {**snapshot, "buffer": aligned.gather(1, rest)}


# -- components -----------------------------------------------------------------------------------

class NeuralMemory(nn.Module):
    """The Titans long-term memory (module docstring): projections, gates, initial memory, output."""

    def __init__(self, cfg: TitansConfig):
        super().__init__()
        d, h = cfg.d_model, cfg.memory_heads
        if d % h:
            raise ValueError(f"titans: d_model={d} must be a multiple of memory_heads={h}")
        if cfg.memory_depth not in (1, 2):
            raise ValueError(f"titans: memory_depth must be 1 or 2, got {cfg.memory_depth}")
        self.n_heads, self.head_dim, self.chunk_size = h, d // h, cfg.memory_chunk_size
        self.activation, self.impl, self.max_lr = cfg.memory_activation, cfg.kernel_impl, cfg.memory_max_lr
        self.qk_l2norm, self.qkv_silu = cfg.memory_qk_l2norm, cfg.memory_qkv_silu
        self.q_proj, self.k_proj, self.v_proj = (linear(d, d, cfg.init_std) for _ in range(3))
        self.convs = nn.ModuleDict({n: ShortConv(d, cfg.conv_width) for n in "qkv"}) if cfg.memory_conv else None
        # rows [theta | eta | alpha], H each; biases set the initial gates
        logit = lambda p: math.log(p / (1 - p))
        gate_bias = torch.zeros(3 * h)
        gate_bias[h:2 * h], gate_bias[2 * h:] = logit(cfg.memory_momentum_init), logit(cfg.memory_forget_init)
        self.gate_proj = linear(d, 3 * h, cfg.init_std, bias_init=gate_bias)
        dh, e = self.head_dim, cfg.memory_expansion * self.head_dim
        shapes = [(dh, dh)] if cfg.memory_depth == 1 else [(dh, e), (e, dh)]
        self.init_weights = nn.ParameterList()
        for din, dout in shapes:
            w = nn.Parameter(torch.empty(h, din, dout))
            with torch.no_grad():
                nn.init.normal_(w, std=din ** -0.5)
            self.init_weights.append(w)
        self.out_norm = RMSNorm(d, cfg.norm_eps)
        self.out_proj = linear(d, d, cfg.init_std / (2 * cfg.n_layers) ** 0.5)

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


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor,
           sink_k: torch.Tensor, sink_v: torch.Tensor, scale: float) -> torch.Tensor:
    """Softmax attention over masked keys plus always-visible persistent keys.

    q [N, T, H, Dh]; k, v [N, S, H, Dh]; allowed [N, T, S] bool; sink_k, sink_v [P, H, Dh]
    -> [N, T, H, Dh]: o_t = sum over {persistent} u {s : allowed[t, s]} of softmax(scale q_t . k) v.
    Runs through ``F.scaled_dot_product_attention`` (a fused kernel on GPU: the [T, S] scores are
    never stored for backward), the persistent tokens prepended to the keys."""
    N, T, P = q.shape[0], q.shape[1], sink_k.shape[0]
    keys = torch.cat([sink_k.to(k.dtype).expand(N, -1, -1, -1), k], 1)
    values = torch.cat([sink_v.to(v.dtype).expand(N, -1, -1, -1), v], 1)
    mask = torch.cat([allowed.new_ones(N, T, P), allowed], -1)[:, None]       # [N, 1, T, P + S]
    o = F.scaled_dot_product_attention(q.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2),
                                       attn_mask=mask, scale=scale)
    return o.transpose(1, 2)


class PersistentAttention(nn.Module):
    """Multi-head attention projections with RoPE and ``n_persistent`` persistent tokens."""

    def __init__(self, cfg: TitansConfig):
        super().__init__()
        d, h = cfg.d_model, cfg.n_heads
        if d % h:
            raise ValueError(f"titans: d_model={d} must be a multiple of n_heads={h}")
        self.n_heads, self.head_dim, self.rope_theta = h, d // h, cfg.rope_theta
        self.q_proj, self.k_proj, self.v_proj = (linear(d, d, cfg.init_std) for _ in range(3))
        self.persistent = nn.Parameter(torch.empty(cfg.n_persistent, d))
        with torch.no_grad():
            nn.init.normal_(self.persistent, std=cfg.init_std)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.n_heads, self.head_dim))

    def rope(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return rotate_half_rope(x, positions, self.head_dim, self.rope_theta)

    def sinks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the persistent tokens, [P, H, Dh] each (no RoPE: they have no position)."""
        return self.heads(self.k_proj(self.persistent)), self.heads(self.v_proj(self.persistent))

    def flops_per_token(self, context: float) -> float:
        d = self.q_proj.in_features
        return 2 * 3 * d * d + 2 * 2 * d * (context + self.persistent.shape[0])


class SlidingWindowAttention(PersistentAttention):
    """Causal sliding-window attention (``attention_window`` tokens incl. itself, same document)
    plus the persistent tokens, with a key/value cache state."""

    def __init__(self, cfg: TitansMAGConfig):
        super().__init__(cfg)
        self.window = cfg.attention_window

    def forward(self, x: torch.Tensor, doc_start: torch.Tensor, positions: torch.Tensor,
                state: Optional[LayerState], return_state: bool) -> tuple[torch.Tensor, LayerState]:
        """x [B, T, d] -> (heads concatenated [B, T, d], cache entries k, v, _valid)."""
        B, T, _ = x.shape
        W, H, Dh = self.window, self.n_heads, self.head_dim
        q = self.rope(self.heads(self.q_proj(x)), positions)
        k = self.rope(self.heads(self.k_proj(x)), positions)
        v = self.heads(self.v_proj(x))
        cache = None if state is None else LocalAttentionState(state["k"], state["v"], state["_valid"])
        dtype = torch.promote_types(x.dtype, torch.float32)
        k_ext, v_ext, doc_ext = extend_with_state(k, v, cache, doc_start, W, dtype)
        # query block j (tokens jW .. jW + W - 1) needs extended keys jW .. jW + 2W - 2
        n_blocks = -(-T // W)
        pad = n_blocks * W - T
        q_blocks = F.pad(q, (0, 0, 0, 0, 0, pad)).view(B * n_blocks, W, H, Dh)
        k_blocks, v_blocks = (F.pad(z.to(x.dtype), (0, 0, 0, 0, 0, pad)).unfold(1, 2 * W - 1, W)
                              .permute(0, 1, 4, 2, 3).reshape(B * n_blocks, 2 * W - 1, H, Dh) for z in (k_ext, v_ext))
        doc_pad = F.pad(doc_ext, (0, pad), value=-2)  # padded queries see padded keys only: finite
        key_docs = doc_pad.unfold(1, 2 * W - 1, W).reshape(B * n_blocks, 1, 2 * W - 1)
        query_docs = doc_pad[:, W - 1:].reshape(B * n_blocks, W, 1)
        i, s = torch.arange(W, device=x.device)[:, None], torch.arange(2 * W - 1, device=x.device)
        allowed = (s >= i) & (s <= i + W - 1) & (key_docs == query_docs)
        o = attend(q_blocks, k_blocks, v_blocks, allowed, *self.sinks(), Dh ** -0.5)
        o = o.reshape(B, n_blocks * W, H * Dh)[:, :T]
        if not return_state:
            return o, {}
        cache = final_state_from(k_ext, v_ext, doc_ext, W)
        return o, {"k": cache.k, "v": cache.v, "_valid": cache.valid}

    def init_state(self, batch_size: int, dtype: torch.dtype, device) -> LayerState:
        cache = LocalAttentionState.empty(batch_size, self.window, self.n_heads, self.head_dim,
                                          torch.promote_types(dtype, torch.float32), device)
        return {"k": cache.k, "v": cache.v, "_valid": cache.valid}

    def flops_per_token(self, seq_len: int) -> float:
        w, t = self.window, seq_len
        mean_context = (t + 1) / 2 if t <= w else (w * (w + 1) / 2 + (t - w) * w) / t
        return super().flops_per_token(mean_context)


# -- blocks ---------------------------------------------------------------------------------------

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
    """Memory as context (module docstring): segment attention over [persistent, memory reads, tokens]."""

    streams = ("qx", "q", "k", "v")

    def __init__(self, cfg: TitansMACConfig):
        super().__init__(cfg, cfg.segment_len)
        self.attn = PersistentAttention(cfg)
        self.o_proj = linear(cfg.d_model, cfg.d_model, cfg.init_std / (2 * cfg.n_layers) ** 0.5)

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
        self.o_proj = linear(cfg.d_model, cfg.d_model, cfg.init_std / (2 * cfg.n_layers) ** 0.5)

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


CONFIGS = {"titans_mac": TitansMACConfig, "titans_mag": TitansMAGConfig, "titans_mal": TitansMALConfig}
MODELS = {family: TitansLM for family in CONFIGS}
