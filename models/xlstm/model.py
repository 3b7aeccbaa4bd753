"""The xLSTM blocks (mLSTM, sLSTM, xLSTM-7B mLSTM + FFN) and the model (package docstring)."""
from __future__ import annotations

from recurlm.models.base import Block, RecurrentLM
from recurlm.models.layers import GatedMLP, RMSNorm
from recurlm.models.state import POSITIVE, REAL, LayerState
from recurlm.models.xlstm.config import ARCHITECTURES, BLOCK_KINDS, XLSTMConfig, architecture, norm_eps
from recurlm.models.xlstm.layers import GroupLayerNorm, round_up, round_up_7b, small_init_std, wang_init_std
from recurlm.models.xlstm.mlstm import MLSTMLayer7B, MLSTMLayerV1
from recurlm.models.xlstm.slstm import SLSTMLayer


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
