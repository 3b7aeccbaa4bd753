"""A default lives in one place: its dataclass. No YAML under configs/ sets a field to the value the
dataclass backing it (found through the schemas in Hydra's ConfigStore) already gives it."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from recurlm import configs

CONFIG_DIR = Path(configs.__file__).parent
YAML_FILES = sorted(p for p in CONFIG_DIR.rglob("*.yaml")
                    if p.relative_to(CONFIG_DIR).parts[0] != "model_sizes")  # size tables, not schema-typed
"""Every option file of every group, and the primary config."""


def _schema_paths(path: Path, doc: dict, root: Path) -> dict[str, str]:
    """``{package in the file ('' = its root): ConfigStore path of the schema typing it}``."""
    parts = path.relative_to(root).parts
    group = parts[0] if len(parts) > 1 else ""
    schemas = {}
    for entry in doc.get("defaults", []):
        if not isinstance(entry, str) or not entry.partition("@")[0].endswith("_schema"):
            continue  # a group selection (train.yaml) or _self_
        target, _, package = entry.partition("@")
        target = target[1:] if target.startswith("/") else "/".join(filter(None, [group, target]))
        schemas["" if package in ("", "_here_") else package] = target
    if path.read_text().startswith("# @package _global_"):  # the other top-level keys are groups
        schemas.update({key: f"{key}/{key}_schema" for key in doc if key != "defaults" and key not in schemas})
    return schemas


def _repeated_defaults(values: dict, cls: type, defaults: dict, where: str) -> list[str]:
    """Keys of ``values`` (a YAML mapping typed by dataclass ``cls`` whose defaults are ``defaults``)
    that repeat their default, nested dataclass nodes and lists of dataclasses included."""
    hints = typing.get_type_hints(cls)
    found = []
    for key, value in values.items():
        if key == "defaults" or key not in defaults:
            continue  # the defaults list; a key of a free-form dict field (composition rejects unknown keys)
        hint = hints.get(key)
        element = (typing.get_args(hint) or [None])[0] if typing.get_origin(hint) is list else None
        if dataclasses.is_dataclass(element) and isinstance(value, list):  # as composed: items extend fresh elements
            value = [OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(element), item)) for item in value]
        if value == defaults[key]:
            found.append(f"{where}{key}: {values[key]!r}")
            continue
        if dataclasses.is_dataclass(hint) and isinstance(value, dict) and isinstance(defaults[key], dict):
            found += _repeated_defaults(value, hint, defaults[key], f"{where}{key}.")
        elif dataclasses.is_dataclass(element) and isinstance(value, list):
            fresh = OmegaConf.to_container(OmegaConf.structured(element))
            for i, item in enumerate(values[key]):
                if isinstance(item, dict):
                    found += _repeated_defaults(item, element, fresh, f"{where}{key}[{i}].")
    return found


def repeated_defaults(path: Path, root: Path = CONFIG_DIR) -> list[str]:
    """Every line of the YAML file ``path`` (in the config tree ``root``) that merely repeats its
    dataclass default."""
    doc = OmegaConf.to_container(OmegaConf.load(path))
    schemas = _schema_paths(path, doc, root)
    assert schemas, f"{path}: no *_schema in its defaults list: nothing types this file"
    found = []
    for package, schema_path in schemas.items():
        node = ConfigStore.instance().load(f"{schema_path}.yaml").node
        values = doc if package == "" else doc.get(package, {})
        found += _repeated_defaults(values, OmegaConf.get_type(node), OmegaConf.to_container(node),
                                    f"{package}." if package else "")
    return found


@pytest.fixture(scope="module", autouse=True)
def schemas_stored():
    configs.store_schemas()


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_yaml_sets_only_what_differs_from_the_dataclass(path: Path):
    assert repeated_defaults(path) == [], f"{path.relative_to(CONFIG_DIR)} repeats dataclass defaults"


def test_the_check_finds_a_repeated_default_in_a_nested_node(tmp_path: Path):
    option = tmp_path / "data" / "repeats.yaml"
    option.parent.mkdir()
    option.write_text("defaults:\n  - data_schema\n  - _self_\n"
                      "num_workers: 3\ntokenizer:\n  vocab_size: 4096\n  model_type: unigram\n"
                      "sources:\n  - name: web\n    kind: jsonl\n    weight: 1.0\n")
    assert repeated_defaults(option, tmp_path) == ["tokenizer.vocab_size: 4096", "sources[0].weight: 1.0"]


def test_the_check_types_each_group_of_a_global_option(tmp_path: Path):
    option = tmp_path / "recipe" / "global.yaml"
    option.parent.mkdir()
    option.write_text("# @package _global_\ndefaults:\n  - /recipe/recipe_schema@recipe\n  - _self_\n"
                      "recipe:\n  name: tbtt\n  seed: 0\nschedule:\n  warmup: 0.05\n  name: wsd\n")
    assert repeated_defaults(option, tmp_path) == ["recipe.seed: 0", "schedule.warmup: 0.05"]
