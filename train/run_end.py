"""The end of a training run: after the last step (final validation and checks, checkpoint, eval
tasks, W&B artifact) or on a stop signal (save, say what was saved), the :class:`TrainResult` and
the report printed last.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import Optional

from recurlm.train.distributed import barrier
from recurlm.train.errors import EXIT_FAILED
from recurlm.models.pretrained import export_checkpoint
from recurlm.train.signals import EXIT_REQUEUE


@dataclass
class TrainResult:
    run_dir: str
    step: int
    checkpoint: Optional[str]
    first_val_loss: Optional[float]
    last_val_loss: Optional[float]
    exit_code: int = 0
    last_val_step: Optional[int] = None
    """The step ``last_val_loss`` was measured at."""


def describe_checkpoint(result: TrainResult) -> str:
    if result.checkpoint is None:
        return "none: no checkpoint of this run exists" + (" (saving failed)" if result.exit_code else "")
    saved_step = int(os.path.basename(result.checkpoint))
    if saved_step == result.step:
        return result.checkpoint
    return f"{result.checkpoint} (step {saved_step}; step {result.step} was not saved)"


def print_report(result: TrainResult, wandb_dir: Optional[str], wandb_mode: str) -> None:
    """Where everything of the run is, and its validation loss (stderr when the run failed)."""
    lines = [f"run_dir:     {result.run_dir}",
             f"config:      {os.path.join(result.run_dir, 'config.yaml')}",
             f"metrics:     {os.path.join(result.run_dir, 'metrics.jsonl')}",
             f"checkpoint:  {describe_checkpoint(result)}",
             f"wandb:       {wandb_dir or 'disabled'} ({wandb_mode})"]
    if result.first_val_loss is not None and result.last_val_step:
        lines.append(f"val_loss:    {result.first_val_loss:.4f} (step 0) -> {result.last_val_loss:.4f} "
                     f"(step {result.last_val_step})")
    elif result.first_val_loss is not None:
        lines.append(f"val_loss:    {result.first_val_loss:.4f} (step 0; none measured since)")
    print("\n".join(lines), file=sys.stdout if result.exit_code in (0, EXIT_REQUEUE) else sys.stderr,
          flush=True)


class RunEnd:
    """The end of ``Trainer.run`` (a part of :class:`recurlm.train.trainer.Trainer`, kept apart so
    the trainer reads as start-up plus the step loop). Uses the trainer's counters (``step``,
    ``last_val``, ``last_checkpoint``, ``save_attempt``, ``exit_code``, ...) and its ``save``,
    ``validate``, ``evaluate_tasks`` and ``_abort``."""

    def _end_run(self) -> TrainResult:
        """After the last step: final validation and checks, the final checkpoint, the eval tasks and
        the W&B artifact. After ``train.exit_after_steps``: only the report."""
        if self.step >= self.loop.steps:
            val_loss = self._validate_and_log()
            self._refuse_nonfinite_end(val_loss)
            self._save_final()
            if self.job.eval.tasks:
                self.evaluate_tasks()
            self._publish_artifact(val_loss)
        val_loss, val_step = self.last_val or (None, None)
        self.monitor.close({"val_loss": val_loss, "val_step": val_step, "first_val_loss": self.first_val_loss,
                            "step": self.step})
        return self._result(self.exit_code)

    def _refuse_nonfinite_end(self, val_loss: float) -> None:
        # a last step skipped for its gradient alone (e.g. fp16 loss scaling) left finite weights
        problems = ([f"training loss {self.last_loss}"] if self.steps_this_process and not math.isfinite(self.last_loss)
                    else []) \
            + ([f"validation loss {val_loss}"] if not math.isfinite(val_loss) else []) \
            + (["weights"] if not self._weights_finite() else [])
        if problems:
            self._abort(f"the run ended with non-finite {', '.join(problems)}")

    def _save_final(self) -> None:
        """Save the last step unless saved already; a save that failed at this step is not retried."""
        if self.last_checkpoint is not None and self.last_checkpoint.endswith(f"/{self.step}"):
            return
        if self.save_attempt is None or self.save_attempt[0] != self.step:
            self.save_attempt = (self.step, self.save() is not None)
        if not self.save_attempt[1]:
            self.exit_code = EXIT_FAILED

    def _publish_artifact(self, val_loss: float) -> None:
        if self.job.logger.wandb.log_artifacts and self.last_checkpoint and self.exit_code == 0:
            barrier()
            if self.env.is_main:
                export = export_checkpoint(self.last_checkpoint)
                self.monitor.log_artifact(export, f"{self.model_cfg.family}-{self.model_cfg.size}",
                                          {"step": self.step, "val_loss": val_loss})

    def _stop_after_signal(self, signal_name: str, phase: str) -> TrainResult:
        """Save this step (unless it is saved already, or a non-finite streak is open), say what was
        saved, and return with EXIT_REQUEUE (EXIT_FAILED when the save failed)."""
        exit_code, note = EXIT_REQUEUE, None
        if self.step > 0 and not (self.last_checkpoint or "").endswith(f"/{self.step}"):
            if self.nonfinite_streak:  # a checkpoint from inside the streak is what a rollback must not land on
                note = f"step {self.step} not saved: {self.nonfinite_streak} non-finite step(s) in a row"
            elif self.save() is None:
                exit_code, note = EXIT_FAILED, f"saving step {self.step} failed"
            else:
                note = f"checkpoint saved: {self.last_checkpoint}"
        newest = self.checkpoints.latest() if self.env.is_main else self.last_checkpoint
        if note is None or not note.startswith("checkpoint saved"):
            note = "; ".join(filter(None, [note, f"newest checkpoint: {newest}" if newest
                                           else "no checkpoint saved (nothing trained yet)"]))
        self.monitor.event("preempted", f"{signal_name} while {phase}; {note}; exiting with {exit_code}",
                           self.step, alert=False)
        val_loss, val_step = self.last_val or (None, None)
        self.monitor.close({"preempted": True, "step": self.step, "val_loss": val_loss, "val_step": val_step})
        return self._result(exit_code)

    def _result(self, exit_code: int) -> TrainResult:
        """The result, with the newest checkpoint on disk (it says so when a save failed), reported by rank 0."""
        checkpoint = self.checkpoints.latest() if self.env.is_main else self.last_checkpoint
        val_loss, val_step = self.last_val or (None, None)
        result = TrainResult(self.run_dir, self.step, checkpoint, self.first_val_loss, val_loss, exit_code, val_step)
        if self.env.is_main:
            print_report(result, self.monitor.wandb_dir, self.job.logger.wandb.mode)
        return result
