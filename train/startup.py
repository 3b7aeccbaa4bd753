"""Start-up pieces of a training run that need no trainer: seeding, agreeing on and locking the
run directory."""
from __future__ import annotations

import os
import random
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from recurlm.train.config import JobConfig
from recurlm.train.distributed import DistEnv, all_reduce_max
from recurlm.train.errors import RunLockedError
from recurlm.train.run_dir import default_run_dir
from recurlm.train.run_lock import RunLock


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def agree_on_run_dir(job: JobConfig, env: DistEnv) -> str:
    """``job.run_dir`` or a new default name, the same on every rank (rank 0's)."""
    run_dir = job.run_dir or default_run_dir(job.model.family, job.model.size)
    if env.world_size > 1:
        box = [run_dir]
        dist.broadcast_object_list(box, src=0)
        run_dir = box[0]
    return os.path.abspath(run_dir)


def lock_run_dir(run_dir: str, env: DistEnv) -> Optional[RunLock]:
    """Rank 0 locks ``run_dir`` (the job's other ranks share its lock); every rank raises
    :class:`RunLockedError` if that failed."""
    lock, error = None, None
    if env.is_main:
        try:
            lock = RunLock(run_dir)
        except RunLockedError as err:
            error = err
    if all_reduce_max(float(error is not None)):
        raise error or RunLockedError(f"rank 0 could not lock {run_dir}")
    return lock
