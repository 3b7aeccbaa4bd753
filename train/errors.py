"""Failures a user can act on, and how ``recurlm-train`` reports them.

A known failure (a damaged shard or checkpoint, a bad ``data.*`` value, a run directory held by another
trainer, a stopped run) prints one block: what failed, naming the file or key, and what to do. Its
traceback goes to ``<run_dir>/error.log`` for whoever needs it. Anything else is a bug and keeps
its traceback on the console.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from typing import Iterator, Optional

from recurlm.data.shards import ShardError
from recurlm.data.tokenizer import TokenizerError
from recurlm.data.workers import WorkerError
from recurlm.models.checkpoint_files import CheckpointError


class RunLockedError(RuntimeError):
    """Another trainer is writing the same run directory."""


class DataError(RuntimeError):
    """Preparing the data failed: a missing source file, an empty corpus, a bad ``data.*`` value."""


@contextlib.contextmanager
def data_errors() -> Iterator[None]:
    """Turn the errors ``recurlm.data.prepare`` raises for bad input (whose messages name the
    source, file or ``data.*`` key) into :class:`DataError`; the original stays chained."""
    try:
        yield
    except known_failures():  # already reported as what they are (ShardError is a ValueError)
        raise
    except (ValueError, KeyError, OSError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        raise DataError(f"preparing the data failed: {message}") from err


ERROR_LOG = "error.log"
"""Beside ``config.yaml``: tracebacks of the known failures whose console report leaves them out."""

EXIT_FAILED = 1
"""Exit code of a known failure (a stopped run, see ``TrainingAborted``, exits with 3)."""


def known_failures() -> tuple[type[BaseException], ...]:
    """The exception types reported without a traceback. A configuration error is not among them:
    it is raised while composing the job, before training, and reported there (``recurlm.cli``)."""
    return ShardError, TokenizerError, WorkerError, DataError, CheckpointError, RunLockedError


WHAT_TO_DO = {  # for the types whose messages do not say it themselves
    "ShardError": "Remove the split directory named above: the next run tokenizes it again.",
    "TokenizerError": "Change the data.tokenizer setting named above.",
    "DataError": "Fix the data source or data.* setting named above.",
    "WorkerError": "A data worker process failed or stalled; rerun resumes the build after the last finished "
                   "shard (raise data.worker_timeout_s for very slow storage).",
    "TrainingAborted": "Lower the learning rate or inspect the data around that step; "
                       "train.rollback_on_nonfinite=true skips the offending batches.",
}


def report_failure(err: BaseException, run_dir: Optional[str]) -> None:
    """Print ``err`` as one block on stderr (rank 0; other ranks print one line) and append its
    traceback to ``<run_dir>/error.log`` when the run directory exists."""
    # a locked run_dir belongs to another trainer: nothing is written into it
    log = os.path.join(run_dir, ERROR_LOG) if run_dir and os.path.isdir(run_dir) \
        and not isinstance(err, RunLockedError) else None
    if log is not None:
        try:
            with open(log, "a") as f:
                f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()} rank "
                        f"{os.environ.get('RANK', '0')}\n")
                traceback.print_exception(err, file=f)
        except OSError:  # a full disk must not hide the report itself
            log = None
    if os.environ.get("RANK", "0") != "0":
        print(f"recurlm-train (rank {os.environ['RANK']}): {type(err).__name__}, see rank 0", file=sys.stderr)
        return
    hint = WHAT_TO_DO.get(type(err).__name__)
    lines = [f"recurlm-train: stopped: {type(err).__name__}", str(err), *([hint] if hint else []),
             *([f"(traceback in {log})"] if log else [])]
    print("\n".join(lines), file=sys.stderr, flush=True)
