"""Tiny training jobs for the recipe tests: the trainer tests' tiny data and model settings
(tests/train/conftest.py), one data cache per session, and a spy on the model's forward."""
import os

import pytest

from recurlm.configs import compose

from ..train.conftest import TINY_DATA, TINY_TRAIN


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("recipe-data-cache"))


@pytest.fixture
def tiny_job(data_cache, tmp_path):
    """compose() for a tiny job in tmp_path; extra overrides win."""

    def make(*overrides, run_dir=None):
        return compose([*TINY_DATA, f"data.cache_dir={data_cache}", *TINY_TRAIN, "train.checkpoint_every=0",
                        f"run_dir={run_dir or os.path.join(str(tmp_path), 'run')}", *overrides])

    return make


class Recorder:
    """Wraps a trainer: records every batch its loader gives and (state, resets, final state) of
    every training forward of its model."""

    def __init__(self, trainer):
        self.calls = spy_forward(trainer.model)
        self.batches = []
        self.loader = trainer.loader
        trainer.loader = self
        self.state_dict = self.loader.state_dict

    def __next__(self):
        self.batches.append(next(self.loader))
        return self.batches[-1]


@pytest.fixture
def record():
    """record(trainer, steps) -> (forward calls, batches) of ``steps`` training steps."""

    def run(trainer, steps):
        recorder = Recorder(trainer)
        for _ in range(steps):
            trainer.train_step()
        return recorder.calls, recorder.batches

    return run


def spy_forward(model):
    """Record (state, resets, final state) of every training forward of ``model``."""
    calls = []
    original = model.forward

    def forward(input_ids, resets=None, state=None, return_state=False, labels=None):
        out, final = original(input_ids, resets=resets, state=state, return_state=return_state, labels=labels)
        if model.training:  # training steps, not validation
            calls.append({"state": state, "resets": resets.clone(), "final": final})
        return out, final

    model.forward = forward
    return calls
