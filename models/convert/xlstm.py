"""Reference xLSTM models -> recurlm ``xlstm``.

- ``from_xlstm_large``: the ``xlstm`` package's ``xlstm.xlstm_large.model.xLSTMLarge`` (xLSTM-7B) and
  transformers' ``xLSTMForCausalLM`` (same blocks, ``backbone.embeddings`` instead of ``embedding``)
  -> ``architecture="xlstm7b"``. Config: embedding_dim -> d_model, num_blocks -> n_layers, num_heads,
  qk_dim_factor, v_dim_factor, ffn_proj_factor -> ffn_factor, ffn_round_up_to_multiple_of -> round_to,
  gate_soft_cap, output_logit_soft_cap -> logit_softcap, norm_eps, eps -> mlstm_eps. Weights map one to
  one (``mlstm_layer.{q,k,v}`` -> ``mixer.{q,k,v}``, ``ogate_preact`` -> ``o_gate``, ``igate_preact`` /
  ``fgate_preact`` -> ``igate`` / ``fgate``, ``multihead_norm`` -> ``norm``, FFN ``proj_up_gate`` /
  ``proj_up`` / ``proj_down`` -> ``gate_proj`` / ``up_proj`` / ``down_proj``). Only
  ``weight_mode="single"``, ``use_bias=False`` and ``add_out_norm=True`` (the xLSTM-7B settings).
- ``from_xlstm_v1``: the ``xlstm`` package's ``xLSTMLMModel`` (mLSTM + sLSTM blocks) ->
  ``architecture="v1"``. Layout changes: the convolutions ([C, 1, W], tap k on x_{t-(W-1-k)}) become
  ShortConv weights [W, C]; the sLSTM recurrent kernel, stored by the vanilla backend as
  [H, 4 E, E] (row g E + j, column d), becomes R [H, E(d), 4(g), E(j)]; its bias [4 H E] becomes
  [4, H, E]; the sLSTM block's fused MLP ``proj_up`` [2 F, D] splits into gate (first F rows) and up.
  The xlstm sLSTM layer feeds its ``fgate`` projection to the input gate and its ``igate`` projection
  to the forget gate (``i, f = fgate(x), igate(x)`` in ``sLSTMLayer.forward``), so ``fgate`` ->
  ``i_proj`` and ``igate`` -> ``f_proj``. Only ``bias=False``, post-blocks norm, the ``slstm``
  cell function and the same convolution width and rounding in both block kinds.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable

import torch

from recurlm.models.convert.common import conv_from_torch
from recurlm.models.convert.formats import SPECIAL_TOKEN_IDS, Entry, Format, hf_meta_shapes, pairs_to_entries
from recurlm.models.xlstm import XLSTMLM, XLSTMConfig, architecture, norm_eps

Transform = Callable[[torch.Tensor], torch.Tensor]
LINEAR_7B = {"q": "q", "k": "k", "v": "v", "o_gate": "ogate_preact", "out_proj": "out_proj"}
ACTIVATIONS_V1 = {"gelu": "gelu_exact", "swish": "silu"}


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def _load(cfg: XLSTMConfig, reference: torch.nn.Module, entries: list[tuple[str, str, Transform]]) -> XLSTMLM:
    """A recurlm model of ``cfg`` holding the reference's tensors (``entries``: ours, theirs, transform)."""
    theirs = reference.state_dict()
    model = XLSTMLM(cfg).to(next(reference.parameters()).dtype)
    model.load_state_dict({ours: transform(theirs[key]) for ours, key, transform in entries})
    return model


# ---------------------------------------------------------------------------------------------------
# xLSTM-7B (xlstm.xlstm_large / transformers)

def config_from_xlstm_large(ref: Any) -> XLSTMConfig:
    """An XLSTMConfig (architecture xlstm7b) equal to an ``xLSTMLargeConfig`` or transformers ``xLSTMConfig``."""
    if ref.weight_mode != "single" or ref.use_bias or not ref.add_out_norm:
        raise ValueError("only weight_mode='single', use_bias=False and add_out_norm=True are supported, got "
                         f"{ref.weight_mode!r}, {ref.use_bias}, {ref.add_out_norm}")
    return XLSTMConfig(
        size="custom", architecture="xlstm7b", vocab_size=ref.vocab_size, d_model=ref.embedding_dim,
        n_layers=ref.num_blocks, n_heads=ref.num_heads, qk_dim_factor=ref.qk_dim_factor,
        v_dim_factor=ref.v_dim_factor, ffn_factor=ref.ffn_proj_factor, round_to=ref.ffn_round_up_to_multiple_of,
        gate_soft_cap=ref.gate_soft_cap or 0.0, logit_softcap=ref.output_logit_soft_cap or 0.0,
        norm_eps=ref.norm_eps, mlstm_eps=ref.eps,
        tie_embeddings=False)  # both classes keep their own head (transformers' ignores tie_word_embeddings)


