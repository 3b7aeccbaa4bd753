"""Run by ``test_signal_phases.py``: ``recurlm-train`` with one phase slowed down, so that a test
can send SIGTERM while the run is surely in that phase.

    python -P phase_runner.py <phase> [overrides ...]

It prints ``PAUSED <phase>`` once the run is inside the phase. Data phases are slowed inside the
spawned worker processes (the functions below are found there by their ``__main__`` names), so
the test exercises the real waits of the trainer's process.
"""
import sys
import time

PAUSE_S = 300.0


def _pause(phase: str) -> None:
    print(f"PAUSED {phase}", flush=True)
    time.sleep(PAUSE_S)


def slow_tokenizer_job(*args):
    _pause("tokenizer")


def slow_encode(texts):
    _pause("shards")


def main() -> int:
    phase, overrides = sys.argv[1], sys.argv[2:]
    from recurlm.train import checkpoint, trainer
    from recurlm.cli import train_main

    # the modules themselves (``recurlm.data.prepare`` is also the name of a function)
    build, prepare = sys.modules["recurlm.data.build"], sys.modules["recurlm.data.prepare"]

    if phase == "tokenizer":
        prepare._train_tokenizer_job = slow_tokenizer_job
    elif phase == "shards":
        build._encode_batch = slow_encode
    elif phase == "model":
        original_build = trainer.build_engine

        def slow_build(*args, **kwargs):
            _pause("model")
            return original_build(*args, **kwargs)
        trainer.build_engine = slow_build
    elif phase == "training":
        original_step = trainer.Trainer.train_step

        def slow_step(self):
            result = original_step(self)
            if self.step >= 1:
                print("PAUSED training", flush=True)
                time.sleep(1.0)
            return result
        trainer.Trainer.train_step = slow_step
    elif phase == "evaluation":
        original_loss, calls = trainer.validation_loss, []

        def slow_loss(*args, **kwargs):
            calls.append(1)
            if len(calls) > 1:  # after the validation at step 0
                _pause("evaluation")
            return original_loss(*args, **kwargs)
        trainer.validation_loss = slow_loss
    elif phase == "checkpoint":
        original_save = checkpoint.CheckpointManager.save

        def slow_save(self, *args, **kwargs):
            print("PAUSED checkpoint", flush=True)
            time.sleep(3.0)
            return original_save(self, *args, **kwargs)
        checkpoint.CheckpointManager.save = slow_save
    else:
        raise SystemExit(f"unknown phase {phase!r}")
    return train_main(overrides)


if __name__ == "__main__":
    sys.exit(main())
