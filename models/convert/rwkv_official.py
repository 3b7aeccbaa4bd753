"""recurlm ``rwkv7`` / ``rwkv6`` ↔ BlinkDL's official RWKV-7 (x070) / RWKV-6 (x060) checkpoint layout
(the ``.pth`` files of RWKV-LM, read by the ``rwkv`` package's ``RWKV_x070`` / ``RWKV``).

Official RWKV-7 keys: ``emb.weight``, ``blocks.0.ln0.*``, ``blocks.<i>.ln1.*`` / ``ln2.*``,
``blocks.<i>.att.{x_r, x_w, x_k, x_v, x_a, x_g, w0, w1, w2, a0, a1, a2, v0, v1, v2, g1, g2, k_k, k_a,
r_k, receptance, key, value, output, ln_x}``, ``blocks.<i>.ffn.{x_k, key, value}``, ``ln_out.*``,
``head.weight``. RWKV-6 has ``att.{time_maa_x, time_maa_<w,k,v,r,g>, time_maa_w1, time_maa_w2,
time_decay, time_decay_w1, time_decay_w2, time_faaaa, receptance, key, value, gate, output, ln_x}``
and ``ffn.{time_maa_k, time_maa_r, key, receptance, value}``. recurlm uses the same names under
``blocks.<i>.att`` / ``ffn`` (except the shared channel mixer's ``x_k`` / ``x_r``, RWKV-6's
``time_maa_k`` / ``time_maa_r``) and stores the official [1, 1, D] vectors as [D]; the rest is
renaming (``embed`` ↔ ``emb``, ``norm`` ↔ ``ln_out``).

RWKV-7's block 0 has no value-residual gate (it is the source of v_first): official checkpoints
still carry ``blocks.0.att.v0/v1/v2`` (created by the trainer, never read). ``to_official`` writes
zeros there so the checkpoint loads strictly into BlinkDL's trainer; ``from_official`` drops them.
"""

from __future__ import annotations

import torch

from recurlm.models.base import RecurrentLM
from recurlm.models.config import ModelConfig
from recurlm.models.convert.formats import Entry, Format, same
from recurlm.models.rwkv6 import RWKV6Config
from recurlm.models.rwkv7 import RWKV7Config

VECTOR_KEYS = {
    "rwkv7": {"att": ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "v0", "k_k", "k_a"), "ffn": ("x_k",)},
    "rwkv6": {"att": ("time_maa_x", "time_maa_w", "time_maa_k", "time_maa_v", "time_maa_r", "time_maa_g",
                      "time_decay"), "ffn": ("time_maa_k", "time_maa_r")},
}
"""Per family: parameters stored as [1, 1, D] officially and as [D] in recurlm (official names)."""

CHANNEL_MIX_NAMES = {"rwkv7": {}, "rwkv6": {"x_k": "time_maa_k", "x_r": "time_maa_r"}}
"""Per family: recurlm channel-mix parameter → official name (where they differ)."""

RENAMES = {"embed.weight": "emb.weight", "norm.weight": "ln_out.weight", "norm.bias": "ln_out.bias",
           "head.weight": "head.weight"}
"""Non-block tensors: recurlm name → official name."""


def _block_key(key: str, family: str, to_official: bool) -> tuple[str, bool]:
    """A ``blocks.<i>.<module>.<name>...`` key in the other layout, and whether it is a [D] vector."""
    parts = key.split(".")
    ours_to_official = CHANNEL_MIX_NAMES[family] if parts[2] == "ffn" else {}
    if to_official:
        parts[3] = ours_to_official.get(parts[3], parts[3])
        official_name = parts[3]
    else:
        official_name = parts[3]
        parts[3] = {v: k for k, v in ours_to_official.items()}.get(parts[3], parts[3])
    vector = len(parts) == 4 and official_name in VECTOR_KEYS[family].get(parts[2], ())
    return ".".join(parts), vector


def to_official(model: RecurrentLM) -> dict[str, torch.Tensor]:
    """recurlm RWKV-6/7 → official state dict (float32 copies, BlinkDL key names and shapes)."""
    cfg = model.config
    if cfg.family not in VECTOR_KEYS:
        raise ValueError(f"to_official converts rwkv6 / rwkv7 models, not {cfg.family!r}")
    if cfg.tie_embeddings:
        raise ValueError("official RWKV checkpoints have an untied head; tie_embeddings must be False")
    out = {}
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().float().clone()
        if key in RENAMES:
            out[RENAMES[key]] = tensor
        else:
            key, vector = _block_key(key, cfg.family, to_official=True)
            out[key] = tensor.view(1, 1, -1) if vector else tensor
    if cfg.family == "rwkv7":
        D, rank = cfg.d_model, cfg.value_lora
        out.update({"blocks.0.att.v0": torch.zeros(1, 1, D), "blocks.0.att.v1": torch.zeros(D, rank),
                    "blocks.0.att.v2": torch.zeros(rank, D)})
    return out


