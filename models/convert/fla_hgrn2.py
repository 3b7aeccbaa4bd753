"""flash-linear-attention's HGRN2 (``fla.models.HGRN2ForCausalLM``) <-> recurlm ``hgrn2``.

Config: hidden_size -> d_model, num_hidden_layers -> n_layers, expand_ratio (fla derives the head
count from it: H = hidden_size // expand_ratio), the MLP width (``intermediate_size``, or fla's
rounding of ``hidden_ratio``; read from the weights), use_lower_bound, norm_eps, tie_word_embeddings.
fla's HGRN2 has no output gate (``output_gate=False``) and its ``g_norm`` runs through
``rms_norm_linear`` without passing its epsilon, so the output norm uses that function's default,
1e-5, whatever ``norm_eps`` says (``gate_norm_eps``).

Weights map one to one (``model.layers.{i}.`` in fla, ``blocks.{i}.`` here; ``attn`` -> ``mixer``;
``model.embeddings`` -> ``embed``, ``model.norm`` -> ``norm``, ``lm_head`` -> ``head``,
``model.lower_bounds`` -> ``lower_bounds``). fla built with ``elementwise_affine=False`` has no
``g_norm`` weight; recurlm's is then ones. Recurrent states (not converted here) differ only in
layout: fla keeps ``[B, H, V, K]`` (``state_v_first=True``), recurlm ``[B, H, K, V]``.

Not supported (ValueError): short convolutions, hybrid attention layers (``attn``), attention
residuals (``attnres_block_size``), and activations other than SwiGLU.
"""
from __future__ import annotations

from typing import Any

import torch

from recurlm.models.convert.formats import SPECIAL_TOKEN_IDS, Entry, Format, hf_meta_shapes
from recurlm.models.hgrn2 import HGRN2Config, HGRN2LM

FLA_GATE_NORM_EPS = 1e-5
"""Epsilon of fla's ``rms_norm_linear`` default, the one its HGRN2 output norm actually uses."""

_BLOCK_KEYS = [("attn_norm.weight", "attn_norm.weight"), ("mlp_norm.weight", "mlp_norm.weight"),
               *[(f"mixer.{p}.weight", f"attn.{p}.weight") for p in ("q_proj", "f_proj", "i_proj", "o_proj")],
               ("mixer.g_norm.weight", "attn.g_norm.weight"),
               *[(f"mlp.{p}.weight", f"mlp.{p}.weight") for p in ("gate_proj", "up_proj", "down_proj")]]


def config_from_fla(fla_config: Any, mlp_hidden: int) -> HGRN2Config:
    """A recurlm HGRN2Config equal to an fla HGRN2Config (``mlp_hidden``: fla's MLP width, which it
    may derive from ``hidden_ratio`` by rounding; the caller reads it from the weights)."""
    unsupported = {"use_short_conv": bool(fla_config.use_short_conv), "attn": fla_config.attn is not None,
                   "attnres_block_size": getattr(fla_config, "attnres_block_size", None) is not None,
                   f"hidden_act={fla_config.hidden_act!r}": fla_config.hidden_act != "swish"}
    if any(unsupported.values()):
        raise ValueError(f"recurlm's HGRN2 has no equivalent of fla's {[k for k, v in unsupported.items() if v]}")
    return HGRN2Config(
        size="custom", vocab_size=fla_config.vocab_size, d_model=fla_config.hidden_size,
        n_layers=fla_config.num_hidden_layers, expand_ratio=fla_config.expand_ratio, mlp_hidden=mlp_hidden,
        output_gate=False, use_lower_bound=bool(fla_config.use_lower_bound), gate_norm_eps=FLA_GATE_NORM_EPS,
        norm_eps=fla_config.norm_eps, tie_embeddings=bool(fla_config.tie_word_embeddings),
    )


def key_map(cfg: HGRN2Config) -> list[tuple[str, str]]:
    """(recurlm key, fla key) for every tensor of the model."""
    entries = [("embed.weight", "model.embeddings.weight"), ("norm.weight", "model.norm.weight")]
    if cfg.use_lower_bound:
        entries.append(("lower_bounds", "model.lower_bounds"))
    if not cfg.tie_embeddings:
        entries.append(("head.weight", "lm_head.weight"))
    for i in range(cfg.n_layers):
        entries += [(f"blocks.{i}.{ours}", f"model.layers.{i}.{theirs}") for ours, theirs in _BLOCK_KEYS]
    return entries


