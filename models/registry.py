"""Model families by name, and ``build_model`` from a config node.

Each family module defines ``CONFIG`` (its :class:`ModelConfig` subclass) and ``MODEL`` (its
:class:`RecurrentLM` subclass). Modules are imported on first use.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Mapping

from recurlm.models.base import RecurrentLM
from recurlm.models.config import ModelConfig, apply_preset

FAMILIES: dict[str, str] = {
    "hgrn2": "recurlm.models.hgrn2",
    "griffin": "recurlm.models.griffin",
    "hawk": "recurlm.models.griffin",
    "rwkv6": "recurlm.models.rwkv6",
    "rwkv7": "recurlm.models.rwkv7",
    "titans_mac": "recurlm.models.titans",
    "titans_mag": "recurlm.models.titans",
    "titans_mal": "recurlm.models.titans",
    "xlstm": "recurlm.models.xlstm",
}


def family_module(family: str):
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; choose one of {sorted(FAMILIES)}")
    return importlib.import_module(FAMILIES[family])


def config_class(family: str) -> type[ModelConfig]:
    module = family_module(family)
    configs = getattr(module, "CONFIGS", None)
    return configs[family] if configs else module.CONFIG


def schemas() -> list[tuple[str, str, type[ModelConfig]]]:
    """``(group, name, dataclass)`` of each family's schema (``model/<family>_schema``), stored in
    Hydra's ConfigStore by ``recurlm.configs``; a family whose module is not part of this build is left out."""
    found = []
    for family in FAMILIES:
        try:
            found.append(("model", f"{family}_schema", config_class(family)))
        except ModuleNotFoundError:
            continue
    return found


def to_model_config(cfg: ModelConfig | Mapping[str, Any]) -> ModelConfig:
    """A ModelConfig dataclass from a dataclass or a plain dict (a checkpoint's ``model_config``),
    with the preset applied."""
    if not isinstance(cfg, ModelConfig):
        cls = config_class(cfg["family"])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise KeyError(f"{cls.__name__} has no field(s) {unknown}; valid: {sorted(known)}")
        cfg = cls(**cfg)
    return apply_preset(dataclasses.replace(cfg))


def build_model(cfg: Any) -> RecurrentLM:
    """Build any family from its config (``cfg.family`` selects the class)."""
    cfg = to_model_config(cfg)
    module = family_module(cfg.family)
    models = getattr(module, "MODELS", None)
    return (models[cfg.family] if models else module.MODEL)(cfg)
