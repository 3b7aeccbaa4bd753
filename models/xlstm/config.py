"""The config of the ``xlstm`` family (package docstring)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from recurlm.models.config import ModelConfig

ARCHITECTURES = ("v1", "xlstm7b")
BLOCK_KINDS = ("mlstm", "slstm")


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


def norm_eps(cfg: XLSTMConfig) -> float:
    return cfg.norm_eps if cfg.norm_eps is not None else (1e-5 if architecture(cfg) == "v1" else 1e-6)
