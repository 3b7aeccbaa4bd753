"""The Hydra config tree: composition, presets, and errors that name the bad key."""
from omegaconf import OmegaConf

from recurlm.configs import compose
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


def test_cli_prints_the_config_and_reports_errors(capsys):
    assert main(["--cfg", "job", "model.size=tiny", "train.steps=7"]) == 0
    printed = OmegaConf.create(capsys.readouterr().out)
    assert printed.train.steps == 7 and printed.model.n_layers == 2
    assert main(["model.bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err
