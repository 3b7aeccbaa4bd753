"""The DeepSpeed configuration a GPU cluster gets: communication settings on CUDA only, bf16 with
float32 master weights (never bf16 without ZeRO), and the gpu_zero{2,3}_bf16 presets, which also
train on CPU (gloo) so the presets stay runnable."""
import pytest

from recurlm.configs import compose
from recurlm.train.config import DeepSpeedConfig, OptimConfig
from recurlm.train.engine import GPU_BUCKET_ELEMENTS, deepspeed_config
from recurlm.train.trainer import train


def config(device_type, **fields):
    return deepspeed_config(DeepSpeedConfig(**fields), OptimConfig(), 8, 4, 2, device_type=device_type)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_gpu_communication_settings_only_on_cuda(stage):
    gpu = config("cuda", zero_stage=stage)["zero_optimization"]
    assert gpu["overlap_comm"] and gpu["contiguous_gradients"] and gpu["reduce_bucket_size"] == GPU_BUCKET_ELEMENTS
    assert ("stage3_prefetch_bucket_size" in gpu) == (stage == 3)
    assert config("cpu", zero_stage=stage)["zero_optimization"] == {"stage": stage}
    assert config("cuda", zero_stage=0)["zero_optimization"] == {"stage": 0}


def test_bf16_reduces_in_float32_and_needs_zero():
    stage1 = config("cuda", zero_stage=1, precision="bf16")
    assert stage1["bf16"] == {"enabled": True} and stage1["communication_data_type"] == "fp32"
    assert stage1["data_types"] == {"grad_accum_dtype": "fp32"}
    assert "data_types" not in config("cuda", zero_stage=2, precision="bf16")
    assert "communication_data_type" not in config("cuda", zero_stage=2)
    with pytest.raises(ValueError, match="bf16 needs zero_stage >= 1"):
        config("cuda", zero_stage=0, precision="bf16")
    overridden = config("cuda", zero_stage=2, overrides={"zero_optimization": {"overlap_comm": False}})
    assert overridden["zero_optimization"]["overlap_comm"] is False  # overrides still win


@pytest.mark.parametrize("stage", [2, 3])
def test_gpu_presets(stage):
    ds = compose([f"deepspeed=gpu_zero{stage}_bf16"]).deepspeed
    assert (ds.zero_stage, ds.precision, list(ds.checkpoint_blocks)) == (stage, "bf16", [-1])


@pytest.mark.parametrize("overrides", [["deepspeed=gpu_zero2_bf16"],
                                       ["deepspeed=zero1", "deepspeed.precision=bf16"]])  # DeepSpeed's BF16 optimizer
def test_gpu_preset_and_bf16_zero1_train_on_cpu(tiny_job, tmp_path, overrides):
    result = train(tiny_job("train.steps=2", *overrides, run_dir=str(tmp_path / "run")))
    assert result.step == 2 and result.last_val_loss < result.first_val_loss


@pytest.mark.parametrize("family, overrides, expected", [
    ("hgrn2", {}, 1),
    ("griffin", {}, 3),                                           # recurrent, recurrent, attention
    ("xlstm", {"slstm_at": [4], "block_types": ["mlstm"]}, 5),  # the sLSTM block comes fifth
])
def test_warm_up_prefix_holds_every_kind_of_block(family, overrides, expected):
    from recurlm.models import to_model_config
    from recurlm.train.engine import warm_up_prefix

    cfg = to_model_config({"family": family, "size": "tiny", "vocab_size": 64, "n_layers": 6, **overrides})
    assert warm_up_prefix(cfg) == expected
