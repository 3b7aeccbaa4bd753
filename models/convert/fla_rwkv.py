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

from typing import Any, Callable, Mapping, Sequence

import torch

from recurlm.models.convert.formats import SPECIAL_TOKEN_IDS, Entry, Format, hf_meta_shapes, pairs_to_entries, same
from recurlm.models.rwkv6 import DDLERP_TARGETS, RWKV6Config
from recurlm.models.rwkv7 import RWKV7Config

FLA_DDLERP_ORDER = ("r", "w", "k", "v", "g")
"""Order of the five ddlerp LoRA outputs in fla's RWKV6Attention (``x_proj`` and ``x_bias``)."""

# recurlm suffix of a block parameter, fla suffix under ``model.layers.<i>.``, fla -> recurlm, recurlm -> fla
Rule = tuple[str, str, Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1)


def _row(t: torch.Tensor) -> torch.Tensor:
    """[D] -> fla's [1, 1, D] token-shift mixing vectors."""
    return t.reshape(1, 1, -1)


def _transpose(t: torch.Tensor) -> torch.Tensor:
    return t.t().contiguous()


def _renamed(pairs: list[tuple[str, str]]) -> list[Rule]:
    return [(ours, theirs, same, same) for ours, theirs in pairs]


COMMON_RULES: list[Rule] = _renamed([
    ("ln0.weight", "pre_norm.weight"), ("ln0.bias", "pre_norm.bias"),
    ("ln1.weight", "attn_norm.weight"), ("ln1.bias", "attn_norm.bias"),
    ("ln2.weight", "ffn_norm.weight"), ("ln2.bias", "ffn_norm.bias"),
    ("att.ln_x.weight", "attn.g_norm.weight"), ("att.ln_x.bias", "attn.g_norm.bias"),
    ("att.output.weight", "attn.o_proj.weight"), ("ffn.value.weight", "ffn.value.weight")])

RWKV7_RULES: list[Rule] = COMMON_RULES + [
    *[(f"att.x_{c}", f"attn.x_{c}", _flat, _row) for c in "rwkvag"],
    *_renamed([("att.k_k", "attn.k_k"), ("att.k_a", "attn.k_a"), ("att.r_k", "attn.r_k"),
               ("att.receptance.weight", "attn.r_proj.weight"), ("att.key.weight", "attn.k_proj.weight"),
               ("att.value.weight", "attn.v_proj.weight"), ("ffn.x_k", "ffn.x_k"), ("ffn.key.weight", "ffn.key.weight")]),
    *[rule for c in "wav" for rule in ((f"att.{c}0", f"attn.{c}_lora.lora.2.bias", same, same),
                                       (f"att.{c}1", f"attn.{c}_lora.lora.0.weight", _transpose, _transpose),
                                       (f"att.{c}2", f"attn.{c}_lora.lora.2.weight", _transpose, _transpose))],
    ("att.g1", "attn.g_lora.lora.0.weight", _transpose, _transpose),
    ("att.g2", "attn.g_lora.lora.2.weight", _transpose, _transpose),
]
"""Block 0 has no value-residual LoRA (``att.v0/v1/v2``) in either layout."""

RWKV6_RULES: list[Rule] = COMMON_RULES + [
    ("att.time_decay_w1", "attn.w_proj.linear.lora.0.weight", _transpose, _transpose),
    ("att.time_decay_w2", "attn.w_proj.linear.lora.2.weight", _transpose, _transpose),
    *_renamed([("att.time_maa_x", "attn.x_proj.0.mu"), ("att.time_decay", "attn.w_proj.linear.lora.2.bias"),
               ("att.time_faaaa", "attn.bonus"), ("att.receptance.weight", "attn.r_proj.linear.weight"),
               ("att.key.weight", "attn.k_proj.linear.weight"), ("att.value.weight", "attn.v_proj.linear.weight"),
               ("att.gate.weight", "attn.g_proj.linear.weight"), ("ffn.x_k", "ffn.key.mu"),
               ("ffn.key.weight", "ffn.key.linear.weight"), ("ffn.x_r", "ffn.receptance.mu"),
               ("ffn.receptance.weight", "ffn.receptance.linear.weight")]),
]
"""The five ddlerp LoRAs (fla's ``x_proj`` / ``x_bias``) are mapped by ``_ddlerp_entries``."""

