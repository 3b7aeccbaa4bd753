"""The configuration every model family shares.

Each family subclasses :class:`ModelConfig` with its own fields. Size-dependent fields default to
``None`` and are filled from the family's preset table (``configs/model_sizes/<family>.yaml``,
chosen by ``size``); a value set explicitly (e.g. ``model.n_layers=4``) wins over the preset.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from importlib import resources
from typing import Any, Dict, Optional

import yaml

from recurlm.kernels.dispatch import IMPLS


@dataclass
class ModelConfig:
    family: str = "?"
    """Model family (hgrn2, griffin, hawk, rwkv6, rwkv7, titans_mac, titans_mag, titans_mal, xlstm)."""
    size: str = "small"
    """Preset from configs/model_sizes/<family>.yaml filling every size field left unset (null)."""
    vocab_size: int = 0
    """Vocabulary size; 0 takes it from the tokenizer when the trainer builds the model."""
    d_model: Optional[int] = None
    """Width of the residual stream."""
    n_layers: Optional[int] = None
    """Number of residual blocks."""
    tie_embeddings: bool = False
    """Share the input embedding matrix with the output head."""
    norm_eps: float = 1e-6
    """Epsilon of the RMS norms."""
    init_std: float = 0.02
    """Standard deviation of the normal initialisation of projections and embeddings."""
    kernel_impl: str = "auto"
    """Recurrence implementation: auto (Triton on CUDA, chunk elsewhere), naive, chunk or triton."""
    layer_overrides: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    """Per block index (a string key), fields whose value differs in that block, e.g.
    ``{"5": {"head_dim": 64}}``: a layer whose state ``recurlm-convert expand-state --layers`` grew.
    Empty: every block uses the fields above."""

    def __post_init__(self) -> None:
        if self.kernel_impl not in IMPLS:
            raise ValueError(f"model.kernel_impl must be one of {IMPLS}, got {self.kernel_impl!r}")

    def for_layer(self, index: int) -> "ModelConfig":
        """The config block ``index`` is built from (``layer_overrides`` applied)."""
        changes = self.layer_overrides.get(str(index))
        return dataclasses.replace(self, **changes, layer_overrides={}) if changes else self


def preset_table(family: str) -> dict[str, dict]:
    """The size presets of a family, as read from ``recurlm/configs/model_sizes/<family>.yaml``."""
    text = resources.files("recurlm.configs").joinpath("model_sizes", f"{family}.yaml").read_text()
    return yaml.safe_load(text)


def _preset_fields(table: dict[str, dict]) -> set[str]:
    """Fields every preset sets: a custom size must set them. A field only some presets set (e.g.
    xLSTM's ``architecture``) has a meaningful None, which the other presets already rely on."""
    return set.intersection(*(set(preset) for preset in table.values()))


def apply_preset(cfg: ModelConfig) -> ModelConfig:
    """Fill the fields of ``cfg`` left at None from its family's ``size`` preset (in place)."""
    table = preset_table(cfg.family)
    if cfg.size not in table:
        unset = [f.name for f in fields(cfg) if getattr(cfg, f.name) is None and f.name in _preset_fields(table)]
        if unset:  # a custom size (e.g. converted from a reference model) must set every size field
            raise ValueError(f"model.size={cfg.size!r} is not a {cfg.family} preset (choose one of "
                             f"{sorted(table)}) and these fields are unset: {unset}")
        return cfg
    names = {f.name for f in fields(cfg)}
    for key, value in table[cfg.size].items():
        if key not in names:
            raise KeyError(f"preset {cfg.family}/{cfg.size} sets unknown field {key!r}")
        if getattr(cfg, key) is None:
            setattr(cfg, key, value)
    return cfg
