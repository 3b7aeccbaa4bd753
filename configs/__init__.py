"""The Hydra config tree of recurlm (config module ``recurlm.configs``, primary config ``train.yaml``).

Groups: model, data, optim, schedule, deepspeed, logger, launch, recipe, eval. Every group is typed
by a dataclass that its package declares (``SCHEMAS`` in its config module, the model families in
``recurlm.models.registry.schemas``) and ``store_schemas`` registers in Hydra's ConfigStore as
``<group>/<name>_schema``; the YAML options extend it and set only what differs from its defaults
(a default lives in the dataclass alone), so a misspelled key or a wrong type fails at composition,
naming the key.

``compose(overrides)`` returns the typed :class:`JobConfig` (converted from Hydra's ``DictConfig``
once, here; every package below receives dataclasses only), with the model size preset applied
(``model.size=<preset>`` fills every model field left null). Each dataclass checks its own fields in
``__post_init__`` as it is built, so a bad value fails here, naming its key. ``to_yaml`` /
``load_yaml`` write and read a run's ``config.yaml``.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from recurlm.data import config as data_config
from recurlm.data.config import DataConfig
from recurlm.eval import config as eval_config
from recurlm.eval.config import EvalConfig
from recurlm.launch import config as launch_config
from recurlm.launch.config import LaunchConfig
from recurlm.models import registry
from recurlm.models.registry import build_model, config_class, to_model_config
from recurlm.train import config as train_config
from recurlm.train import recipe
from recurlm.train.config import JobConfig
from recurlm.train.recipe import RecipeConfig, retired_recipe_message
from recurlm.train.run_records import config_yaml as to_yaml

CONFIG_MODULE = "recurlm.configs"
PRIMARY = "train"


class ConfigError(ValueError):
    """A configuration that cannot be composed or validated; the message names the key."""


def store_schemas() -> None:
    """Register in Hydra's ConfigStore the schema of every group, as each package declares it
    (``SCHEMAS`` of its config module: ``(group, name, dataclass)``; the model families from the registry)."""
    from hydra.core.config_store import ConfigStore

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
            node = OmegaConf.select(_compose_node([o for o in overrides if not o.lstrip("+~").startswith(str(key))]),
                                    parent)
            if isinstance(node, DictConfig):
                text += f"\nValid keys of '{parent}': {', '.join(sorted(node.keys()))}"
        except Exception:  # the explanation is best effort; the original error stands
            pass
    return text


def _compose_node(overrides: Sequence[str], config_name: str = PRIMARY) -> DictConfig:
    """Hydra's composition of ``config_name`` with ``overrides`` (untyped; only this module sees it)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    store_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def compose(overrides: Sequence[str] = (), config_name: str = PRIMARY) -> JobConfig:
    """Compose ``train.yaml`` with command-line style ``overrides`` into the typed job config."""
    retired = retired_recipe_message(overrides)
    if retired:
        raise ConfigError(retired)
    try:
        job = OmegaConf.to_object(_compose_node(overrides, config_name))
    except Exception as err:  # Hydra raises several types; all are configuration errors here
        raise ConfigError(_explain(err, overrides)) from None
    return with_model_preset(job)


def with_model_preset(job: JobConfig) -> JobConfig:
    """``job`` with its model's size preset filled in (explicit values win), and the model built once
    on the meta device (no storage), so that widths its layers cannot split (``d_model`` not a
    multiple of the heads, ...) fail here, naming the keys, and not when a queued job starts."""
    try:
        job.model = to_model_config(job.model)
        with torch.device("meta"):  # the vocabulary may still be unset: the trainer takes the tokenizer's
            build_model(dataclasses.replace(job.model, vocab_size=job.model.vocab_size or 256))
    except (KeyError, ValueError) as err:
        raise ConfigError(str(err)) from None
    return job


def load_yaml(path: str) -> JobConfig:
    """The typed job config a run wrote (``<run_dir>/config.yaml``); a key that no schema has is a
    ConfigError naming it."""
    written = OmegaConf.load(path)
    family = OmegaConf.select(written, "model.family")
    if family is None:
        raise ConfigError(f"{path}: no model.family")
    store_schemas()
    try:
        schema = OmegaConf.structured(JobConfig(model=config_class(family)(family=family), data=DataConfig(),
                                                launch=LaunchConfig(), recipe=RecipeConfig(), eval=EvalConfig()))
        return OmegaConf.to_object(OmegaConf.merge(schema, written))
    except Exception as err:  # OmegaConf's validation errors name the key
        raise ConfigError(f"{path}: {err}") from None


__all__ = ["ConfigError", "JobConfig", "store_schemas", "compose", "with_model_preset", "to_yaml", "load_yaml"]