def state_dict_from_fla(fla_state_dict: dict[str, torch.Tensor], cfg: HGRN2Config) -> dict[str, torch.Tensor]:
    """fla HGRN2ForCausalLM state dict -> recurlm HGRN2LM state dict (a missing ``g_norm`` weight,
    fla's ``elementwise_affine=False``, becomes ones)."""
    out = {}
    for ours, theirs in key_map(cfg):
        if theirs not in fla_state_dict and theirs.endswith("attn.g_norm.weight"):
            out[ours] = torch.ones(cfg.d_model, dtype=fla_state_dict["model.embeddings.weight"].dtype)
        else:
            out[ours] = fla_state_dict[theirs]
    return out


def to_fla_state_dict(model: HGRN2LM) -> dict[str, torch.Tensor]:
    """recurlm HGRN2LM -> fla HGRN2ForCausalLM state dict (``elementwise_affine=True``; ``lm_head``
    included when tied, as fla's state dict has it)."""
    cfg = model.config
    if cfg.output_gate or cfg.gate_norm_eps != FLA_GATE_NORM_EPS:
        raise ValueError("fla's HGRN2 has no output gate and a gate-norm epsilon of 1e-5: need output_gate=False, "
                         f"gate_norm_eps={FLA_GATE_NORM_EPS} (got {cfg.output_gate}, {cfg.gate_norm_eps})")
    state_dict = model.state_dict()
    out = {theirs: state_dict[ours] for ours, theirs in key_map(cfg)}
    out.setdefault("lm_head.weight", out["model.embeddings.weight"])
    return out


def from_fla(fla_model: Any) -> HGRN2LM:
    """A recurlm HGRN2 with the weights of an fla HGRN2ForCausalLM (same dtype)."""
    fla_state_dict = fla_model.state_dict()
    cfg = config_from_fla(fla_model.config, fla_state_dict["model.layers.0.mlp.gate_proj.weight"].shape[0])
    model = HGRN2LM(cfg)
    model.to(next(fla_model.parameters()).dtype).load_state_dict(state_dict_from_fla(fla_state_dict, cfg))
    return model


class FlaHGRN2(Format):
    """flash-linear-attention's HF directory of an ``HGRN2ForCausalLM`` (``model_type`` hgrn2)."""

    name, families, hf_tokenizer = "fla-hgrn2", ("hgrn2",), True
    loader = "import fla; transformers.AutoModelForCausalLM.from_pretrained(dir)"

    def detect(self, config, keys):
        return (config or {}).get("model_type") == "hgrn2"

    def recurlm_config(self, config, shapes):
        import fla.models

        return config_from_fla(fla.models.HGRN2Config.from_dict(config), shapes["model.layers.0.mlp.gate_proj.weight"][0])

    def import_entries(self, cfg, keys):
        entries = []
        for ours, theirs in key_map(cfg):
            if theirs.endswith("attn.g_norm.weight") and theirs not in keys:  # fla's elementwise_affine=False
                entries.append(Entry(ours, (), lambda d=cfg.d_model: torch.ones(d)))
            else:
                entries.append(Entry(ours, (theirs,)))
        return entries

    def ignored_keys(self, cfg, keys):
        return {"lm_head.weight"} if cfg.tie_embeddings else set()

    def export_entries(self, cfg):
        return [Entry(theirs, (ours,)) for ours, theirs in key_map(cfg)]

    def write_config(self, cfg, out_dir):
        import fla.models

        if cfg.output_gate or cfg.gate_norm_eps != FLA_GATE_NORM_EPS:
            raise ValueError(f"fla's HGRN2 has no output gate and a gate-norm epsilon of {FLA_GATE_NORM_EPS}: need "
                             f"output_gate=False, gate_norm_eps={FLA_GATE_NORM_EPS} (got {cfg.output_gate}, "
                             f"{cfg.gate_norm_eps})")
        fla.models.HGRN2Config(
            hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers, expand_ratio=cfg.expand_ratio,
            intermediate_size=cfg.mlp_hidden, use_lower_bound=cfg.use_lower_bound, norm_eps=cfg.norm_eps,
            vocab_size=cfg.vocab_size, tie_word_embeddings=cfg.tie_embeddings, architectures=["HGRN2ForCausalLM"],
            **SPECIAL_TOKEN_IDS).save_pretrained(out_dir)

    def target_shapes(self, out_dir):
        import fla.models

        return hf_meta_shapes(fla.models.HGRN2ForCausalLM, out_dir)
