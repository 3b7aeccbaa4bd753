"""Train one composed job in this process, and turn how it ended into ``recurlm-train``'s exit code.

``recurlm.cli.train_main`` (``recurlm-train``, ``python -m recurlm.train``) composes the job and,
with ``launch=none``, calls :func:`train_job`: 0 when the run finished, 75 after a signal-triggered
save (requeue), 3 for a stopped run (``TrainingAborted``), 1 for a known failure (reported as one
block, see ``recurlm.train.errors``); anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys

from recurlm.train import trainer
from recurlm.train.config import JobConfig
from recurlm.train.errors import EXIT_FAILED, known_failures, report_failure
from recurlm.train.signals import EXIT_REQUEUE, Preempted
from recurlm.train.trainer import TrainingAborted


def train_job(job: JobConfig) -> int:
    try:
        result = trainer.train(job)
    except TrainingAborted as err:
        report_failure(err, job.run_dir)
        return 3
    except Preempted as stop:  # during start-up: nothing trained in this process, so nothing to save
        print(f"recurlm-train: stopped by {stop.signal_name} while {stop.phase}; no checkpoint saved (nothing "
              f"was trained in this process); exiting with {EXIT_REQUEUE} for requeue", file=sys.stderr, flush=True)
        return EXIT_REQUEUE
    except known_failures() as err:  # anything else is a bug: its traceback stays on the console
        report_failure(err, job.run_dir)
        return EXIT_FAILED
    return result.exit_code
