"""recurlm ``rwkv7`` ↔ BlinkDL's official RWKV-7 (x070) checkpoint layout (the ``.pth`` files of
RWKV-LM, read by the ``rwkv`` package's ``RWKV_x070``).

Official keys: ``emb.weight``, ``blocks.0.ln0.*``, ``blocks.<i>.ln1.*`` / ``ln2.*``,
``blocks.<i>.att.{x_r, x_w, x_k, x_v, x_a, x_g, w0, w1, w2, a0, a1, a2, v0, v1, v2, g1, g2, k_k, k_a,
r_k, receptance, key, value, output, ln_x}``, ``blocks.<i>.ffn.{x_k, key, value}``, ``ln_out.*``,
``head.weight``. recurlm uses the same names under ``blocks.<i>.att`` / ``ffn`` and stores the
official [1, 1, D] vectors as [D]; the rest is renaming (``embed`` ↔ ``emb``, ``norm`` ↔ ``ln_out``).

Block 0 has no value-residual gate (it is the source of v_first): official checkpoints still carry
``blocks.0.att.v0/v1/v2`` (created by the trainer, never read). ``to_official`` writes zeros there
so the checkpoint loads strictly into BlinkDL's trainer; ``from_official`` drops them.
"""
from __future__ import annotations

import torch

from recurlm.models.rwkv7 import RWKV7Config, RWKV7LM

VECTOR_KEYS = ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "v0", "k_k", "k_a")
"""Time-mix parameters stored as [1, 1, D] officially and as [D] in recurlm."""

RENAMES = {"embed.weight": "emb.weight", "norm.weight": "ln_out.weight", "norm.bias": "ln_out.bias",
           "head.weight": "head.weight"}
"""Non-block tensors: recurlm name → official name."""


def _is_vector(key: str) -> bool:
    parts = key.split(".")
    return (parts[2] == "att" and parts[3] in VECTOR_KEYS) or (parts[2] == "ffn" and parts[3] == "x_k")


def to_official(model: RWKV7LM) -> dict[str, torch.Tensor]:
    """recurlm RWKV-7 → official state dict (float32 copies, BlinkDL key names and shapes)."""
    if model.config.tie_embeddings:
        raise ValueError("official RWKV-7 checkpoints have an untied head; tie_embeddings must be False")
    out = {}
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().float().clone()
        if key in RENAMES:
            out[RENAMES[key]] = tensor
        else:
            out[key] = tensor.view(1, 1, -1) if _is_vector(key) else tensor
    D = model.config.d_model
    rank = model.config.value_lora
    out.update({"blocks.0.att.v0": torch.zeros(1, 1, D), "blocks.0.att.v1": torch.zeros(D, rank),
                "blocks.0.att.v2": torch.zeros(rank, D)})
    return out


def from_official(state_dict: dict[str, torch.Tensor], **overrides) -> tuple[RWKV7Config, dict[str, torch.Tensor]]:
    """Official RWKV-7 state dict → (RWKV7Config with sizes read from the shapes, recurlm state dict).

    ``overrides`` set further config fields (e.g. ``kernel_impl``)."""
    vocab, D = state_dict["emb.weight"].shape
    H, N = state_dict["blocks.0.att.r_k"].shape
    n_layers = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
    v_source = "blocks.1.att.v1" if n_layers > 1 else "blocks.0.att.v1"
    cfg = RWKV7Config(vocab_size=vocab, d_model=D, n_layers=n_layers, head_dim=N,
                      ffn_hidden=state_dict["blocks.0.ffn.key.weight"].shape[0],
                      decay_lora=state_dict["blocks.0.att.w1"].shape[1],
                      iclr_lora=state_dict["blocks.0.att.a1"].shape[1],
                      value_lora=state_dict[v_source].shape[1],
                      gate_lora=state_dict["blocks.0.att.g1"].shape[1], **overrides)
    inverse = {official: ours for ours, official in RENAMES.items()}
    out = {}
    for key, tensor in state_dict.items():
        if key in inverse:
            out[inverse[key]] = tensor
        elif key.startswith("blocks.0.att.v") and key.split(".")[3] in ("v0", "v1", "v2"):
            continue  # unused in block 0
        else:
            out[key] = tensor.reshape(-1) if _is_vector(key) else tensor
    return cfg, out
