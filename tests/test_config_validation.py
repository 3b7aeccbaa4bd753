"""A bad configuration fails when the job is composed, naming the key: a misspelled key or option
(Hydra against the registered schemas, listing the valid ones) and a value out of range (each
dataclass's ``__post_init__``, and the model's widths when it is built on the meta device)."""
import pytest

from recurlm.configs import ConfigError, compose

BAD_NAMES = [
    (["model.foo=1"], ["foo", "Valid keys of 'model'", "expand_ratio"]),
    (["trian.steps=3"], ["trian"]),
    (["train.steps=abc"], ["train.steps", "abc"]),
    (["model=nope"], ["model/nope", "hgrn2"]),
    (["model.size=huge"], ["huge", "tiny"]),
    (["deepspeed=zero9"], ["deepspeed/zero9", "zero3"]),
]

BAD_VALUES = [
    (["train.seq_len=0"], ["train.seq_len=0"]),
    (["train.global_batch_size=0"], ["train.global_batch_size=0"]),
    (["train.global_batch_size=8", "train.micro_batch_size=3"], ["train.micro_batch_size=3", "global_batch_size=8"]),
    (["deepspeed.precision=fp8"], ["deepspeed.precision", "fp8"]),
    (["deepspeed.zero_stage=4"], ["deepspeed.zero_stage", "4"]),
    (["deepspeed=zero0", "deepspeed.precision=bf16"], ["deepspeed.precision=bf16 needs zero_stage >= 1"]),
    (["deepspeed=zero1", "deepspeed.offload_optimizer=true"], ["deepspeed.offload_optimizer"]),
    (["deepspeed=zero2", "deepspeed.offload_param=true"], ["deepspeed.offload_param"]),
    (["optim.name=sgd"], ["optim.name", "sgd"]),
    (["schedule.name=linear"], ["schedule.name", "linear"]),
    (["schedule.unit=epochs"], ["schedule.unit", "epochs"]),
    (["data.valid_fraction=1.5"], ["data.valid_fraction=1.5"]),
    (["data.loader_mode=random"], ["data.loader_mode", "random"]),
    (["data.num_workers=0"], ["data.num_workers"]),
    (["data.worker_timeout_s=0"], ["data.worker_timeout_s=0"]),
    (["data.sources.0.kind=csv"], ["data.sources[stdlib].kind", "csv"]),
    (["data.sources.0.weight=0"], ["data.sources[stdlib].weight=0"]),
    (["data.sources.0.kind=text"], ["data.sources[stdlib]", "needs 'paths'"]),
    (["data=jsonl"], ["data.sources[web]", "needs 'paths'"]),  # the option leaves its paths to the user
    (["data.tokenizer.model_type=wordpiece"], ["data.tokenizer.model_type", "wordpiece"]),
    (["data.tokenizer.vocab_size=100"], ["data.tokenizer.vocab_size 100 is too small"]),
    (["recipe.name=bogus"], ["recipe.name", "bogus"]),
    (["recipe=length_gen/random_noise", "recipe.noise_scale=-1"], ["recipe.noise_scale=-1"]),
    (["recipe=length_gen/fitted_noise", "recipe.fit_batches=0"], ["recipe.fit_batches=0"]),
    (["eval.tasks=[ppl,nope]"], ["eval.tasks", "nope"]),
    (["eval.state_tracking_tasks=[parity,s7]"], ["eval.state_tracking_tasks", "s7"]),
    (["model=griffin", "model.n_heads=5"], ["d_model=256", "n_heads=5"]),
    (["model=rwkv7", "model.head_dim=7"], ["d_model=256", "head_dim=7"]),
    (["logger.wandb.mode=dryrun"], ["logger.wandb.mode", "dryrun"]),
    (["launch.mode=cloud"], ["launch.mode", "cloud"]),
    (["launch.launcher=mpirun"], ["launch.launcher", "mpirun"]),
    (["model.kernel_impl=cuda"], ["model.kernel_impl", "cuda"]),
]


@pytest.mark.parametrize("overrides, words", BAD_NAMES + BAD_VALUES)
def test_a_bad_config_fails_at_compose_naming_the_key(overrides, words):
    with pytest.raises(ConfigError) as err:
        compose(overrides)
    for word in words:
        assert word in str(err.value)


def test_the_same_values_in_range_compose():
    job = compose(["train.global_batch_size=8", "train.micro_batch_size=2", "deepspeed=zero1",
                   "deepspeed.precision=bf16", "eval.tasks=[ppl,lm_eval:hellaswag]", "data.sources.0.weight=0.5"])
    assert job.train.micro_batch_size == 2 and job.deepspeed.precision == "bf16"