def key_map_xlstm_large(cfg: XLSTMConfig, embedding_key: str) -> list[tuple[str, str, Transform]]:
    entries = [("embed.weight", embedding_key), ("norm.weight", "backbone.out_norm.weight")]
    if not cfg.tie_embeddings:
        entries.append(("head.weight", "lm_head.weight"))
    for i in range(cfg.n_layers):
        ours, theirs = f"blocks.{i}.", f"backbone.blocks.{i}."
        names = [("mixer_norm.weight", "norm_mlstm.weight"), ("ffn_norm.weight", "norm_ffn.weight"),
                 ("mixer.norm.weight", "mlstm_layer.multihead_norm.weight")]
        names += [(f"mixer.{a}.weight", f"mlstm_layer.{b}.weight") for a, b in LINEAR_7B.items()]
        names += [(f"mixer.{g}.{w}", f"mlstm_layer.{g}_preact.{w}") for g in ("igate", "fgate") for w in ("weight", "bias")]
        names += [(f"ffn.{a}.weight", f"ffn.{b}.weight")
                  for a, b in (("gate_proj", "proj_up_gate"), ("up_proj", "proj_up"), ("down_proj", "proj_down"))]
        entries += [(ours + a, theirs + b) for a, b in names]
    return [(ours, theirs, _same) for ours, theirs in entries]


def from_xlstm_large(reference: torch.nn.Module) -> XLSTMLM:
    """A recurlm xLSTM-7B-style model with the weights of an ``xLSTMLarge`` or transformers
    ``xLSTMForCausalLM`` (same dtype)."""
    cfg = config_from_xlstm_large(reference.config)
    embedding_key = "backbone.embeddings.weight" if hasattr(reference.backbone, "embeddings") else "embedding.weight"
    return _load(cfg, reference, key_map_xlstm_large(cfg, embedding_key))


# ---------------------------------------------------------------------------------------------------
# v1 (xlstm.xLSTMLMModel)

def config_from_xlstm_v1(ref: Any) -> XLSTMConfig:
    """An XLSTMConfig (architecture v1) equal to an ``xLSTMLMModelConfig``."""
    mcfg = ref.mlstm_block.mlstm if ref.mlstm_block is not None else None
    scfg = ref.slstm_block.slstm if ref.slstm_block is not None else None
    ffn = ref.slstm_block.feedforward if ref.slstm_block is not None else None
    if ref.bias or not ref.add_post_blocks_norm:
        raise ValueError("only bias=False with the post-blocks norm is supported")
    if scfg is not None and (scfg.function != "slstm" or ffn is None or ffn.act_fn not in ACTIVATIONS_V1):
        raise ValueError(f"the sLSTM block must use the 'slstm' cell and a gated MLP with activation in "
                         f"{sorted(ACTIVATIONS_V1)}")
    widths = {c.conv1d_kernel_size for c in (mcfg, scfg) if c is not None}
    rounding = {(c.round_proj_up_dim_up, c.round_proj_up_to_multiple_of) for c in (mcfg, ffn) if c is not None}
    if len(widths) != 1 or len(rounding) != 1 or not next(iter(rounding))[0]:
        raise ValueError(f"mLSTM and sLSTM blocks must share the conv width and round up to one multiple; "
                         f"got widths {widths}, rounding {rounding}")
    kwargs = {}
    if mcfg is not None:
        kwargs.update(n_heads=mcfg.num_heads, proj_factor=mcfg.proj_factor, qkv_blocksize=mcfg.qkv_proj_blocksize)
    if scfg is not None:
        kwargs.update(slstm_heads=scfg.num_heads, slstm_ffn_factor=ffn.proj_factor,
                      slstm_ffn_activation=ACTIVATIONS_V1[ffn.act_fn])
    return XLSTMConfig(
        size="custom", architecture="v1", vocab_size=ref.vocab_size, d_model=ref.embedding_dim,
        n_layers=ref.num_blocks, slstm_at=list(ref.slstm_at), conv_width=widths.pop(),
        round_to=rounding.pop()[1], tie_embeddings=ref.tie_weights, norm_eps=1e-5, n_heads=kwargs.pop("n_heads", 1),
        **kwargs)


