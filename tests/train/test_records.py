"""A run's records: config.yaml is written only by a run that proceeds, a resumed run says where it
resumed from, a finished run is not "rerun" with another config, a preempted run reports its last
real validation loss."""
import os
import signal

import pytest

from recurlm.train import checkpoint as ckpt
from recurlm.train.trainer import Trainer, train

from .test_failures import events

QUIET = ["logger.wandb.mode=disabled", "eval.tasks=[]"]


def test_a_refused_resume_leaves_config_yaml_alone(tiny_job, tmp_path):
    run_dir = str(tmp_path / "r")
    run = train(tiny_job("train.steps=1", *QUIET, run_dir=run_dir))
    config = open(os.path.join(run_dir, "config.yaml")).read()
    with pytest.raises(ckpt.CheckpointError, match="n_layers"):
        Trainer(tiny_job("train.steps=2", "model.n_layers=3", f"resume={run.checkpoint}", *QUIET, run_dir=run_dir))
    assert open(os.path.join(run_dir, "config.yaml")).read() == config


def test_a_finished_run_with_another_config_is_refused_listing_the_keys(tiny_job, tmp_path):
    run_dir = str(tmp_path / "done")
    train(tiny_job("train.steps=2", *QUIET, run_dir=run_dir))
    config = open(os.path.join(run_dir, "config.yaml")).read()
    with pytest.raises(ckpt.CheckpointError, match=r"finished run .*\n  optim.lr: 0.003 -> 0.001\n") as err:
        Trainer(tiny_job("train.steps=2", "optim.lr=1e-3", "eval.tasks=[]", run_dir=run_dir))  # W&B offline
    assert "new run_dir" in str(err.value)
    assert open(os.path.join(run_dir, "config.yaml")).read() == config
    assert not os.path.exists(os.path.join(run_dir, "wandb"))  # no W&B run (or config) for a refused run
    again = train(tiny_job("train.steps=2", *QUIET, run_dir=run_dir))  # the same config: nothing to do, fine
    assert again.exit_code == 0 and again.step == 2
    longer = train(tiny_job("train.steps=3", "optim.lr=1e-3", *QUIET, run_dir=run_dir))  # a continuation
    assert longer.step == 3 and "lr: 0.001" in open(os.path.join(run_dir, "config.yaml")).read()


def test_a_resumed_run_says_from_where(tiny_job, tmp_path):
    run_dir = str(tmp_path / "res")
    train(tiny_job("train.steps=4", "train.checkpoint_every=2", "train.exit_after_steps=2", *QUIET, run_dir=run_dir))
    train(tiny_job("train.steps=4", "train.checkpoint_every=2", *QUIET, run_dir=run_dir))
    assert events(run_dir, "resumed") == [{"step": 2, "event": "resumed",
                                           "message": f"resumed from {run_dir}/checkpoints/2 (step 2)"}]


def test_a_preempted_run_reports_its_last_validation_not_step_zeros(tiny_job, tmp_path, capsys):
    trainer = Trainer(tiny_job("train.steps=100", "train.eval_every=2", *QUIET, run_dir=str(tmp_path / "pre")))
    original, calls = trainer.train_step, []

    def signalled_at_step_3():
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGUSR1)  # what Slurm sends before the time limit
        return original()

    trainer.train_step = signalled_at_step_3
    result = trainer.run()
    assert result.step == 3 and result.last_val_step == 2
    assert result.last_val_loss != result.first_val_loss
    assert f"-> {result.last_val_loss:.4f} (step 2)" in capsys.readouterr().out
