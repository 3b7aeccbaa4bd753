"""Self-contained model directories ("exports"): weights + config, loadable without DeepSpeed.

    <dir>/model.safetensors   consolidated float32 weights
    <dir>/config.json         the model config (family, size, every field)
    <dir>/tokenizer.model     the SentencePiece model the weights were trained with (if known)
    <dir>/export.json         provenance (source checkpoint, step, tokenizer sha256)

``export_checkpoint`` writes one from a training checkpoint (any ZeRO stage, any world size:
``recurlm.models.checkpoint_files`` verifies and consolidates it); ``load_for_inference`` takes an
export, a checkpoint or a run dir, so evaluation and generation run without DeepSpeed.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, Optional

import torch
from safetensors.torch import load_file, save_file

from recurlm.models.base import RecurrentLM
from recurlm.models.checkpoint_files import consolidated_state_dict, read_state, resolve_checkpoint
from recurlm.models.registry import build_model, to_model_config

WEIGHTS, CONFIG, TOKENIZER, INFO = "model.safetensors", "config.json", "tokenizer.model", "export.json"


def is_export(path: str) -> bool:
    """Whether ``path`` holds a recurlm export (a transformers or fla directory has the same two file
    names: its config.json names no recurlm ``family``)."""
    if not (os.path.isfile(os.path.join(path, WEIGHTS)) and os.path.isfile(os.path.join(path, CONFIG))):
        return False
    try:
        with open(os.path.join(path, CONFIG)) as f:
            return "family" in json.load(f)
    except (OSError, ValueError):
        return False


def save_pretrained(out_dir: str, model_config: Any, state_dict: dict[str, torch.Tensor],
                    tokenizer_path: Optional[str] = None, info: Optional[dict[str, Any]] = None) -> str:
    os.makedirs(out_dir, exist_ok=True)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state_dict.items()}
    # tied weights appear once in a state dict from a module, but safetensors refuses shared storage
    save_file({k: v.clone() for k, v in tensors.items()}, os.path.join(out_dir, WEIGHTS))
    return write_export_files(out_dir, model_config, tokenizer_path, info)


def write_export_files(out_dir: str, model_config: Any, tokenizer_path: Optional[str] = None,
                       info: Optional[dict[str, Any]] = None) -> str:
    """Everything of an export but the weights: config.json, tokenizer.model (if given), export.json."""
    cfg = to_model_config(model_config)
    with open(os.path.join(out_dir, CONFIG), "w") as f:
        json.dump(dataclasses.asdict(cfg), f, indent=1)
    if tokenizer_path:
        shutil.copyfile(tokenizer_path, os.path.join(out_dir, TOKENIZER))
    with open(os.path.join(out_dir, INFO), "w") as f:
        json.dump(info or {}, f, indent=1)
    return out_dir


def load_pretrained(path: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                    **config_overrides: Any) -> RecurrentLM:
    """Build the model of an export directory and load its weights (strict)."""
    if not is_export(path):
        raise FileNotFoundError(f"{path} is not a recurlm export (needs {WEIGHTS} and {CONFIG})")
    with open(os.path.join(path, CONFIG)) as f:
        cfg = {**json.load(f), **config_overrides}
    with torch.device("meta"):
        model = build_model(cfg)
    state = load_file(os.path.join(path, WEIGHTS))
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval()


def tokenizer_file(path: str) -> Optional[str]:
    candidate = os.path.join(path, TOKENIZER)
    return candidate if os.path.isfile(candidate) else None


def export_checkpoint(path: str, out_dir: Optional[str] = None) -> str:
    """Write an export of the checkpoint at ``path`` (default ``<checkpoint>/export``); returns it."""
    checkpoint_dir = resolve_checkpoint(path)
    out_dir = out_dir or os.path.join(checkpoint_dir, "export")
    if is_export(out_dir):
        return out_dir
    state = read_state(checkpoint_dir)
    weights = consolidated_state_dict(checkpoint_dir)
    tokenizer = state.get("tokenizer_path")
    info = {"source": os.path.abspath(checkpoint_dir), "step": state["step"], "tokens": state["tokens"],
            "tokenizer_sha256": state.get("tokenizer_sha256")}
    return save_pretrained(out_dir, state["model_config"], weights,
                           tokenizer if tokenizer and os.path.isfile(tokenizer) else None, info)


def load_for_inference(path: str, device: str | torch.device = "cpu") -> tuple[RecurrentLM, Optional[str], dict]:
    """(model, tokenizer path or None, info) from an export dir, a checkpoint, or a run dir."""
    export = path if is_export(path) else export_checkpoint(path)
    with open(os.path.join(export, INFO)) as f:
        info = json.load(f)
    return load_pretrained(export, device=device), tokenizer_file(export), info
