"""transformers' RecurrentGemma (Griffin / Hawk) <-> recurlm ``griffin`` / ``hawk``.

Config: hidden_size -> d_model, num_hidden_layers -> n_layers, num_attention_heads -> n_heads and
lru_heads (RecurrentGemma uses one head count for both), num_key_value_heads -> n_kv_heads,
lru_width, intermediate_size // 2 -> mlp_hidden (HF's MLP branches are intermediate_size // 2
wide), attention_window_size -> attention_window (both count the query itself), block_types,
partial_rotary_factor -> rope_fraction, rope_theta, conv1d_width, logits_soft_cap, rms_norm_eps,
tie_word_embeddings. A config whose ``block_types`` has no "attention" becomes family "hawk".

Weights (per layer i, ``model.layers.{i}.`` in HF, ``blocks.{i}.`` here) map one to one except:
- the RG-LRU parameter: HF stores p with a = exp(-softplus(p)) = sigmoid(-p); recurlm stores
  Λ = -p (a = sigmoid(Λ), the paper's convention);
- the convolution: HF ``conv_1d.weight`` [R, 1, W] applies tap k to x_{t-(W-1-k)}; recurlm's
  ShortConv weight [W, R] applies row j to x_{t-j}, so weight[j] = conv_1d.weight[:, 0, W-1-j].
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from recurlm.models.convert.common import conv_from_torch, conv_to_torch
from recurlm.models.convert.formats import SPECIAL_TOKEN_IDS, Format, hf_meta_shapes, pairs_to_entries
from recurlm.models.griffin import GriffinConfig, GriffinLM, HawkConfig

Transform = Callable[[torch.Tensor], torch.Tensor]


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def _negate(t: torch.Tensor) -> torch.Tensor:
    return -t


def config_from_transformers(hf_config: Any) -> GriffinConfig:
    """A recurlm GriffinConfig / HawkConfig equal to a transformers RecurrentGemmaConfig."""
    if hf_config.hidden_activation != "gelu_pytorch_tanh":
        raise ValueError(f"recurlm's Griffin uses the tanh GeLU; got hidden_activation={hf_config.hidden_activation!r}")
    if hf_config.attention_bias:
        raise ValueError("recurlm's Griffin has no q/k/v biases (attention_bias=True is not supported)")
    rope = hf_config.rope_parameters
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"only default RoPE is supported, got {rope}")
    block_types = list(hf_config.block_types)
    head_dim = hf_config.hidden_size // hf_config.num_attention_heads
    rotary = int(rope.get("partial_rotary_factor", 0.5) * head_dim)
    if "attention" in block_types and rotary % 2:
        raise ValueError(f"the rotary width (partial_rotary_factor x head_dim = {rotary}) is odd: transformers "
                         "rotates it unevenly and recurlm does not reproduce that; need an even width")
    cls = GriffinConfig if "attention" in block_types else HawkConfig
    return cls(
        size="custom", vocab_size=hf_config.vocab_size, d_model=hf_config.hidden_size,
        n_layers=hf_config.num_hidden_layers, n_heads=hf_config.num_attention_heads,
        lru_heads=hf_config.num_attention_heads, n_kv_heads=hf_config.num_key_value_heads,
        lru_width=hf_config.lru_width, mlp_hidden=hf_config.intermediate_size // 2,
        block_types=block_types, attention_window=hf_config.attention_window_size,
        rope_fraction=rope.get("partial_rotary_factor", 0.5), rope_theta=rope["rope_theta"],
        conv_width=hf_config.conv1d_width, logit_softcap=hf_config.logits_soft_cap,
        norm_eps=hf_config.rms_norm_eps, tie_embeddings=hf_config.tie_word_embeddings,
    )


def key_map(cfg: GriffinConfig) -> list[tuple[str, str, Transform, Transform]]:
    """(recurlm key, HF key, HF -> recurlm transform, recurlm -> HF transform) for every tensor."""
    entries = [("embed.weight", "model.embed_tokens.weight", _same, _same),
               ("norm.weight", "model.final_norm.weight", _same, _same)]
    if not cfg.tie_embeddings:
        entries.append(("head.weight", "lm_head.weight", _same, _same))
    linear = ("weight", "bias")
    for i in range(cfg.n_layers):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        names = [("temporal_norm.weight", "temporal_pre_norm.weight"), ("mlp_norm.weight", "channel_pre_norm.weight")]
        names += [(f"mlp.{p}.{w}", f"mlp_block.{p}.{w}") for p in ("gate_proj", "up_proj", "down_proj") for w in linear]
        special = []
        if cfg.block_types[i % len(cfg.block_types)] == "recurrent":
            names += [(f"mixer.{p}.{w}", f"temporal_block.{p}.{w}")
                      for p in ("linear_x", "linear_y", "linear_out") for w in linear]
            names += [("mixer.conv.bias", "temporal_block.conv_1d.bias")]
            for gate, hf_gate in (("input_gate", "input_gate"), ("recurrence_gate", "recurrent_gate")):
                names += [(f"mixer.rg_lru.{gate}.{w}", f"temporal_block.rg_lru.{hf_gate}_{w}") for w in linear]
            special = [("mixer.conv.weight", "temporal_block.conv_1d.weight", conv_from_torch, conv_to_torch),
                       ("mixer.rg_lru.a_logit", "temporal_block.rg_lru.recurrent_param", _negate, _negate)]
        else:
            names += [(f"mixer.{p}.weight", f"temporal_block.{p}.weight")
                      for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
            names += [("mixer.o_proj.bias", "temporal_block.o_proj.bias")]
        entries += [(ours + a, theirs + b, _same, _same) for a, b in names]
        entries += [(ours + a, theirs + b, f, g) for a, b, f, g in special]
    return entries


def state_dict_from_transformers(hf_state_dict: dict[str, torch.Tensor], cfg: GriffinConfig) -> dict[str, torch.Tensor]:
    """HF RecurrentGemmaForCausalLM state_dict -> recurlm GriffinLM state_dict."""
    return {ours: to_ours(hf_state_dict[theirs]) for ours, theirs, to_ours, _ in key_map(cfg)}


def state_dict_to_transformers(state_dict: dict[str, torch.Tensor], cfg: GriffinConfig) -> dict[str, torch.Tensor]:
    """recurlm GriffinLM state_dict -> HF RecurrentGemmaForCausalLM state_dict (lm_head included).

    Raises ValueError for weights RecurrentGemma has no place for (e.g. ``state_expansion`` > 1),
    which an export would otherwise drop silently."""
    unmapped = sorted(set(state_dict) - {ours for ours, *_ in key_map(cfg)})
    if unmapped:
        raise ValueError(f"RecurrentGemma has no weights for {unmapped[:4]}{' ...' if len(unmapped) > 4 else ''} "
                         f"(state_expansion={cfg.state_expansion}; transformers' model needs 1)")
    out = {theirs: to_hf(state_dict[ours]) for ours, theirs, _, to_hf in key_map(cfg)}
    out.setdefault("lm_head.weight", out["model.embed_tokens.weight"])
    return out


def from_transformers(hf_model: Any) -> GriffinLM:
    """A recurlm Griffin/Hawk with the weights of a transformers RecurrentGemmaForCausalLM (same dtype)."""
    cfg = config_from_transformers(hf_model.config)
    model = GriffinLM(cfg)
    dtype = next(hf_model.parameters()).dtype
    model.to(dtype).load_state_dict(state_dict_from_transformers(hf_model.state_dict(), cfg))
    return model


def config_to_transformers(cfg: GriffinConfig) -> Any:
    """The transformers RecurrentGemmaConfig equal to a recurlm Griffin/Hawk config (ValueError for
    settings RecurrentGemma has no field for)."""
    import transformers

    fixed = {"lru_heads == n_heads": (cfg.lru_heads or cfg.n_heads) == cfg.n_heads,
             "state_expansion == 1": cfg.state_expansion == 1,
             "scale_embeddings": cfg.scale_embeddings, "rglru_c == 8": cfg.rglru_c == 8.0}
    if not all(fixed.values()):
        raise ValueError(f"transformers' RecurrentGemma needs {[k for k, ok in fixed.items() if not ok]}")
    return transformers.RecurrentGemmaConfig(
        num_hidden_layers=cfg.n_layers, vocab_size=cfg.vocab_size, hidden_size=cfg.d_model,
        intermediate_size=2 * cfg.mlp_hidden, num_attention_heads=cfg.n_heads, lru_width=cfg.lru_width,
        attention_window_size=cfg.attention_window or 2048, conv1d_width=cfg.conv_width,
        logits_soft_cap=cfg.logit_softcap, rms_norm_eps=cfg.norm_eps, block_types=list(cfg.block_types),
        num_key_value_heads=cfg.n_kv_heads, tie_word_embeddings=cfg.tie_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta, "partial_rotary_factor": cfg.rope_fraction},
        architectures=["RecurrentGemmaForCausalLM"], **SPECIAL_TOKEN_IDS)


class HFRecurrentGemma(Format):
    """transformers' ``RecurrentGemmaForCausalLM`` directory (``model_type`` recurrent_gemma)."""

    name, families, hf_tokenizer = "hf-recurrentgemma", ("griffin", "hawk"), True
    loader = "transformers.AutoModelForCausalLM.from_pretrained(dir)"

    def detect(self, config, keys):
        return (config or {}).get("model_type") == "recurrent_gemma"

    def recurlm_config(self, config, shapes):
        import transformers

        return config_from_transformers(transformers.RecurrentGemmaConfig.from_dict(config))

    def import_entries(self, cfg, keys):
        return pairs_to_entries(key_map(cfg), to_recurlm=True)

    def ignored_keys(self, cfg, keys):
        return {"lm_head.weight"} if cfg.tie_embeddings else set()

    def export_entries(self, cfg):
        return pairs_to_entries(key_map(cfg), to_recurlm=False)

    def write_config(self, cfg, out_dir):
        config_to_transformers(cfg).save_pretrained(out_dir)

    def target_shapes(self, out_dir):
        import transformers

        return hf_meta_shapes(transformers.RecurrentGemmaForCausalLM, out_dir)
