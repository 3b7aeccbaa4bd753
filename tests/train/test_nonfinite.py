"""Non-finite steps: no checkpoint is saved while a streak is open, rollbacks are capped, a run that
ends non-finite exits non-zero, messages say whether the loss or the gradient was non-finite, and
metrics.jsonl stays strict JSON."""
import json
import os

import pytest
import torch

from recurlm.train import checkpoint as ckpt
from recurlm.cli import train_main as main
from recurlm.train.trainer import Trainer, TrainingAborted

from .test_failures import events, poison


def strict_records(run_dir):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line, parse_constant=refuse) for line in f]


def test_infinite_lr_with_rollback_exits_non_zero_with_no_nan_checkpoint(tiny_overrides, data_cache, tmp_path):
    run_dir = str(tmp_path / "inf")
    code = main([*tiny_overrides, f"data.cache_dir={data_cache}", f"run_dir={run_dir}", "optim.lr=inf",
                 "train.rollback_on_nonfinite=true", "train.checkpoint_every=2", "train.steps=20",
                 "logger.wandb.mode=disabled", "eval.tasks=[]"])
    assert code == 3
    checkpoints = os.path.join(run_dir, "checkpoints")
    saved = ckpt.CheckpointManager(checkpoints).published_steps() if os.path.isdir(checkpoints) else []
    for step in saved:  # whatever was saved holds finite weights only
        weights = torch.load(os.path.join(checkpoints, str(step), "ds", "state", "mp_rank_00_model_states.pt"),
                             weights_only=True)["module"]
        assert all(torch.isfinite(t).all() for t in weights.values()), step
    records = strict_records(run_dir)  # NaN losses are logged as strings, not bare NaN
    assert any(r.get("event") == "checkpoint_skipped" for r in records)
    assert any(r.get("loss") == "nan" for r in records)


def test_a_run_ending_with_non_finite_loss_exits_non_zero(tiny_overrides, data_cache, tmp_path):
    code = main([*tiny_overrides, f"data.cache_dir={data_cache}", f"run_dir={tmp_path / 'end'}", "optim.lr=inf",
                 "train.steps=3", "logger.wandb.mode=disabled", "eval.tasks=[]"])
    assert code == 3


def test_rollbacks_are_capped(tiny_job, tmp_path):
    trainer = Trainer(tiny_job("train.steps=12", "train.max_nonfinite_steps=2", "train.rollback_on_nonfinite=true",
                               "train.checkpoint_every=2", "train.max_rollbacks=2", "logger.wandb.mode=disabled",
                               run_dir=str(tmp_path / "cap")))
    poison(trainer, bad_calls=set(range(3, 1000)))  # every step from the third on
    with pytest.raises(TrainingAborted, match=r"after 2 rollbacks \(train.max_rollbacks=2\)"):
        trainer.run()
    assert len(events(trainer.run_dir, "rollback")) == 2


def test_messages_tell_a_non_finite_gradient_from_a_non_finite_loss(tiny_job, tmp_path):
    trainer = Trainer(tiny_job("train.steps=4", "train.max_nonfinite_steps=2", "logger.wandb.mode=disabled",
                               run_dir=str(tmp_path / "grad")))
    original = trainer.engine.backward

    def nan_gradient(loss, *args, **kwargs):
        result = original(loss, *args, **kwargs)
        next(trainer.model.parameters()).grad.fill_(float("nan"))
        return result

    trainer.engine.backward = nan_gradient
    with pytest.raises(TrainingAborted, match="gradient is non-finite"):
        trainer.run()
    messages = [e["message"] for e in events(trainer.run_dir, "nonfinite")]
    assert messages and all(m.startswith("gradient is non-finite (loss ") for m in messages)


def test_gradient_only_skips_at_the_end_are_no_failure(tiny_job, tmp_path):
    """fp16 dynamic loss scaling skips its first steps (the gradient overflows at scale 2^16): a
    run ending there has finite loss and weights, ends normally and saves them."""
    from recurlm.train.trainer import train

    result = train(tiny_job("train.steps=2", "deepspeed=zero2", "deepspeed.precision=fp16", "logger.wandb.mode=disabled", "eval.tasks=[]",
                            run_dir=str(tmp_path / "fp16")))
    assert result.exit_code == 0 and result.checkpoint.endswith("/2")
    assert events(result.run_dir, "nonfinite")  # the skips did happen
