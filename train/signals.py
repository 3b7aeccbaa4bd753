"""Preemption: SIGTERM / SIGUSR1 ask the trainer to finish its step, save and exit with EXIT_REQUEUE."""
from __future__ import annotations

import signal

EXIT_REQUEUE = 75
"""Exit code after a signal-triggered save (EX_TEMPFAIL); the Slurm script requeues on it."""


class StopRequest:
    """Records the first of the handled signals; the loop polls ``requested``."""

    def __init__(self, signals=(signal.SIGTERM, signal.SIGUSR1)):
        self.signal_name: str | None = None
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.signal_name is not None