def _slstm_recurrent_kernel(w: torch.Tensor) -> torch.Tensor:
    heads, _, dim = w.shape  # vanilla layout [H, 4 E (g, j), E (d)] -> [H, E (d), 4 (g), E (j)]
    return w.reshape(heads, 4, dim, dim).permute(0, 3, 1, 2).contiguous()


def key_map_xlstm_v1(cfg: XLSTMConfig, reference_kinds: list[str]) -> list[tuple[str, str, Transform]]:
    entries = [("embed.weight", "token_embedding.weight", _same),
               ("norm.weight", "xlstm_block_stack.post_blocks_norm.weight", _same)]
    if not cfg.tie_embeddings:
        entries.append(("head.weight", "lm_head.weight", _same))
    heads, head_dim = cfg.slstm_heads, cfg.d_model // cfg.slstm_heads
    for i, kind in enumerate(reference_kinds):
        ours, theirs = f"blocks.{i}.", f"xlstm_block_stack.blocks.{i}."
        names = [("mixer_norm.weight", "xlstm_norm.weight"), ("mixer.conv.bias", "xlstm.conv1d.conv.bias")]
        special = [("mixer.conv.weight", "xlstm.conv1d.conv.weight", conv_from_torch)]
        if kind == "mlstm":
            names += [("mixer.skip", "xlstm.learnable_skip"), ("mixer.norm.weight", "xlstm.mlstm_cell.outnorm.weight")]
            names += [(f"mixer.{p}.weight", f"xlstm.{p}.weight") for p in ("proj_up", "q_proj", "k_proj", "v_proj", "proj_down")]
            names += [(f"mixer.{g}.{w}", f"xlstm.mlstm_cell.{g}.{w}") for g in ("igate", "fgate") for w in ("weight", "bias")]
        else:
            names += [("mixer.i_proj.weight", "xlstm.fgate.weight"), ("mixer.f_proj.weight", "xlstm.igate.weight"),
                      ("mixer.z_proj.weight", "xlstm.zgate.weight"), ("mixer.o_proj.weight", "xlstm.ogate.weight"),
                      ("mixer.norm.weight", "xlstm.group_norm.weight"), ("ffn_norm.weight", "ffn_norm.weight"),
                      ("ffn.down_proj.weight", "ffn.proj_down.weight")]
            special += [("mixer.R", "xlstm.slstm_cell._recurrent_kernel_", _slstm_recurrent_kernel),
                        ("mixer.bias", "xlstm.slstm_cell._bias_", lambda b: b.reshape(4, heads, head_dim)),
                        ("ffn.gate_proj.weight", "ffn.proj_up.weight", lambda w: w.chunk(2)[0]),
                        ("ffn.up_proj.weight", "ffn.proj_up.weight", lambda w: w.chunk(2)[1])]
        entries += [(ours + a, theirs + b, _same) for a, b in names]
        entries += [(ours + a, theirs + b, f) for a, b, f in special]
    return entries


def from_xlstm_v1(reference: torch.nn.Module) -> XLSTMLM:
    """A recurlm xLSTM v1 model with the weights of an ``xlstm.xLSTMLMModel`` (same dtype)."""
    cfg = config_from_xlstm_v1(reference.config)
    kinds = ["mlstm" if k == 0 else "slstm" for k in reference.config.block_map]
    return _load(cfg, reference, key_map_xlstm_v1(cfg, kinds))


# ---------------------------------------------------------------------------------------------------
# formats (recurlm.models.convert.formats)

_XLSTM_LARGE_FIELDS = ("embedding_dim", "num_heads", "num_blocks", "vocab_size", "use_bias", "norm_eps", "add_out_norm",
                       "qk_dim_factor", "v_dim_factor", "eps", "ffn_proj_factor", "ffn_round_up_to_multiple_of",
                       "gate_soft_cap", "output_logit_soft_cap", "weight_mode")
"""The architecture fields of ``xLSTMLargeConfig`` (the rest choose kernels, which the loader picks)."""


