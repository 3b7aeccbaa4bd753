"""The Hydra config tree of recurlm (config module ``recurlm.configs``, primary config ``train.yaml``).

Groups: model, data, optim, schedule, deepspeed, logger, launch, recipe, eval. Every group is typed
by a dataclass registered in Hydra's ConfigStore as ``<group>/<name>_schema``; the YAML options
extend it, so a misspelled key or a wrong type fails at composition, naming the key.

``compose(overrides)`` returns the typed :class:`JobConfig` (converted from Hydra's ``DictConfig``
once, here; every package below receives dataclasses only), with the model size preset applied
(``model.size=<preset>`` fills every model field left null). ``to_yaml`` / ``load_yaml`` write and
read a run's ``config.yaml``.
"""
from __future__ import annotations

from typing import Sequence

from omegaconf import DictConfig, OmegaConf

from recurlm.data.config import DataConfig
from recurlm.eval.config import EvalConfig
from recurlm.launch.config import LaunchConfig
from recurlm.models.registry import FAMILIES, config_class, to_model_config
from recurlm.train.config import (DeepSpeedConfig, JobConfig, LoggerConfig, OptimConfig,
                                  ScheduleConfig)
from recurlm.train.recipe import RecipeConfig, retired_recipe_message
from recurlm.train.run_records import config_yaml as to_yaml

CONFIG_MODULE = "recurlm.configs"
PRIMARY = "train"


class ConfigError(ValueError):
    """A configuration that cannot be composed or validated; the message names the key."""


def _store() -> None:
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="job_schema", node=JobConfig)
    for family in FAMILIES:
        try:
            cls = config_class(family)
        except ModuleNotFoundError:  # a family whose module is not part of this build
            continue
        cs.store(group="model", name=f"{family}_schema", node=cls(family=family))
    for group, cls in [("data", DataConfig), ("optim", OptimConfig), ("schedule", ScheduleConfig),
                       ("deepspeed", DeepSpeedConfig), ("logger", LoggerConfig), ("launch", LaunchConfig),
                       ("recipe", RecipeConfig), ("eval", EvalConfig)]:
        cs.store(group=group, name=f"{group}_schema", node=cls)


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

    _store()
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
    """``job`` with its model's size preset filled in (explicit values win)."""
    try:
        job.model = to_model_config(job.model)
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
    _store()
    try:
        schema = OmegaConf.structured(JobConfig(model=config_class(family)(family=family), data=DataConfig(),
                                                launch=LaunchConfig(), recipe=RecipeConfig(), eval=EvalConfig()))
        return OmegaConf.to_object(OmegaConf.merge(schema, written))
    except Exception as err:  # OmegaConf's validation errors name the key
        raise ConfigError(f"{path}: {err}") from None


__all__ = ["ConfigError", "JobConfig", "compose", "with_model_preset", "to_yaml", "load_yaml"]
