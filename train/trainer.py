"""The training loop: typed job config → data → model → DeepSpeed engine → steps, with exact resume
and failure handling.

One step (``Trainer._run``, then ``train_step``): the loader's next batch (recurlm/data/loader.py,
reading recurlm/data/shards.py) → per micro-batch ``engine(input_ids, resets=..., labels=...)``
runs ``RecurrentLM.forward`` (recurlm/models/base.py) → ``engine.backward`` → ``engine.step`` (at
the accumulation boundary: clip, skip if non-finite, AdamW; recurlm/train/optimizer.py) → non-finite
handling → metrics (monitor.py) → evaluation → checkpoint or stop.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from recurlm.data import prepare
from recurlm.data.loader import PackedLoader
from recurlm.models import to_model_config
from recurlm.models.state import ModelState
from recurlm.train import checkpoint as ckpt
from recurlm.train import run_records
from recurlm.train.config import JobConfig
from recurlm.train.distributed import all_reduce_max, all_reduce_mean, barrier, init_distributed
from recurlm.train.engine import batch_geometry, build_engine, load_initial_weights
from recurlm.train.errors import EXIT_FAILED, data_errors
from recurlm.train.evaluation import evaluate_tasks, final_states, validation_loss
from recurlm.train.monitor import Monitor, memory_gb, peak_flops
from recurlm.train.optimizer import global_grad_norm, lr_multiplier, set_lr
from recurlm.train.recipe import build_recipe, post_training_steps, read_initial_weights
from recurlm.train.run_dir import snapshot_code
from recurlm.train.resume import Checkpointing
from recurlm.train.run_end import RunEnd, TrainResult
from recurlm.train.signals import Preempted, StopRequest
from recurlm.train.startup import agree_on_run_dir, lock_run_dir, seed_everything


class TrainingAborted(RuntimeError):
    """Training stopped on purpose (too many consecutive non-finite steps or rollbacks, or a run
    that ended with non-finite weights or loss)."""


@dataclass
class _LogWindow:
    """The steps since the last metrics line: their wall time, tokens and finite losses."""
    start: float = field(default_factory=time.perf_counter)
    tokens: int = 0
    losses: list[float] = field(default_factory=list)


class Trainer(Checkpointing, RunEnd):
    """Start-up (``_build``: a sequence of named steps) then ``run`` (the step loop). ``job`` is
    completed in place (model config with the vocabulary, ``train.steps``, ``run_dir``), so the
    caller sees what was run."""

    def __init__(self, job: JobConfig):
        self.stop = StopRequest()  # first: a preemption signal may arrive while we start up
        self.env = init_distributed()
        self.job, self.loop = job, job.train
        if self.loop.cpu_threads > 0:
            torch.set_num_threads(self.loop.cpu_threads)
        seed_everything(job.seed)
        self.run_dir = agree_on_run_dir(job, self.env)
        self.lock = lock_run_dir(self.run_dir, self.env)  # before anything is written into run_dir
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the run directory (the process ending releases it too)."""
        if self.lock is not None:
            self.lock.release()

    # -- start-up, in order ---------------------------------------------------------------------
    def _build(self) -> None:
        self._prepare_data()
        init_config, init_weights = self._build_recipe()
        self._settle_job(init_config)
        notes = self._open_checkpoints()
        resume, universal, skipped = self._choose_resume()
        self._build_engine(universal, init_weights if resume is None else None)
        self._start_position(resume, universal)
        self._write_run_records()
        self._start_monitor(notes + skipped, resume)

    def _prepare_data(self) -> None:
        """Tokenizer and shards (rank 0 builds the cache first; the others then reuse it)."""
        with data_errors(), self.stop.interruptible("preparing data"):
            if self.env.is_main:
                self.data = prepare(self.job.data, progress=self.job.logger.progress, on_stage=self.stop.set_phase)
            barrier()
            if not self.env.is_main:
                self.data = prepare(self.job.data, progress=False, on_stage=self.stop.set_phase)

    def _build_recipe(self) -> tuple[Any, Optional[dict[str, torch.Tensor]]]:
        """The recipe (None for plain training), its step count, and ``recipe.init_from``'s
        (config, weights) of a post-training phase (weights only; fresh optimizer and data)."""
        recipe_cfg = self.job.recipe
        self.recipe = build_recipe(recipe_cfg, self.job.data.loader_mode, self.env.rank)
        steps = post_training_steps(recipe_cfg, self.loop.global_batch_size * self.loop.seq_len)
        if steps is not None:
            self.loop.steps = steps
        if not recipe_cfg.init_from:
            return None, None
        init_config, init_weights, init_tokenizer = read_initial_weights(recipe_cfg.init_from)
        if init_tokenizer and init_tokenizer != self.data.tokenizer.sha256:
            raise ValueError(f"recipe.init_from={recipe_cfg.init_from} was trained with another tokenizer "
                             f"than data gives ({init_tokenizer[:12]} != {self.data.tokenizer.sha256[:12]})")
        return (init_config if recipe_cfg.model_from_init else None), init_weights

    def _settle_job(self, init_config: Any) -> None:
        """Fill in what start-up decided (model config and vocabulary, steps, run_dir) into the
        job, whose YAML then goes into config.yaml and every checkpoint."""
        model_cfg = to_model_config(init_config if init_config is not None else self.job.model)
        if model_cfg.vocab_size == 0:
            model_cfg.vocab_size = self.data.tokenizer.vocab_size
        elif model_cfg.vocab_size < self.data.tokenizer.vocab_size:
            raise ValueError(f"model.vocab_size={model_cfg.vocab_size} < tokenizer vocabulary {self.data.tokenizer.vocab_size}")
        self.model_cfg = self.job.model = model_cfg
        self.job.run_dir = self.run_dir
        self.config_yaml = run_records.config_yaml(self.job)

    def _open_checkpoints(self) -> list[str]:
        """The batch geometry and the checkpoint manager; notes on debris removed and a lock taken over."""
        self.micro, self.accumulation = batch_geometry(self.loop.global_batch_size, self.loop.micro_batch_size,
                                                       self.env.world_size)
        self.checkpoints = ckpt.CheckpointManager(os.path.join(self.run_dir, "checkpoints"), self.env.rank,
                                                  self.loop.keep_last, self.loop.keep_every,
                                                  log=lambda note: self.monitor.event("checkpoint", note, self.step,
                                                                                      alert=False))
        notes = [f"removed debris of an interrupted save or deletion: {path}"
                 for path in (self.checkpoints.remove_debris() if self.env.is_main else [])]
        if self.lock is not None and self.lock.previous:
            notes.append(f"took over the lock of {self.run_dir} left by {self.lock.previous}, no longer running")
        barrier()
        return notes

    def _build_engine(self, load_universal: bool, init_weights: Optional[dict[str, torch.Tensor]]) -> None:
        with self.stop.interruptible("building the model"):
            self.engine, self.model = build_engine(self.job, self.model_cfg, self.loop.global_batch_size, self.micro,
                                                   self.accumulation, load_universal=load_universal)
            if init_weights is not None:
                load_initial_weights(self.engine, self.model, init_weights, self.job.deepspeed.zero_stage,
                                     self.env.rank)

    def _start_position(self, resume: Optional[str], universal: bool) -> None:
        """The training loader and counters: at the start, or where the checkpoint left them."""
        self.loader: PackedLoader = self.data.train_loader(self.loop.seq_len, self.loop.global_batch_size,
                                                           rank=self.env.rank, world_size=self.env.world_size)
        self.step, self.tokens, self.wandb_id = 0, 0, None
        self.first_val_loss: Optional[float] = None
        self.last_checkpoint: Optional[str] = None
        if resume is not None:
            with self.stop.interruptible(f"loading checkpoint {resume}"):
                self._restore(resume, universal=universal)

    def _write_run_records(self) -> None:
        if self.env.is_main:  # the run proceeds: now its records may be written
            run_records.write_config(self.run_dir, self.config_yaml)
            snapshot_code(self.run_dir)
        barrier()

    def _start_monitor(self, notes: list[str], resume: Optional[str]) -> None:
        self.tokens_per_step = self.loop.global_batch_size * self.loop.seq_len
        self.flops_per_token = 3 * self.model.flops_per_token(self.loop.seq_len)
        self.peak = peak_flops(self.loop.peak_flops) * self.env.world_size
        with self.stop.interruptible("starting the logger"):
            self.monitor = Monitor(self.job.logger, self.run_dir, self.env.is_main, self.loop.steps, self.step,
                                   self.wandb_id, run_records.config_dict(self.job))
        self.wandb_id = self.monitor.wandb_id or self.wandb_id
        for note in notes:
            self.monitor.event("checkpoint", note, self.step, alert=False)
        if resume is not None:
            self.monitor.event("resumed", f"resumed from {resume} (step {self.step})", self.step, alert=False)

    # -- evaluation -----------------------------------------------------------------------------
    def validate(self) -> float:
        with self.stop.interruptible(f"computing the validation loss at step {self.step}"):
            return validation_loss(self.engine, self.data.eval_batches(self.loop.seq_len, self.micro,
                                                                       self.loop.eval_batches))

    def evaluate_tasks(self) -> None:
        """The ``eval`` config's tasks on the current weights, results in ``<run_dir>/eval/<step>/``
        (recurlm/train/evaluation.py)."""
        with self.stop.interruptible(f"evaluating tasks at step {self.step}"):
            evaluate_tasks(self.model, self.data, self.job.eval, self.run_dir, self.step, self.loop.seq_len,
                           self.monitor, self.env.is_main, self.job.deepspeed.zero_stage == 3,
                           self.last_checkpoint)
        barrier()

    def fitting_pass(self, batches: int):
        """Final states of the current model on the first ``batches`` global batches of this rank's
        training stream (a fresh loader), micro-batch by micro-batch: what Fitted Noise fits on."""
        loader = self.data.train_loader(self.loop.seq_len, self.loop.global_batch_size, rank=self.env.rank,
                                        world_size=self.env.world_size)
        return final_states(self.model, loader, batches, self.micro, self.accumulation, self.engine.device)

    # -- one training step ----------------------------------------------------------------------
    def train_step(self) -> tuple[float, bool]:
        """One optimizer step over the global batch. Returns (mean loss over ranks, applied?)."""
        if self.recipe is not None:
            self.recipe.begin_step(self.step, self.model, self.fitting_pass)
        batch = next(self.loader)
        skipped_before = self.engine.skipped_steps
        loss_sum = torch.zeros((), device=self.engine.device)
        for i in range(self.accumulation):
            # micro-batch i holds the same rows (lanes) at every step: a recipe keys states by i
            rows = slice(i * self.micro, (i + 1) * self.micro)
            loss, final = self._forward_backward(i, batch.input_ids[rows], batch.resets[rows], batch.labels[rows])
            # engine.step() is called after every micro-batch's backward: DeepSpeed counts the
            # micro-batches and applies the optimizer (optimizer.py: clip, skip if non-finite, AdamW;
            # then zero the gradients) only at the gradient-accumulation boundary, the last
            # micro-batch of the step; before it, step() only lets the gradients accumulate
            self.engine.step()
            if self.recipe is not None:
                self.recipe.observe(i, final)
            loss_sum += loss.detach().float()
        applied = self.engine.skipped_steps == skipped_before
        # one host sync per step, not one per micro-batch
        return all_reduce_mean(loss_sum.item() / self.accumulation), applied

    def _forward_backward(self, micro: int, input_ids: torch.Tensor, resets: torch.Tensor,
                          labels: torch.Tensor) -> tuple[torch.Tensor, Optional[ModelState]]:
        """Loss (and final state, if the recipe wants it) of one micro-batch [b, T], backward done.
        Without a recipe every row starts from the zero state; a recipe may give an initial state."""
        state = None
        if self.recipe is not None:
            state, resets = self.recipe.initial_state(micro, resets)
        device = self.engine.device
        # the loader pins its batches on GPU machines: these copies do not stall the host
        loss, final = self.engine(input_ids.to(device, non_blocking=True),
                                  resets=resets.to(device, non_blocking=True),
                                  state=None if state is None else state.to(device),
                                  return_state=self.recipe is not None and self.recipe.wants_final_state,
                                  labels=labels.to(device, non_blocking=True))
        self.engine.backward(loss)
        return loss, final

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        try:
            return self._run()
        except Preempted as stop:  # a signal during evaluation: save the steps trained so far, then stop
            return self._stop_after_signal(stop.signal_name, stop.phase)
        finally:
            self.close()

    def _run(self) -> TrainResult:
        self._begin_run()
        while self.step < self.loop.steps:
            lr = self._set_learning_rate()
            loss, applied = self.train_step()
            self._count_step(loss)
            if self._handle_nonfinite(loss, applied):
                continue  # rolled back to the last checkpoint: nothing of this step remains
            self._log(loss, lr)
            self._evaluate_on_schedule()
            if all_reduce_max(float(self.stop.requested)):
                return self._stop_after_signal(self.stop.signal_name or "a signal on another rank",
                                               f"training (after step {self.step})")
            if self._checkpoint_on_schedule():
                break  # train.exit_after_steps reached
        return self._end_run()

    def _begin_run(self) -> None:
        self.last_val: Optional[tuple[float, int]] = None
        self.nonfinite_streak = self.rollbacks = self.steps_this_process = self.exit_code = 0
        self.last_loss = math.nan
        self.save_attempt: Optional[tuple[int, bool]] = None  # the last save tried: (step, succeeded?)
        if self.step == 0:
            self.first_val_loss = self._validate_and_log()
            self.monitor.write(f"step 0: val_loss {self.first_val_loss:.4f}")
        self.window = _LogWindow()

    def _set_learning_rate(self) -> float:
        """The schedule's rate for this step, set on every parameter group; returns the base rate."""
        multiplier = lr_multiplier(self.job.schedule, self.step, self.tokens, self.loop.steps, self.tokens_per_step)
        return set_lr(self.engine, self.job.optim.lr, multiplier)

    def _count_step(self, loss: float) -> None:
        self.step += 1
        self.steps_this_process += 1
        self.tokens += self.tokens_per_step
        self.window.tokens += self.tokens_per_step
        self.last_loss = loss

    def _handle_nonfinite(self, loss: float, applied: bool) -> bool:
        """A step with a non-finite loss or gradient was skipped (no update): say so; after
        ``train.max_nonfinite_steps`` in a row roll back to the last checkpoint (if
        ``train.rollback_on_nonfinite``) or abort. True when it rolled back."""
        if math.isfinite(loss) and applied:
            self.nonfinite_streak = 0
            return False
        self.nonfinite_streak += 1  # read by a stop during evaluation and by the checkpoint step
        what = (f"loss is {loss} (so is the gradient)" if not math.isfinite(loss)
                else f"gradient is non-finite (loss {loss:.4f} is finite)")
        self.monitor.event("nonfinite", f"{what}; update skipped ({self.nonfinite_streak} in a row)", self.step)
        if self.nonfinite_streak < self.loop.max_nonfinite_steps:
            return False
        if not (self.loop.rollback_on_nonfinite and self.last_checkpoint is not None):
            self._abort(f"{self.nonfinite_streak} consecutive steps had a non-finite loss or gradient "
                        f"(the last: {what})")
        if self.rollbacks >= self.loop.max_rollbacks:
            self._abort(f"{self.nonfinite_streak} consecutive non-finite steps after {self.rollbacks} rollbacks "
                        f"(train.max_rollbacks={self.loop.max_rollbacks})")
        self.rollbacks += 1
        self.monitor.event("rollback", f"reloading {self.last_checkpoint}, skipping the offending data "
                                       f"(rollback {self.rollbacks} of at most {self.loop.max_rollbacks})", self.step)
        self._restore(self.last_checkpoint, keep_loader_position=True, universal=self.engine.load_universal_checkpoint())
        self.nonfinite_streak = 0
        return True

    def _log(self, loss: float, lr: float) -> None:
        """Watch a finite loss for spikes; every ``logger.log_every`` steps (and at the last) log the
        mean loss since the last line (skipped steps excluded), throughput, MFU and memory."""
        if self.nonfinite_streak == 0:
            self.window.losses.append(loss)
            z = self.monitor.spikes.update(loss)
            if z is not None:
                self.monitor.event("loss_spike", f"loss {loss:.4f} is {z:.1f} std above the recent mean", self.step)
        if self.step % self.job.logger.log_every and self.step != self.loop.steps:
            return
        tps = self.window.tokens / max(time.perf_counter() - self.window.start, 1e-9)
        mean_loss = sum(self.window.losses) / len(self.window.losses) if self.window.losses else loss
        self.monitor.log({"loss": mean_loss, "lr": lr, "tokens": self.tokens, "tokens_per_s": tps,
                          "grad_norm": global_grad_norm(self.engine),
                          "mfu": self.flops_per_token * tps / self.peak if self.peak else None,
                          "memory_gb": memory_gb(), "skipped_steps": self.engine.skipped_steps}, self.step)
        self.monitor.progress(self.step, {"loss": f"{mean_loss:.3f}", "tok/s": f"{tps:,.0f}", "lr": f"{lr:.2e}"})
        self.window = _LogWindow()

    def _evaluate_on_schedule(self) -> None:
        """Validation every ``train.eval_every`` steps, tasks every ``eval.every`` (the last step's
        come with the end of the run)."""
        if self.step >= self.loop.steps:
            return
        if self.loop.eval_every and self.step % self.loop.eval_every == 0:
            self._validate_and_log()
        if self.job.eval.every and self.step % self.job.eval.every == 0:
            self.evaluate_tasks()

    def _checkpoint_on_schedule(self) -> bool:
        """Save every ``train.checkpoint_every`` steps and when ``train.exit_after_steps`` is reached
        (then True: stop). Not while non-finite steps are in a row: a rollback must not land there."""
        out_of_budget = bool(self.loop.exit_after_steps) and self.steps_this_process >= self.loop.exit_after_steps
        if (self.loop.checkpoint_every and self.step % self.loop.checkpoint_every == 0) or out_of_budget:
            if self.nonfinite_streak:
                self.monitor.event("checkpoint_skipped", f"not saving step {self.step}: {self.nonfinite_streak} "
                                                         "non-finite step(s) in a row", self.step)
            else:
                self.save_attempt = (self.step, self.save() is not None)
                if not self.save_attempt[1] and out_of_budget:
                    self.exit_code = EXIT_FAILED
        return out_of_budget

    def _validate_and_log(self) -> float:
        val_loss = self.validate()
        self.monitor.log({"val_loss": val_loss, "tokens": self.tokens}, self.step)
        self.last_val = (val_loss, self.step)
        return val_loss

    def _abort(self, message: str) -> None:
        self.monitor.event("abort", message, self.step)
        self.monitor.close({"aborted": True})
        raise TrainingAborted(f"stopped at step {self.step}: {message} (see {self.run_dir}/metrics.jsonl; the newest "
                              f"checkpoint is {self.checkpoints.latest() or 'none: no checkpoint of this run exists'})")


def train(job: JobConfig) -> TrainResult:
    return Trainer(job).run()
