"""Turn a training checkpoint (any ZeRO stage, any world size) into a self-contained export.

``recurlm-convert export <checkpoint or run dir> [out_dir]`` consolidates the weights with
DeepSpeed's zero_to_fp32 (or reads the full module state without ZeRO) and writes
``recurlm.models.pretrained`` files, so evaluation and generation run without DeepSpeed.

Nothing here unpickles code: a checkpoint must verify against its manifest and every ``.pt`` file
must load weights-only (``checkpoint.verify``) before DeepSpeed's consolidation reads it.
"""
from __future__ import annotations

import glob
import os
from typing import Optional

import torch

from recurlm.models.pretrained import is_export, save_pretrained
from recurlm.train import checkpoint as ckpt
from recurlm.train import safe_load


def resolve_checkpoint(path: str) -> str:
    """A run dir, its checkpoints dir, or one checkpoint → one checkpoint directory."""
    for candidate in (path, os.path.join(path, "checkpoints")):
        if ckpt.is_valid(candidate):
            return candidate
        latest = ckpt.CheckpointManager(candidate).latest()
        if latest:
            return latest
    raise ckpt.CheckpointError(f"no recurlm checkpoint found at {path}")


def consolidated_state_dict(checkpoint_dir: str) -> dict[str, torch.Tensor]:
    """Full float32 weights from ``<checkpoint>/ds/state`` whatever ZeRO stage wrote them."""
    ckpt.verify(checkpoint_dir)
    ds_dir = os.path.join(checkpoint_dir, "ds")
    state_dir = os.path.join(ds_dir, "state")
    if glob.glob(os.path.join(state_dir, "*optim_states.pt")) and glob.glob(os.path.join(state_dir, "zero_pp_rank_*")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return dict(get_fp32_state_dict_from_zero_checkpoint(ds_dir, tag="state"))
    files = sorted(glob.glob(os.path.join(state_dir, "mp_rank_*_model_states.pt")))
    if not files:
        raise ckpt.CheckpointError(f"{state_dir} holds no DeepSpeed model states")
    return safe_load.load(files[0])["module"]


def export_checkpoint(path: str, out_dir: Optional[str] = None) -> str:
    """Write an export of the checkpoint at ``path`` (default ``<checkpoint>/export``); returns it."""
    checkpoint_dir = resolve_checkpoint(path)
    out_dir = out_dir or os.path.join(checkpoint_dir, "export")
    if is_export(out_dir):
        return out_dir
    state = ckpt.read_state(checkpoint_dir)
    weights = consolidated_state_dict(checkpoint_dir)
    tokenizer = state.get("tokenizer_path")
    info = {"source": os.path.abspath(checkpoint_dir), "step": state["step"], "tokens": state["tokens"],
            "tokenizer_sha256": state.get("tokenizer_sha256")}
    return save_pretrained(out_dir, state["model_config"], weights,
                           tokenizer if tokenizer and os.path.isfile(tokenizer) else None, info)


def load_for_inference(path: str, device: str | torch.device = "cpu"):
    """(model, tokenizer path or None, info) from an export dir, a checkpoint, or a run dir."""
    import json

    from recurlm.models.pretrained import INFO, load_pretrained, tokenizer_file

    export = path if is_export(path) else export_checkpoint(path)
    with open(os.path.join(export, INFO)) as f:
        info = json.load(f)
    return load_pretrained(export, device=device), tokenizer_file(export), info
