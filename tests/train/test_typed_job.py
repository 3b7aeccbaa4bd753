"""compose() hands down a typed JobConfig; a run's config.yaml reads back as the same typed job."""
import pytest

from recurlm.configs import ConfigError, JobConfig, compose, load_yaml, to_yaml
from recurlm.data.config import DataConfig
from recurlm.eval.config import EvalConfig
from recurlm.launch.config import LaunchConfig
from recurlm.models.griffin import GriffinConfig
from recurlm.train.config import DeepSpeedConfig, LoggerConfig, OptimConfig, ScheduleConfig
from recurlm.train.recipe import RecipeConfig


def test_compose_returns_dataclasses_only():
    job = compose(["model=griffin", "model.size=tiny", "recipe=length_gen/tbtt"])
    assert isinstance(job, JobConfig) and isinstance(job.model, GriffinConfig)
    assert job.model.n_layers == 3  # the size preset is applied
    for value, cls in [(job.data, DataConfig), (job.optim, OptimConfig), (job.schedule, ScheduleConfig),
                       (job.deepspeed, DeepSpeedConfig), (job.logger, LoggerConfig), (job.launch, LaunchConfig),
                       (job.recipe, RecipeConfig), (job.eval, EvalConfig)]:
        assert type(value) is cls
    assert type(job.data.sources[0]).__name__ == "SourceConfig" and type(job.optim.betas) is list


def test_config_yaml_reads_back_as_the_same_typed_job(tmp_path):
    job = compose(["model=griffin", "model.size=tiny", "train.steps=7", "data=synthetic/mqar"])
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(job))
    again = load_yaml(str(path))
    assert again == job and isinstance(again.model, GriffinConfig)


def test_config_yaml_with_an_unknown_key_names_it(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(compose(["model.size=tiny"])).replace("train:\n", "train:\n  stepz: 3\n", 1))
    with pytest.raises(ConfigError, match="stepz"):
        load_yaml(str(path))
