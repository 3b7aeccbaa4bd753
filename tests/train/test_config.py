"""The Hydra config tree: composition, presets, and errors that name the bad key."""
import pytest
from omegaconf import OmegaConf

from recurlm.configs import ConfigError, compose
from recurlm.cli import train_main as main


def test_default_composes_with_every_group():
    cfg = compose()
    for group in ["model", "data", "optim", "schedule", "deepspeed", "logger", "launch", "recipe", "eval"]:
        assert hasattr(cfg, group), group
    assert cfg.model.family == "hgrn2" and cfg.model.d_model is not None  # the preset was applied
    assert cfg.data.sources[0].kind == "stdlib"


def test_size_preset_fills_fields_and_explicit_values_win():
    tiny = compose(["model.size=tiny"])
    assert tiny.model.n_layers == 2
    custom = compose(["model.size=tiny", "model.n_layers=5"])
    assert custom.model.n_layers == 5 and custom.model.d_model == tiny.model.d_model


@pytest.mark.parametrize("override, words", [
    (["model.foo=1"], ["foo", "Valid keys of 'model'", "expand_ratio"]),
    (["trian.steps=3"], ["trian"]),
    (["train.steps=abc"], ["train.steps", "abc"]),
    (["model=nope"], ["model/nope", "hgrn2"]),
    (["model.size=huge"], ["huge", "tiny"]),
    (["deepspeed=zero9"], ["deepspeed/zero9", "zero3"]),
])
def test_bad_config_names_the_key_and_the_choices(override, words):
    with pytest.raises(ConfigError) as err:
        compose(override)
    for word in words:
        assert word in str(err.value)


def test_cli_prints_the_config_and_reports_errors(capsys):
    assert main(["--cfg", "job", "model.size=tiny", "train.steps=7"]) == 0
    printed = OmegaConf.create(capsys.readouterr().out)
    assert printed.train.steps == 7 and printed.model.n_layers == 2
    assert main(["model.bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err