def _official_config(state_dict: dict[str, torch.Tensor], **overrides) -> ModelConfig:
    """The recurlm config of an official checkpoint, sizes read from the tensor shapes."""
    vocab, D = state_dict["emb.weight"].shape
    n_layers = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
    # the shapes set every preset field, so the size is only a label: the "tiny" these configs always had
    common = {"size": "tiny", "vocab_size": vocab, "d_model": D, "n_layers": n_layers,
              "ffn_hidden": state_dict["blocks.0.ffn.key.weight"].shape[0], **overrides}
    if "blocks.0.att.r_k" in state_dict:
        v_source = "blocks.1.att.v1" if n_layers > 1 else "blocks.0.att.v1"
        return RWKV7Config(head_dim=state_dict["blocks.0.att.r_k"].shape[1],
                           decay_lora=state_dict["blocks.0.att.w1"].shape[1],
                           iclr_lora=state_dict["blocks.0.att.a1"].shape[1],
                           value_lora=state_dict[v_source].shape[1],
                           gate_lora=state_dict["blocks.0.att.g1"].shape[1], **common)
    if "blocks.0.att.time_faaaa" in state_dict:
        return RWKV6Config(head_dim=state_dict["blocks.0.att.time_faaaa"].shape[1],
                           mix_lora=state_dict["blocks.0.att.time_maa_w2"].shape[1],
                           decay_lora=state_dict["blocks.0.att.time_decay_w1"].shape[1], **common)
    raise ValueError("not an official RWKV-6 (x060) or RWKV-7 (x070) checkpoint")


def from_official(state_dict: dict[str, torch.Tensor], **overrides) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Official RWKV-6/7 state dict → (recurlm config with sizes read from the shapes, state dict).

    ``overrides`` set further config fields (e.g. ``kernel_impl``)."""
    cfg = _official_config(state_dict, **overrides)
    inverse = {official: ours for ours, official in RENAMES.items()}
    out = {}
    for key, tensor in state_dict.items():
        if key in inverse:
            out[inverse[key]] = tensor
        elif cfg.family == "rwkv7" and key in ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"):
            continue  # unused in block 0
        else:
            key, vector = _block_key(key, cfg.family, to_official=False)
            out[key] = tensor.reshape(-1) if vector else tensor
    return cfg, out


OFFICIAL_EPS = {"norm_eps": 1e-5, "group_norm_eps": 64e-5}
"""The epsilons BlinkDL's runtime uses (LayerNorm default, ``ln_x`` group norm)."""

UNUSED_BLOCK0 = ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")


class BlinkDLPth(Format):
    """A BlinkDL RWKV-LM ``.pth`` (RWKV-7 x070 or RWKV-6 x060 key names), as ``rwkv.model.RWKV`` loads."""

    name, families, weights_file, needs_config = "rwkv-pth", ("rwkv7", "rwkv6"), "model.pth", False
    loader = "RWKV_V7_ON=1 python -c \"from rwkv.model import RWKV; RWKV('dir/model', strategy='cpu fp32')\""

    def detect(self, config, keys):
        return "emb.weight" in keys and "blocks.0.ffn.key.weight" in keys

    def recurlm_config(self, config, shapes):
        return _official_config({k: torch.empty(s, device="meta") for k, s in shapes.items()}, size="custom")

    def import_entries(self, cfg, keys):
        inverse = {official: ours for ours, official in RENAMES.items()}
        entries = []
        for key in keys:
            if key in inverse:
                entries.append(Entry(inverse[key], (key,)))
            elif key.startswith("blocks.") and not (cfg.family == "rwkv7" and key in UNUSED_BLOCK0):
                ours, vector = _block_key(key, cfg.family, to_official=False)
                entries.append(Entry(ours, (key,), _flat if vector else same))
        return entries

    def ignored_keys(self, cfg, keys):
        return set(UNUSED_BLOCK0) if cfg.family == "rwkv7" else set()

    def export_entries(self, cfg):
        from recurlm.models.registry import build_model

        with torch.device("meta"):
            ours_keys = list(build_model(cfg).state_dict())
        entries = []
        for key in ours_keys:
            if key in RENAMES:
                entries.append(Entry(RENAMES[key], (key,)))
            else:
                theirs, vector = _block_key(key, cfg.family, to_official=True)
                entries.append(Entry(theirs, (key,), _row if vector else same))
        if cfg.tie_embeddings:  # official checkpoints always have their own head
            entries.append(Entry("head.weight", ("embed.weight",)))
        if cfg.family == "rwkv7":  # read by nobody, present in official checkpoints (see the module docstring)
            D, rank = cfg.d_model, cfg.value_lora
            entries += [Entry(k, (), lambda shape=shape: torch.zeros(shape))
                        for k, shape in zip(UNUSED_BLOCK0, ((1, 1, D), (D, rank), (rank, D)))]
        return entries

    def write_config(self, cfg, out_dir):
        wrong = {k: getattr(cfg, k) for k, v in OFFICIAL_EPS.items() if abs(getattr(cfg, k) - v) > 1e-12}
        if wrong:
            raise ValueError(f"BlinkDL's runtime uses {OFFICIAL_EPS}; this model has {wrong}")


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1)


def _row(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(1, 1, -1)