def _large_fields(cfg: XLSTMConfig) -> dict[str, Any]:
    if architecture(cfg) != "xlstm7b":
        raise ValueError(f"only architecture='xlstm7b' has a shared format (got {architecture(cfg)!r}; the v1 "
                         "mLSTM/sLSTM model is recurlm-only)")
    softcap = cfg.logit_softcap if cfg.logit_softcap is not None else 30.0  # XLSTMLM's default for xlstm7b
    return dict(embedding_dim=cfg.d_model, num_heads=cfg.n_heads, num_blocks=cfg.n_layers, vocab_size=cfg.vocab_size,
                use_bias=False, norm_eps=norm_eps(cfg), add_out_norm=True, qk_dim_factor=cfg.qk_dim_factor,
                v_dim_factor=cfg.v_dim_factor, eps=cfg.mlstm_eps, ffn_proj_factor=cfg.ffn_factor,
                ffn_round_up_to_multiple_of=cfg.round_to, gate_soft_cap=cfg.gate_soft_cap or None,
                output_logit_soft_cap=softcap or None, weight_mode="single")


class _XLSTMFormat(Format):
    families = ("xlstm",)
    embedding_key = ""

    def _pairs(self, cfg: XLSTMConfig) -> list:
        return [(ours, theirs, _same, _same) for ours, theirs, _ in key_map_xlstm_large(cfg, self.embedding_key)]

    def import_entries(self, cfg, keys):
        return pairs_to_entries(self._pairs(cfg), to_recurlm=True)

    def export_entries(self, cfg):
        entries = pairs_to_entries(self._pairs(cfg), to_recurlm=False)
        if cfg.tie_embeddings:  # both xLSTM classes always hold their own head (transformers' does not tie it)
            entries.append(Entry("lm_head.weight", ("embed.weight",)))
        return entries



class HFXLSTM(_XLSTMFormat):
    """transformers' ``xLSTMForCausalLM`` directory (``model_type`` xlstm; NX-AI/xLSTM-7b)."""

    name, embedding_key, hf_tokenizer = "hf-xlstm", "backbone.embeddings.weight", True
    loader = "transformers.AutoModelForCausalLM.from_pretrained(dir)"

    def detect(self, config, keys):
        return (config or {}).get("model_type") == "xlstm"

    def recurlm_config(self, config, shapes):
        import transformers

        return config_from_xlstm_large(transformers.xLSTMConfig.from_dict(config))

    def write_config(self, cfg, out_dir):
        import transformers

        fields = _large_fields(cfg)
        transformers.xLSTMConfig(
            hidden_size=fields.pop("embedding_dim"), num_hidden_layers=fields.pop("num_blocks"),
            tie_word_embeddings=False, architectures=["xLSTMForCausalLM"], **fields, **SPECIAL_TOKEN_IDS,
        ).save_pretrained(out_dir)

    def target_shapes(self, out_dir):
        import transformers

        return hf_meta_shapes(transformers.xLSTMForCausalLM, out_dir)


class XLSTMLargeStateDict(_XLSTMFormat):
    """The ``xlstm`` package's ``xLSTMLarge`` state dict (``model.pth`` / safetensors) with the
    architecture fields of its ``xLSTMLargeConfig`` as config.json (the package saves no config)."""

    name, embedding_key, sharded = "xlstm-large", "embedding.weight", False
    loader = ("xLSTMLarge(xLSTMLargeConfig(**json.load(open('config.json')))).load_state_dict("
              "safetensors.torch.load_file('model.safetensors'))")

    def detect(self, config, keys):
        return "embedding.weight" in keys and "backbone.blocks.0.mlstm_layer.q.weight" in keys

    def recurlm_config(self, config, shapes):
        from xlstm.xlstm_large.model import xLSTMLargeConfig

        return config_from_xlstm_large(xLSTMLargeConfig(**{k: config[k] for k in _XLSTM_LARGE_FIELDS if k in config}))

    def write_config(self, cfg, out_dir):
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump(_large_fields(cfg), f, indent=1)

    def target_shapes(self, out_dir):
        from xlstm.xlstm_large.model import xLSTMLarge, xLSTMLargeConfig

        with open(os.path.join(out_dir, "config.json")) as f:
            config = xLSTMLargeConfig(**json.load(f))
        with torch.device("meta"):
            return {k: v.shape for k, v in xLSTMLarge(config).state_dict().items()}