_DDLERP_SOURCES = ("attn.x_proj.0.linear.weight", "attn.x_proj.2.weight", "attn.x_bias")


def _ddlerp_to_official(w1: torch.Tensor, w2: torch.Tensor, bias: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """fla's x_proj (first Linear weight [5r, D], second [D, 5r]) and x_bias [5, D] in r, w, k, v, g
    order → time_maa_w1 [D, 5r], time_maa_w2 [5, r, D] and time_maa_<c> [D] in w, k, v, r, g order."""
    D, rank = w1.shape[1], w1.shape[0] // 5
    perm = [FLA_DDLERP_ORDER.index(c) for c in DDLERP_TARGETS]
    first = w1.t().reshape(D, 5, rank)[:, perm].reshape(D, 5 * rank)
    second = w2.reshape(D, 5, rank).permute(1, 2, 0)[perm].contiguous()
    offsets = {f"time_maa_{c}": bias[FLA_DDLERP_ORDER.index(c)] for c in DDLERP_TARGETS}
    return first, second, offsets


def _ddlerp_from_official(w1: torch.Tensor, w2: torch.Tensor, *offsets: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of ``_ddlerp_to_official`` (``offsets`` in DDLERP_TARGETS order) -> fla's
    (x_proj.0.linear.weight, x_proj.2.weight, x_bias)."""
    D, rank = w1.shape[0], w1.shape[1] // 5
    order = [DDLERP_TARGETS.index(c) for c in FLA_DDLERP_ORDER]
    first = w1.reshape(D, 5, rank)[:, order].reshape(D, 5 * rank).t().contiguous()
    second = w2[order].permute(2, 0, 1).reshape(D, 5 * rank).contiguous()
    return first, second, torch.stack([offsets[i] for i in order])


def _ddlerp_entries(i: int, to_recurlm: bool) -> list[Entry]:
    """Layer i's ddlerp tensors: 3 fla tensors <-> 7 recurlm tensors (each output recomputes the cheap
    permutation of its inputs, so entries stay one output each)."""
    theirs = tuple(f"model.layers.{i}.{s}" for s in _DDLERP_SOURCES)
    ours_lora = (f"blocks.{i}.att.time_maa_w1", f"blocks.{i}.att.time_maa_w2")
    ours_offsets = tuple(f"blocks.{i}.att.time_maa_{c}" for c in DDLERP_TARGETS)
    if to_recurlm:
        entries = [Entry(key, theirs, lambda *t, j=j: _ddlerp_to_official(*t)[j]) for j, key in enumerate(ours_lora)]
        return entries + [Entry(key, theirs, lambda *t, c=c: _ddlerp_to_official(*t)[2][f"time_maa_{c}"])
                          for key, c in zip(ours_offsets, DDLERP_TARGETS)]
    return [Entry(key, ours_lora + ours_offsets, lambda *t, j=j: _ddlerp_from_official(*t)[j])
            for j, key in enumerate(theirs)]


def fla_entries(family: str, n_layers: int, tie_embeddings: bool, to_recurlm: bool) -> list[Entry]:
    """Every tensor of an fla RWKV-6/7 ForCausalLM <-> recurlm, in the direction asked."""
    pairs = [("embed.weight", "model.embeddings.weight", same, same), ("norm.weight", "model.norm.weight", same, same),
             ("norm.bias", "model.norm.bias", same, same)]
    if not tie_embeddings:
        pairs.append(("head.weight", "lm_head.weight", same, same))
    rules = RWKV7_RULES if family == "rwkv7" else RWKV6_RULES
    extra = []
    for i in range(n_layers):
        for ours, theirs, to_ours, to_theirs in rules:
            if (i > 0 and ours.startswith("ln0.")) or (i == 0 and ours in ("att.v0", "att.v1", "att.v2")):
                continue
            pairs.append((f"blocks.{i}.{ours}", f"model.layers.{i}.{theirs}", to_ours, to_theirs))
        if family == "rwkv6":
            extra += _ddlerp_entries(i, to_recurlm)
    return pairs_to_entries(pairs, to_recurlm) + extra


def _apply(entries: list[Entry], state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {e.target: e.transform(*(state_dict[s] for s in e.sources)) for e in entries}


def _shape(shapes: Mapping[str, Sequence[int]], key: str, dim: int) -> int:
    return shapes[f"model.layers.0.{key}"][dim]


def config_from_fla_rwkv7(config: Any, shapes: Mapping[str, Sequence[int]]) -> RWKV7Config:
    """The recurlm config of an fla ``RWKV7Config`` whose checkpoint has tensors of these shapes."""
    if any(v != config.hidden_size for v in config.value_dim):
        raise ValueError(f"rwkv7 conversion needs value_dim == hidden_size, got {config.value_dim}")
    # layer 0 has no value-residual LoRA; read its rank from layer 1
    v_rank = (shapes["model.layers.1.attn.v_lora.lora.0.weight"][0] if config.num_hidden_layers > 1
              else config.v_low_rank_dim)
    return RWKV7Config(
        size="custom", vocab_size=config.vocab_size, d_model=config.hidden_size, n_layers=config.num_hidden_layers,
        head_dim=config.head_dim, ffn_hidden=_shape(shapes, "ffn.key.weight", 0),
        decay_lora=_shape(shapes, "attn.w_lora.lora.0.weight", 0),
        iclr_lora=_shape(shapes, "attn.a_lora.lora.0.weight", 0), value_lora=v_rank,
        gate_lora=_shape(shapes, "attn.g_lora.lora.0.weight", 0),
        norm_eps=config.norm_eps, group_norm_eps=config.head_dim * config.norm_eps,
        tie_embeddings=bool(config.tie_word_embeddings))


def config_from_fla_rwkv6(config: Any, shapes: Mapping[str, Sequence[int]]) -> RWKV6Config:
    """The recurlm config of an fla ``RWKV6Config`` whose checkpoint has tensors of these shapes."""
    if config.expand_k != 1 or config.expand_v != 1:
        raise ValueError("rwkv6 conversion supports the official layout only: expand_k = expand_v = 1 "
                         f"(got {config.expand_k}, {config.expand_v})")
    return RWKV6Config(
        size="custom", vocab_size=config.vocab_size, d_model=config.hidden_size, n_layers=config.num_hidden_layers,
        head_dim=config.hidden_size // config.num_heads, ffn_hidden=_shape(shapes, "ffn.key.linear.weight", 0),
        mix_lora=config.proj_low_rank_dim, decay_lora=_shape(shapes, "attn.w_proj.linear.lora.0.weight", 0),
        norm_eps=config.norm_eps, group_norm_eps=config.norm_eps, tie_embeddings=bool(config.tie_word_embeddings))


def from_fla_rwkv7(config: Any, state_dict: dict[str, torch.Tensor]) -> tuple[RWKV7Config, dict[str, torch.Tensor]]:
    """fla ``RWKV7Config`` + ``RWKV7ForCausalLM.state_dict()`` → (RWKV7Config, recurlm state dict)."""
    cfg = config_from_fla_rwkv7(config, {k: v.shape for k, v in state_dict.items()})
    return cfg, _apply(fla_entries("rwkv7", cfg.n_layers, cfg.tie_embeddings, to_recurlm=True), state_dict)


def from_fla_rwkv6(config: Any, state_dict: dict[str, torch.Tensor]) -> tuple[RWKV6Config, dict[str, torch.Tensor]]:
    """fla ``RWKV6Config`` + ``RWKV6ForCausalLM.state_dict()`` → (RWKV6Config, recurlm state dict)."""
    cfg = config_from_fla_rwkv6(config, {k: v.shape for k, v in state_dict.items()})
    return cfg, _apply(fla_entries("rwkv6", cfg.n_layers, cfg.tie_embeddings, to_recurlm=True), state_dict)


def to_fla_state_dict(model_or_cfg: Any, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """recurlm RWKV-6/7 state dict (``cfg``: its config) → fla ``ForCausalLM`` state dict."""
    cfg = getattr(model_or_cfg, "config", model_or_cfg)
    return _apply(fla_entries(cfg.family, cfg.n_layers, cfg.tie_embeddings, to_recurlm=False), state_dict)


class _FlaRWKV(Format):
    """flash-linear-attention's HF directory of an RWKV-6/7 ForCausalLM (as the fla-hub checkpoints)."""

    loader = "import fla; transformers.AutoModelForCausalLM.from_pretrained(dir)"
    hf_tokenizer = True

    def detect(self, config, keys):
        return (config or {}).get("model_type") == self.families[0]

    def recurlm_config(self, config, shapes):
        import fla.models

        if self.families[0] == "rwkv7":
            return config_from_fla_rwkv7(fla.models.RWKV7Config.from_dict(config), shapes)
        return config_from_fla_rwkv6(fla.models.RWKV6Config.from_dict(config), shapes)

    def import_entries(self, cfg, keys):
        return fla_entries(cfg.family, cfg.n_layers, cfg.tie_embeddings, to_recurlm=True)

    def ignored_keys(self, cfg, keys):
        return {"lm_head.weight"} if cfg.tie_embeddings else set()

    def export_entries(self, cfg):
        return fla_entries(cfg.family, cfg.n_layers, cfg.tie_embeddings, to_recurlm=False)

    def target_shapes(self, out_dir):
        import fla.models

        cls = fla.models.RWKV7ForCausalLM if self.families[0] == "rwkv7" else fla.models.RWKV6ForCausalLM
        return hf_meta_shapes(cls, out_dir)


def _check_eps(cfg: Any, fla_group_norm_eps: float, rule: str) -> None:
    """fla derives the ``ln_x`` epsilon from ``norm_eps``; a model whose own differs cannot be written
    exactly (e.g. RWKV-7 after ``expand-state`` widened its heads), and writing fla's would change the
    logits."""
    if abs(cfg.group_norm_eps - fla_group_norm_eps) > 1e-12:
        raise ValueError(f"fla's {cfg.family} group norm uses eps {rule} = {fla_group_norm_eps:g}; this model has "
                         f"group_norm_eps={cfg.group_norm_eps:g}, which fla's config cannot express")


class FlaRWKV7(_FlaRWKV):
    name, families = "fla-rwkv7", ("rwkv7",)

    def write_config(self, cfg, out_dir):
        import fla.models

        _check_eps(cfg, cfg.head_dim * cfg.norm_eps, "head_dim x norm_eps")
        fla.models.RWKV7Config(
            hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers, head_dim=cfg.head_dim, vocab_size=cfg.vocab_size,
            intermediate_size=cfg.ffn_hidden, decay_low_rank_dim=cfg.decay_lora, a_low_rank_dim=cfg.iclr_lora,
            v_low_rank_dim=cfg.value_lora, gate_low_rank_dim=cfg.gate_lora, norm_eps=cfg.norm_eps,
            tie_word_embeddings=cfg.tie_embeddings, architectures=["RWKV7ForCausalLM"], **SPECIAL_TOKEN_IDS,
        ).save_pretrained(out_dir)


class FlaRWKV6(_FlaRWKV):
    name, families = "fla-rwkv6", ("rwkv6",)

    def write_config(self, cfg, out_dir):
        import fla.models

        _check_eps(cfg, cfg.norm_eps, "norm_eps")
        fla.models.RWKV6Config(
            hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers, num_heads=cfg.d_model // cfg.head_dim,
            expand_k=1, expand_v=1, vocab_size=cfg.vocab_size, intermediate_size=cfg.ffn_hidden,
            proj_low_rank_dim=cfg.mix_lora, gate_low_rank_dim=cfg.decay_lora, norm_eps=cfg.norm_eps,
            tie_word_embeddings=cfg.tie_embeddings, architectures=["RWKV6ForCausalLM"], **SPECIAL_TOKEN_IDS,
        ).save_pretrained(out_dir)
