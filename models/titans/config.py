"""The configs of the Titans families ``titans_mac``, ``titans_mag`` and ``titans_mal`` (package docstring)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from recurlm.models.config import ModelConfig


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
