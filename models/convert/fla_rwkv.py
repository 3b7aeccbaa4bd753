"""flash-linear-attention's RWKV-6 / RWKV-7 (``fla.models.RWKV6ForCausalLM`` / ``RWKV7ForCausalLM``)
→ recurlm ``rwkv6`` / ``rwkv7``.

``from_fla_rwkv6(config, state_dict)`` and ``from_fla_rwkv7(config, state_dict)`` take the fla
config object and the ``ForCausalLM`` state dict and return ``(recurlm config, state dict)`` for
``build_model(cfg).load_state_dict(sd)``. What differs between the two layouts:

- fla stores LoRAs as ``Linear`` pairs ([rank, D] and [D, rank] weights, the bias of the second is the
  offset: w0 / a0 / v0 / time_decay); recurlm keeps BlinkDL's ``x @ w1 @ w2`` factors [D, rank] and
  [rank, D] and separate offsets.
- RWKV-6's five ddlerp LoRAs are ordered r, w, k, v, g in fla and w, k, v, r, g (official) here.
- fla's group norm epsilon is ``norm_eps`` (RWKV-6) or ``head_dim * norm_eps`` (RWKV-7); it is
  carried into ``group_norm_eps``.

Only fla's official-shaped RWKV-6 is supported (``expand_k = expand_v = 1``: keys, values and gates
of width D), and RWKV-7 with ``value_dim == hidden_size``.
"""
from __future__ import annotations

import re
from typing import Any, Callable

import torch

from recurlm.models.rwkv6 import DDLERP_TARGETS, RWKV6Config
from recurlm.models.rwkv7 import RWKV7Config

FLA_DDLERP_ORDER = ("r", "w", "k", "v", "g")
"""Order of the five ddlerp LoRA outputs in fla's RWKV6Attention (``x_proj`` and ``x_bias``)."""

# recurlm suffix of a block parameter ← fla suffix under ``model.layers.<i>.``, with a transform
Rule = tuple[str, str, Callable[[torch.Tensor], torch.Tensor]]


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1)


def _transpose(t: torch.Tensor) -> torch.Tensor:
    return t.t().contiguous()


COMMON_RULES: list[Rule] = [
    ("ln0.weight", "pre_norm.weight", _same), ("ln0.bias", "pre_norm.bias", _same),
    ("ln1.weight", "attn_norm.weight", _same), ("ln1.bias", "attn_norm.bias", _same),
    ("ln2.weight", "ffn_norm.weight", _same), ("ln2.bias", "ffn_norm.bias", _same),
    ("att.ln_x.weight", "attn.g_norm.weight", _same), ("att.ln_x.bias", "attn.g_norm.bias", _same),
    ("att.output.weight", "attn.o_proj.weight", _same),
    ("ffn.value.weight", "ffn.value.weight", _same),
]

RWKV7_RULES: list[Rule] = COMMON_RULES + [
    *[(f"att.x_{c}", f"attn.x_{c}", _flat) for c in "rwkvag"],
    ("att.k_k", "attn.k_k", _flat), ("att.k_a", "attn.k_a", _flat), ("att.r_k", "attn.r_k", _same),
    ("att.receptance.weight", "attn.r_proj.weight", _same), ("att.key.weight", "attn.k_proj.weight", _same),
    ("att.value.weight", "attn.v_proj.weight", _same),
    *[rule for c in "wav" for rule in ((f"att.{c}0", f"attn.{c}_lora.lora.2.bias", _same),
                                       (f"att.{c}1", f"attn.{c}_lora.lora.0.weight", _transpose),
                                       (f"att.{c}2", f"attn.{c}_lora.lora.2.weight", _transpose))],
    ("att.g1", "attn.g_lora.lora.0.weight", _transpose), ("att.g2", "attn.g_lora.lora.2.weight", _transpose),
    ("ffn.x_k", "ffn.x_k", _flat), ("ffn.key.weight", "ffn.key.weight", _same),
]

RWKV6_RULES: list[Rule] = COMMON_RULES + [
    ("att.time_maa_x", "attn.x_proj.0.mu", _same),
    ("att.time_decay", "attn.w_proj.linear.lora.2.bias", _same),
    ("att.time_decay_w1", "attn.w_proj.linear.lora.0.weight", _transpose),
    ("att.time_decay_w2", "attn.w_proj.linear.lora.2.weight", _transpose),
    ("att.time_faaaa", "attn.bonus", _same),
    ("att.receptance.weight", "attn.r_proj.linear.weight", _same),
    ("att.key.weight", "attn.k_proj.linear.weight", _same),
    ("att.value.weight", "attn.v_proj.linear.weight", _same),
    ("att.gate.weight", "attn.g_proj.linear.weight", _same),
    ("ffn.x_k", "ffn.key.mu", _same), ("ffn.key.weight", "ffn.key.linear.weight", _same),
    ("ffn.x_r", "ffn.receptance.mu", _same), ("ffn.receptance.weight", "ffn.receptance.linear.weight", _same),
]


