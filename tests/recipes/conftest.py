"""Tiny training jobs for the recipe tests (the tiny job of tests/conftest.py, without
checkpoints) and a spy on the model's forward."""
import pytest


@pytest.fixture
def tiny_job(tiny_job):
    """tests/conftest.py's tiny job with ``train.checkpoint_every=0``; extra overrides win."""

    def make(*overrides, run_dir=None):
        return tiny_job("train.checkpoint_every=0", *overrides, run_dir=run_dir)

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
