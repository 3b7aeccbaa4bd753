"""One writer per run directory: an exclusive ``fcntl`` lock on ``<run_dir>/.lock``.

The first rank of a job takes the lock before anything is written into the run directory and
holds it until the process ends; the job's other ranks share it (they write only inside saves
that rank 0 coordinates). The lock file holds the holder's host, pid and start time, so a second
trainer fails at once naming the holder. The kernel drops an ``fcntl`` lock when its process dies,
so a lock file left by a killed trainer is stale by construction: the next trainer takes the lock
and says whose it was.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from typing import Optional

from recurlm.train.errors import RunLockedError

LOCK_FILE = ".lock"


def _holder_text() -> str:
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S")})


def _describe(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on {holder['host']} (since {holder['started']})"
    except (ValueError, KeyError, TypeError):
        return "an unknown process (the lock file is unreadable)"


class RunLock:
    """Held while the object lives (or until :meth:`release`). ``previous`` describes the holder of
    a stale lock this one replaced, if any."""

    def __init__(self, run_dir: str):
        self.fd: Optional[int] = None
        self.held = False
        os.makedirs(run_dir, exist_ok=True)
        self.path = os.path.join(run_dir, LOCK_FILE)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(self.fd, 4096, 0).decode(errors="replace")
            self.release()
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise RunLockedError(f"{run_dir} is in use by another trainer: {_describe(holder)} holds "
                                     f"{self.path}. Wait for it to finish, stop it, or give this run another "
                                     "run_dir") from None
            raise RunLockedError(f"cannot lock {self.path} ({err}): the file system does not support "
                                 "fcntl locks; put run_dir on one that does") from None
        previous = os.pread(self.fd, 4096, 0).decode(errors="replace").strip()
        self.held = True
        self.previous: Optional[str] = _describe(previous) if previous else None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, _holder_text().encode(), 0)
        os.fsync(self.fd)

    def release(self) -> None:
        """Empty the lock file and drop the lock (the file stays: removing it would race with a
        trainer about to lock it). Only a killed holder leaves its name in the file."""
        if self.fd is not None:
            if self.held:
                os.ftruncate(self.fd, 0)
                self.held = False
            os.close(self.fd)
            self.fd = None

    def __del__(self):
        self.release()