def _convert(state_dict: dict[str, torch.Tensor], rules: list[Rule]) -> dict[str, torch.Tensor]:
    """Embedding, final norm, head, and every per-layer tensor named by ``rules``."""
    out = {"embed.weight": state_dict["model.embeddings.weight"],
           "norm.weight": state_dict["model.norm.weight"], "norm.bias": state_dict["model.norm.bias"]}
    if "lm_head.weight" in state_dict:
        out["head.weight"] = state_dict["lm_head.weight"]
    layers = sorted({int(m.group(1)) for k in state_dict if (m := re.match(r"model\.layers\.(\d+)\.", k))})
    for i in layers:
        for ours, theirs, transform in rules:
            key = f"model.layers.{i}.{theirs}"
            if key in state_dict:
                out[f"blocks.{i}.{ours}"] = transform(state_dict[key])
    return out


def _shape(state_dict: dict[str, torch.Tensor], key: str, dim: int) -> int:
    return state_dict[f"model.layers.0.{key}"].shape[dim]


def from_fla_rwkv7(config: Any, state_dict: dict[str, torch.Tensor]) -> tuple[RWKV7Config, dict[str, torch.Tensor]]:
    """fla ``RWKV7Config`` + ``RWKV7ForCausalLM.state_dict()`` → (RWKV7Config, recurlm state dict)."""
    if any(v != config.hidden_size for v in config.value_dim):
        raise ValueError(f"rwkv7 conversion needs value_dim == hidden_size, got {config.value_dim}")
    # layer 0 has no value-residual LoRA; read its rank from layer 1
    v_rank = (state_dict["model.layers.1.attn.v_lora.lora.0.weight"].shape[0] if config.num_hidden_layers > 1
              else config.v_low_rank_dim)
    cfg = RWKV7Config(
        vocab_size=config.vocab_size, d_model=config.hidden_size, n_layers=config.num_hidden_layers,
        head_dim=config.head_dim, ffn_hidden=_shape(state_dict, "ffn.key.weight", 0),
        decay_lora=_shape(state_dict, "attn.w_lora.lora.0.weight", 0),
        iclr_lora=_shape(state_dict, "attn.a_lora.lora.0.weight", 0), value_lora=v_rank,
        gate_lora=_shape(state_dict, "attn.g_lora.lora.0.weight", 0),
        norm_eps=config.norm_eps, group_norm_eps=config.head_dim * config.norm_eps,
        tie_embeddings=bool(config.tie_word_embeddings))
    return cfg, _convert(state_dict, RWKV7_RULES)


def _ddlerp_to_official(w1: torch.Tensor, w2: torch.Tensor, bias: torch.Tensor, rank: int
                        ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """fla's x_proj (first Linear weight [5r, D], second [D, 5r]) and x_bias [5, D] in r, w, k, v, g
    order → time_maa_w1 [D, 5r], time_maa_w2 [5, r, D] and time_maa_<c> [D] in w, k, v, r, g order."""
    D = w1.shape[1]
    perm = [FLA_DDLERP_ORDER.index(c) for c in DDLERP_TARGETS]
    first = w1.t().reshape(D, 5, rank)[:, perm].reshape(D, 5 * rank)
    second = w2.reshape(D, 5, rank).permute(1, 2, 0)[perm].contiguous()
    offsets = {f"time_maa_{c}": bias[FLA_DDLERP_ORDER.index(c)] for c in DDLERP_TARGETS}
    return first, second, offsets


def from_fla_rwkv6(config: Any, state_dict: dict[str, torch.Tensor]) -> tuple[RWKV6Config, dict[str, torch.Tensor]]:
    """fla ``RWKV6Config`` + ``RWKV6ForCausalLM.state_dict()`` → (RWKV6Config, recurlm state dict)."""
    if config.expand_k != 1 or config.expand_v != 1:
        raise ValueError("rwkv6 conversion supports the official layout only: expand_k = expand_v = 1 "
                         f"(got {config.expand_k}, {config.expand_v})")
    rank = config.proj_low_rank_dim
    cfg = RWKV6Config(
        vocab_size=config.vocab_size, d_model=config.hidden_size, n_layers=config.num_hidden_layers,
        head_dim=config.hidden_size // config.num_heads, ffn_hidden=_shape(state_dict, "ffn.key.linear.weight", 0),
        mix_lora=rank, decay_lora=_shape(state_dict, "attn.w_proj.linear.lora.0.weight", 0),
        norm_eps=config.norm_eps, group_norm_eps=config.norm_eps, tie_embeddings=bool(config.tie_word_embeddings))
    out = _convert(state_dict, RWKV6_RULES)
    for i in range(config.num_hidden_layers):
        prefix = f"model.layers.{i}.attn."
        first, second, offsets = _ddlerp_to_official(state_dict[prefix + "x_proj.0.linear.weight"],
                                                     state_dict[prefix + "x_proj.2.weight"],
                                                     state_dict[prefix + "x_bias"], rank)
        out[f"blocks.{i}.att.time_maa_w1"], out[f"blocks.{i}.att.time_maa_w2"] = first, second
        out.update({f"blocks.{i}.att.{name}": t for name, t in offsets.items()})
    return cfg, out
