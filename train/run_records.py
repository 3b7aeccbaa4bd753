"""A run's records in ``run_dir``: ``config.yaml`` is written only once the run is known to
proceed (a refused resume leaves the records of the run it refused untouched), and a finished run
is not silently "rerun" with another config.
"""
from __future__ import annotations

import os
from typing import Any

from omegaconf import OmegaConf

from recurlm.models.checkpoint_files import CheckpointError

IGNORED_KEYS = ("run_dir", "resume", "launch", "logger")
"""Keys that say where, how and with which logging a run is started, not what it trains."""


def config_yaml(cfg: Any) -> str:
    """The YAML text of a typed config (a run's ``config.yaml``, ``recurlm-train --cfg job``)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_dict(cfg: Any) -> dict[str, Any]:
    """A typed config as plain dicts and lists (W&B's run config, a checkpoint's model config)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg))


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        flat = {}
        for key, value in tree.items():
            flat.update(_flat(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: tree}


def config_differences(saved_yaml: str, new_yaml: str) -> list[str]:
    """``key: saved -> new`` for every key whose value differs, ``IGNORED_KEYS`` aside."""
    saved = _flat(OmegaConf.to_container(OmegaConf.create(saved_yaml), resolve=False))
    new = _flat(OmegaConf.to_container(OmegaConf.create(new_yaml), resolve=False))
    absent = "(absent)"
    return [f"{key}: {saved.get(key, absent)} -> {new.get(key, absent)}" for key in sorted(set(saved) | set(new))
            if not key.startswith(IGNORED_KEYS) and saved.get(key, absent) != new.get(key, absent)]


def refuse_changed_finished_run(checkpoint: str, step: int, steps: int, config_yaml: str) -> None:
    """Raise :class:`CheckpointError` listing the differing keys if the run of ``checkpoint`` is
    finished (``step >= steps``: nothing would be trained) and ``config_yaml`` differs from its config."""
    path = os.path.join(checkpoint, "config.yaml")
    if step < steps or not os.path.isfile(path):
        return
    with open(path) as f:
        differences = config_differences(f.read(), config_yaml)
    if differences:
        run_dir = os.path.dirname(os.path.dirname(os.path.abspath(checkpoint)))
        raise CheckpointError(
            f"{run_dir} is a finished run (step {step} of {steps}) with another config; nothing would be "
            f"trained and its records would not match it. Differing keys:\n  " + "\n  ".join(differences)
            + "\nTo train this config, give it a new run_dir (or leave run_dir empty for a fresh one); to "
              "continue the finished run, raise train.steps.")


def write_config(run_dir: str, config_yaml: str) -> None:
    """Write ``<run_dir>/config.yaml`` (rank 0, once the run proceeds)."""
    os.makedirs(run_dir, exist_ok=True)
    tmp = os.path.join(run_dir, f"config.yaml.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(config_yaml)
    os.replace(tmp, os.path.join(run_dir, "config.yaml"))
