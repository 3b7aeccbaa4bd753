"""Preemption: SIGTERM / SIGUSR1 end a run within seconds, in every phase, saving first when there
is training progress to save.

Two behaviours, chosen by where the process is:

- **Between training steps** the handler only records the signal; the loop polls ``requested``
  after each step (all ranks agree through one all-reduce), saves, and exits with EXIT_REQUEUE.
- **Inside an interruptible phase** (``with stop.interruptible("building the model"):`` data
  preparation, model build, evaluation) the handler raises :class:`Preempted` at once, so a phase
  that runs for hours (tokenizing a corpus) does not delay the exit. Waits inside such phases must
  wake up now and then (a timeout on ``join``/``poll``/``next``) so the handler gets to run; long
  C++ calls (SentencePiece training) run in a subprocess for that reason.

A checkpoint write is never interrupted: it is not an interruptible phase, so the signal is only
recorded and honoured once the write has finished.
"""
from __future__ import annotations

import contextlib
import signal
from typing import Iterator

EXIT_REQUEUE = 75
"""Exit code after a signal-triggered stop (EX_TEMPFAIL); the Slurm script requeues on it."""


class Preempted(Exception):
    """A stop signal arrived during an interruptible phase; ``phase`` says what the run was doing."""

    def __init__(self, signal_name: str, phase: str):
        super().__init__(f"{signal_name} while {phase}")
        self.signal_name = signal_name
        self.phase = phase


class StopRequest:
    """Records the first of the handled signals; raises :class:`Preempted` inside interruptible phases."""

    def __init__(self, signals=(signal.SIGTERM, signal.SIGUSR1)):
        self.signal_name: str | None = None
        self.phase = "starting"
        """What the process is doing now, for the stop message (``set_phase`` refines it)."""
        self._interruptible = 0
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        first = self.signal_name is None
        if first:
            self.signal_name = signal.Signals(signum).name
        if self._interruptible and first:
            raise Preempted(self.signal_name, self.phase)

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def set_phase(self, phase: str) -> None:
        self.phase = phase

    @contextlib.contextmanager
    def interruptible(self, phase: str) -> Iterator[None]:
        """Run the block as phase ``phase``; a signal (or one that arrived before) raises Preempted."""
        previous = self.phase
        self.phase = phase
        self._interruptible += 1
        try:
            if self.signal_name is not None:
                raise Preempted(self.signal_name, phase)
            yield
        finally:
            self._interruptible -= 1
            self.phase = previous
