"""The Hydra config tree of recurlm (config module ``recurlm.configs``, primary config ``train.yaml``).

Groups: model, data, optim, schedule, deepspeed, logger, launch, recipe, eval. Every group is typed
by a dataclass that its package declares (``SCHEMAS`` in its config module, the model families in
``recurlm.models.registry.schemas``) and ``store_schemas`` registers in Hydra's ConfigStore as
``<group>/<name>_schema``; the YAML options extend it and set only what differs from its defaults
(a default lives in the dataclass alone), so a misspelled key or a wrong type fails at composition,
naming the key.

``compose(overrides)`` returns the composed job config with the model size preset applied
(``model.size=<preset>`` fills every model field left null). Each dataclass checks its own fields in
``__post_init__``; ``compose`` builds them once, so a bad value fails here, naming its key.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

CONFIG_MODULE = "recurlm.configs"
PRIMARY = "train"


class ConfigError(ValueError):
    """A configuration that cannot be composed or validated; the message names the key."""


def store_schemas() -> None:
    """Register in Hydra's ConfigStore the schema of every group, as each package declares it
    (``SCHEMAS`` of its config module: ``(group, name, dataclass)``; the model families from the registry)."""
    from hydra.core.config_store import ConfigStore

    from recurlm.data import config as data_config
    from recurlm.eval import config as eval_config
    from recurlm.launch import config as launch_config
    from recurlm.models import registry
    from recurlm.train import config as train_config
    from recurlm.train import recipe

    cs = ConfigStore.instance()
    for group, name, cls in (*train_config.SCHEMAS, *recipe.SCHEMAS, *data_config.SCHEMAS, *eval_config.SCHEMAS,
                             *launch_config.SCHEMAS, *registry.schemas()):
        cs.store(group=group, name=name, node=cls)


def _explain(err: Exception, overrides: Sequence[str]) -> str:
    """Hydra's message plus the valid keys of the node a bad key was aimed at."""
    text = str(err)
    cause = err.__cause__ or err.__context__
    if cause is not None and str(cause) not in text:
        text += f"\n{cause}"
    key = getattr(cause, "full_key", None) or getattr(err, "full_key", None)
    if key and "." in str(key):
        parent = str(key).rsplit(".", 1)[0]
        try:
            node = OmegaConf.select(compose(overrides=[o for o in overrides if not o.lstrip("+~").startswith(str(key))],
                                            apply_presets=False), parent)
            if isinstance(node, DictConfig):
                text += f"\nValid keys of '{parent}': {', '.join(sorted(node.keys()))}"
        except Exception:  # the explanation is best effort; the original error stands
            pass
    return text


def compose(overrides: Sequence[str] = (), apply_presets: bool = True,
            config_name: str = PRIMARY) -> DictConfig:
    """Compose ``train.yaml`` with command-line style ``overrides`` into a typed job config."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from recurlm.train.recipe import retired_recipe_message

    retired = retired_recipe_message(overrides)
    if retired:
        raise ConfigError(retired)
    store_schemas()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    except Exception as err:  # Hydra raises several types; all are configuration errors here
        raise ConfigError(_explain(err, overrides)) from None
    if apply_presets:
        cfg = with_model_preset(cfg)
    _checked(cfg)
    return cfg


def _checked(cfg: DictConfig) -> DictConfig:
    """``cfg`` after building its dataclasses once, so that each one's ``__post_init__`` checks its
    fields (and a missing mandatory value is reported), the message naming the key."""
    try:
        OmegaConf.to_object(cfg)
    except (ValueError, OmegaConfBaseException) as err:
        raise ConfigError(str(err)) from None
    return cfg


def with_model_preset(cfg: DictConfig) -> DictConfig:
    """The config with the model's size preset filled in (explicit values win)."""
    from recurlm.models.registry import to_model_config

    try:
        model = to_model_config(cfg.model)
    except (KeyError, ValueError) as err:
        raise ConfigError(str(err)) from None
    OmegaConf.set_struct(cfg, False)
    cfg.model = OmegaConf.structured(model)
    OmegaConf.set_struct(cfg, True)
    return cfg


def to_yaml(cfg: DictConfig, resolve: bool = True) -> str:
    return OmegaConf.to_yaml(cfg, resolve=resolve)


def load_yaml(path: str) -> DictConfig:
    """A job config written by a run (``<run_dir>/config.yaml``)."""
    return OmegaConf.load(path)


def as_dataclass(node: DictConfig, cls: type) -> object:
    """A plain dataclass instance of ``cls`` from a config node (unknown keys are an error)."""
    data = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{cls.__name__} has no field(s) {unknown}; valid: {sorted(known)}")
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), data))


__all__ = ["ConfigError", "store_schemas", "compose", "with_model_preset", "to_yaml", "load_yaml", "as_dataclass"]
