"""The training loop: config → data → model → DeepSpeed engine → steps (forward, backward,
optimizer step, log, eval, checkpoint), with exact resume and failure handling.

One step, from data to optimizer: ``PackedLoader.__next__`` (recurlm/data/loader.py) gives this
rank's rows → split into micro-batches → ``engine(input_ids, resets=..., labels=...)`` runs
``RecurrentLM.forward`` (recurlm/models/base.py) → ``engine.backward`` → ``engine.step`` (ZeRO
reduce, clip, AdamW; a step with non-finite gradients is skipped) → metrics (monitor.py).
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import psutil
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from recurlm.configs import as_dataclass, to_yaml
from recurlm.data import prepare
from recurlm.data.config import DataConfig
from recurlm.models import to_model_config
from recurlm.train import checkpoint as ckpt
from recurlm.train import run_records
from recurlm.train.config import LoggerConfig, OptimConfig, ScheduleConfig, TrainConfig
from recurlm.train.distributed import DistEnv, all_reduce_max, all_reduce_mean, barrier, init_distributed
from recurlm.train.engine import batch_geometry, build_engine, global_grad_norm, set_lr
from recurlm.train.errors import EXIT_FAILED, RunLockedError, data_errors
from recurlm.train.export import export_checkpoint
from recurlm.train.monitor import Monitor, peak_flops
from recurlm.train.recipe import RecipeConfig, build_recipe, post_training_steps, read_initial_weights
from recurlm.train.run_dir import default_run_dir, snapshot_code
from recurlm.train.run_lock import RunLock
from recurlm.train.schedule import lr_multiplier
from recurlm.train.signals import EXIT_REQUEUE, Preempted, StopRequest


class TrainingAborted(RuntimeError):
    """Training stopped on purpose (too many consecutive non-finite steps or rollbacks, or a run
    that ended with non-finite weights or loss)."""


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _agree_on_run_dir(job: DictConfig, env: DistEnv) -> str:
    run_dir = job.run_dir or default_run_dir(job.model.family, job.model.size)
    if env.world_size > 1:
        box = [run_dir]
        dist.broadcast_object_list(box, src=0)
        run_dir = box[0]
    return os.path.abspath(run_dir)


def _lock_run_dir(run_dir: str, env: DistEnv) -> Optional[RunLock]:
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


def _resume_path(resume: str, manager: ckpt.CheckpointManager) -> tuple[Optional[str], list[str]]:
    """(checkpoint to resume from or None, notes on checkpoints skipped). ``auto`` takes the newest
    checkpoint that verifies; an explicit path must verify."""
    if resume == "none":
        return None, []
    if resume == "auto":
        return manager.newest_intact()
    ckpt.verify(resume)
    return resume, []


def _memory_gb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return psutil.Process().memory_info().rss / 2**30


class Trainer:
    def __init__(self, job: DictConfig):
        self.stop = StopRequest()  # first: a preemption signal may arrive while we start up
        self.env = init_distributed()
        self.job = job
        self.loop: TrainConfig = as_dataclass(job.train, TrainConfig)
        self.optim: OptimConfig = as_dataclass(job.optim, OptimConfig)
        self.schedule: ScheduleConfig = as_dataclass(job.schedule, ScheduleConfig)
        self.logger_cfg: LoggerConfig = as_dataclass(job.logger, LoggerConfig)
        if self.loop.cpu_threads > 0:
            torch.set_num_threads(self.loop.cpu_threads)
        seed_everything(job.seed)
        self.run_dir = _agree_on_run_dir(job, self.env)
        self.lock = _lock_run_dir(self.run_dir, self.env)  # before anything is written into run_dir
        try:
            self._build(job)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the run directory (the process ending releases it too)."""
        if self.lock is not None:
            self.lock.release()

    def _build(self, job: DictConfig) -> None:
        data_cfg: DataConfig = as_dataclass(job.data, DataConfig)
        # rank 0 builds the cache first; the others then reuse it
        with data_errors(), self.stop.interruptible("preparing data"):
            if self.env.is_main:
                self.data = prepare(data_cfg, progress=self.logger_cfg.progress, on_stage=self.stop.set_phase)
            barrier()
            if not self.env.is_main:
                self.data = prepare(data_cfg, progress=False, on_stage=self.stop.set_phase)
        self.recipe_cfg: RecipeConfig = as_dataclass(job.recipe, RecipeConfig)
        self.recipe = build_recipe(self.recipe_cfg, data_cfg.loader_mode, self.env.rank)
        steps = post_training_steps(self.recipe_cfg, self.loop.global_batch_size * self.loop.seq_len)
        if steps is not None:
            self.loop.steps = steps
        init_weights = None
        if self.recipe_cfg.init_from:  # a post-training phase: weights only, fresh optimizer and data
            init_config, init_weights, init_tokenizer = read_initial_weights(self.recipe_cfg.init_from)
            if init_tokenizer and init_tokenizer != self.data.tokenizer.sha256:
                raise ValueError(f"recipe.init_from={self.recipe_cfg.init_from} was trained with another tokenizer "
                                 f"than data gives ({init_tokenizer[:12]} != {self.data.tokenizer.sha256[:12]})")
        model_cfg = to_model_config(init_config if init_weights is not None and self.recipe_cfg.model_from_init
                                    else job.model)
        if model_cfg.vocab_size == 0:
            model_cfg.vocab_size = self.data.tokenizer.vocab_size
        elif model_cfg.vocab_size < self.data.tokenizer.vocab_size:
            raise ValueError(f"model.vocab_size={model_cfg.vocab_size} < tokenizer vocabulary {self.data.tokenizer.vocab_size}")
        self.model_cfg = model_cfg
        OmegaConf.set_struct(job, False)
        job.model = OmegaConf.structured(model_cfg)
        job.train.steps = self.loop.steps  # recipe.post_train_ratio may have set it
        job.run_dir = self.run_dir
        OmegaConf.set_struct(job, True)
        self.config_yaml = to_yaml(job)

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
        resume, skipped = _resume_path(job.resume, self.checkpoints)
        notes += skipped
        if resume is not None:
            saved = ckpt.read_state(resume)
            ckpt.check_compatible(saved, self._identity(), self.data.tokenizer.sha256, resume)
            run_records.refuse_changed_finished_run(resume, saved["step"], self.loop.steps, self.config_yaml)
        universal = resume is not None and ckpt.needs_universal(resume, self.env.world_size,
                                                                 job.deepspeed.zero_stage)
        if universal:
            ckpt.make_universal(resume, self.env.rank)
        with self.stop.interruptible("building the model"):
            self.engine, self.model = build_engine(job, model_cfg, self.loop.global_batch_size, self.micro,
                                                   self.accumulation, load_universal=universal)
            if resume is None and init_weights is not None:
                self._load_initial_weights(init_weights)
        self.loader = self.data.train_loader(self.loop.seq_len, self.loop.global_batch_size,
                                             rank=self.env.rank, world_size=self.env.world_size)
        self.step, self.tokens, self.wandb_id = 0, 0, None
        self.first_val_loss: Optional[float] = None
        self.last_checkpoint: Optional[str] = None
        if resume is not None:
            with self.stop.interruptible(f"loading checkpoint {resume}"):
                self._restore(resume, universal=universal)
        if self.env.is_main:  # the run proceeds: now its records may be written
            run_records.write_config(self.run_dir, self.config_yaml)
            snapshot_code(self.run_dir)
        barrier()
        self.tokens_per_step = self.loop.global_batch_size * self.loop.seq_len
        self.flops_per_token = 3 * self.model.flops_per_token(self.loop.seq_len)
        self.peak = peak_flops(self.loop.peak_flops) * self.env.world_size
        with self.stop.interruptible("starting the logger"):
            self.monitor = Monitor(self.logger_cfg, self.run_dir, self.env.is_main, self.loop.steps, self.step,
                                   self.wandb_id, OmegaConf.to_container(job, resolve=True))
        self.wandb_id = self.monitor.wandb_id or self.wandb_id
        for note in notes:
            self.monitor.event("checkpoint", note, self.step, alert=False)
        if resume is not None:
            self.monitor.event("resumed", f"resumed from {resume} (step {self.step})", self.step, alert=False)

    # -- checkpoints ----------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        return {"family": self.model_cfg.family, "size": self.model_cfg.size, "d_model": self.model_cfg.d_model,
                "n_layers": self.model_cfg.n_layers, "vocab_size": self.model_cfg.vocab_size}

    def _restore(self, path: str, keep_loader_position: bool = False, universal: bool = False) -> None:
        state = ckpt.load(self.engine, path, self.env.rank, universal=universal)
        # a rollback skips data, so carried states would continue the wrong text (and may be non-finite)
        self.recipe.load_state_dict({} if keep_loader_position else
                                    ckpt.load_recipe_state(path, self.env.rank, self.env.world_size))
        if not keep_loader_position:
            self.loader.load_state_dict(state["loader"])
        self.step, self.tokens = state["step"], state["tokens"]
        self.wandb_id = state.get("wandb_id")
        self.first_val_loss = state.get("first_val_loss")
        self.last_checkpoint = path

    def _load_initial_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Copy ``recipe.init_from``'s weights into the engine's model (and the optimizer's fp32
        master copies that ZeRO keeps apart from the module parameters)."""
        import deepspeed

        params = list(self.model.parameters())
        gather = deepspeed.zero.GatheredParameters(params, modifier_rank=0) if self.job.deepspeed.zero_stage == 3 \
            else contextlib.nullcontext()
        with gather, torch.no_grad():
            if self.env.rank == 0 or self.job.deepspeed.zero_stage != 3:
                self.model.load_state_dict(weights, strict=True)
        refresh = getattr(self.engine.optimizer, "refresh_fp32_params", None)
        if refresh is not None:
            refresh()

    def save(self) -> Optional[str]:
        state = {"step": self.step, "tokens": self.tokens, "loader": self.loader.state_dict(),
                 "wandb_id": self.wandb_id, "model": self._identity(),
                 "model_config": OmegaConf.to_container(OmegaConf.structured(self.model_cfg)),
                 "tokenizer_sha256": self.data.tokenizer.sha256, "tokenizer_path": self.data.tokenizer.path,
                 "first_val_loss": self.first_val_loss, "world_size": self.env.world_size}
        if not self._weights_finite():
            self.monitor.event("checkpoint_skipped", f"not saving step {self.step}: the weights are non-finite",
                               self.step)
            return None
        try:
            self.last_checkpoint = self.checkpoints.save(self.engine, self.step, state, self.config_yaml,
                                                         self.recipe.state_dict())
        except ckpt.CheckpointError as err:
            self.monitor.event("checkpoint_failed", str(err), self.step)
            return None
        return self.last_checkpoint

    def _weights_finite(self) -> bool:
        """Every rank's parameters (its ZeRO-3 partition) are finite."""
        bad = any(not torch.isfinite(getattr(p, "ds_tensor", p)).all() for p in self.model.parameters())
        return not all_reduce_max(float(bad))

    # -- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> float:
        with self.stop.interruptible(f"computing the validation loss at step {self.step}"):
            return self._validation_loss()

    def _validation_loss(self) -> float:
        self.engine.eval()
        total, count = 0.0, 0
        for batch in self.data.eval_batches(self.loop.seq_len, self.micro, self.loop.eval_batches):
            n = batch.num_loss_tokens
            if n == 0:
                continue
            loss, _ = self.engine(batch.input_ids.to(self.engine.device), resets=batch.resets.to(self.engine.device),
                                  labels=batch.labels.to(self.engine.device))
            total += loss.item() * n
            count += n
        self.engine.train()
        return total / max(count, 1)

    def evaluate_tasks(self) -> None:
        """The ``eval`` config's tasks on the current weights (``recurlm.eval.run_tasks``), results in
        ``<run_dir>/eval/<step>/``. Under ZeRO-3 every rank takes part (parameters are gathered
        layer by layer); otherwise rank 0 evaluates alone."""
        from recurlm.eval import EvalConfig

        cfg = as_dataclass(self.job.eval, EvalConfig)
        with self.stop.interruptible(f"evaluating tasks at step {self.step}"):
            self._run_eval_tasks(cfg)
        barrier()

    def _run_eval_tasks(self, cfg) -> None:
        from recurlm.eval import run_tasks

        if self.env.is_main or self.job.deepspeed.zero_stage == 3:
            # ranks other than 0 write their (identical) results to a scratch directory, removed after
            with tempfile.TemporaryDirectory(prefix="recurlm-eval-") as scratch:
                out_dir = (cfg.out_dir or os.path.join(self.run_dir, "eval", str(self.step))) if self.env.is_main \
                    else scratch
                result = run_tasks(self.model, self.data.tokenizer, self.data, cfg, out_dir, self.step,
                                   self.loop.seq_len, log=self.monitor.log if self.env.is_main else None,
                                   wandb_run=self.monitor.run if self.env.is_main else None,
                                   checkpoint=self.last_checkpoint or "")
            self.monitor.write(result["summary"])

    @torch.no_grad()
    def fitting_pass(self, batches: int):
        """Final states of the current model from its initial state on the first ``batches`` global
        batches of this rank's training stream (a fresh loader: the training position is untouched),
        micro-batch by micro-batch: the data Fitted Noise fits its statistics on."""
        loader = self.data.train_loader(self.loop.seq_len, self.loop.global_batch_size, rank=self.env.rank,
                                        world_size=self.env.world_size)
        was_training = self.model.training
        self.model.eval()
        try:
            for _ in range(batches):
                batch = next(loader)
                for i in range(self.accumulation):
                    rows = slice(i * self.micro, (i + 1) * self.micro)
                    _, final = self.model(batch.input_ids[rows].to(self.engine.device),
                                          resets=batch.resets[rows].to(self.engine.device), return_state=True)
                    yield final
        finally:
            self.model.train(was_training)

    # -- the loop -------------------------------------------------------------------------------
    def train_step(self) -> tuple[float, bool]:
        """One optimizer step over the global batch. Returns (mean loss over ranks, applied?)."""
        self.recipe.begin_step(self.step, self.model, self.fitting_pass)
        batch = next(self.loader)
        skipped_before = self.engine.skipped_steps
        loss_sum = torch.zeros((), device=self.engine.device)
        device = self.engine.device
        for i in range(self.accumulation):
            # micro-batch i holds the same rows (lanes) at every step: the recipe keys states by i
            rows = slice(i * self.micro, (i + 1) * self.micro)
            state, resets = self.recipe.initial_state(i, batch.resets[rows])
            # the loader pins its batches on GPU machines: these copies do not stall the host
            loss, final = self.engine(batch.input_ids[rows].to(device, non_blocking=True),
                                      resets=resets.to(device, non_blocking=True),
                                      state=None if state is None else state.to(device),
                                      return_state=self.recipe.wants_final_state,
                                      labels=batch.labels[rows].to(device, non_blocking=True))
            self.engine.backward(loss)
            self.engine.step()
            self.recipe.observe(i, final)
            loss_sum += loss.detach().float()
        applied = self.engine.skipped_steps == skipped_before
        # one host sync per step, not one per micro-batch
        return all_reduce_mean(loss_sum.item() / self.accumulation), applied

    def run(self) -> TrainResult:
        try:
            return self._run()
        except Preempted as stop:  # a signal during evaluation: save the steps trained so far, then stop
            return self._stop_after_signal(stop.signal_name, stop.phase)
        finally:
            self.close()

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
        result = TrainResult(self.run_dir, self.step, newest, self.first_val_loss, val_loss, exit_code, val_step)
        if self.env.is_main:
            self._report(result)
        return result

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

    def _run(self) -> TrainResult:
        loop, monitor = self.loop, self.monitor
        self.last_val: Optional[tuple[float, int]] = None
        self.nonfinite_streak = 0
        if self.step == 0:
            self.first_val_loss = self._validate_and_log()
            monitor.write(f"step 0: val_loss {self.first_val_loss:.4f}")
        consecutive_bad, rollbacks, steps_this_process, exit_code = 0, 0, 0, 0
        saved, attempted_step = False, None  # the last save attempt: succeeded?, at which step
        window_start, window_tokens, window_losses = time.perf_counter(), 0, []
        while self.step < loop.steps:
            lr = set_lr(self.engine, self.optim.lr, lr_multiplier(self.schedule, self.step, self.tokens,
                                                                   loop.steps, self.tokens_per_step))
            loss, applied = self.train_step()
            self.step += 1
            steps_this_process += 1
            self.tokens += self.tokens_per_step
            window_tokens += self.tokens_per_step

            finite = math.isfinite(loss) and applied
            consecutive_bad = 0 if finite else consecutive_bad + 1
            self.nonfinite_streak = consecutive_bad  # read by a stop during evaluation
            if not finite:
                what = (f"loss is {loss} (so is the gradient)" if not math.isfinite(loss)
                        else f"gradient is non-finite (loss {loss:.4f} is finite)")
                monitor.event("nonfinite", f"{what}; update skipped ({consecutive_bad} in a row)", self.step)
                if consecutive_bad >= loop.max_nonfinite_steps:
                    if loop.rollback_on_nonfinite and self.last_checkpoint is not None:
                        if rollbacks >= loop.max_rollbacks:
                            self._abort(f"{consecutive_bad} consecutive non-finite steps after {rollbacks} rollbacks "
                                        f"(train.max_rollbacks={loop.max_rollbacks})")
                        rollbacks += 1
                        monitor.event("rollback", f"reloading {self.last_checkpoint}, skipping the offending data "
                                                  f"(rollback {rollbacks} of at most {loop.max_rollbacks})", self.step)
                        self._restore(self.last_checkpoint, keep_loader_position=True,
                                      universal=self.engine.load_universal_checkpoint())
                        consecutive_bad = 0
                        continue
                    self._abort(f"{consecutive_bad} consecutive steps had a non-finite loss or gradient "
                                f"(the last: {what})")
            else:
                window_losses.append(loss)
                z = monitor.spikes.update(loss)
                if z is not None:
                    monitor.event("loss_spike", f"loss {loss:.4f} is {z:.1f} std above the recent mean", self.step)

            if self.step % self.logger_cfg.log_every == 0 or self.step == loop.steps:
                elapsed = time.perf_counter() - window_start
                tps = window_tokens / max(elapsed, 1e-9)
                # the logged loss is the mean over the steps since the last log (skipped steps excluded)
                mean_loss = sum(window_losses) / len(window_losses) if window_losses else loss
                metrics = {"loss": mean_loss, "lr": lr, "tokens": self.tokens, "tokens_per_s": tps,
                           "grad_norm": global_grad_norm(self.engine),
                           "mfu": self.flops_per_token * tps / self.peak if self.peak else None,
                           "memory_gb": _memory_gb(), "skipped_steps": self.engine.skipped_steps}
                monitor.log(metrics, self.step)
                monitor.progress(self.step, {"loss": f"{mean_loss:.3f}", "tok/s": f"{tps:,.0f}", "lr": f"{lr:.2e}"})
                window_start, window_tokens, window_losses = time.perf_counter(), 0, []

            if loop.eval_every and self.step % loop.eval_every == 0 and self.step < loop.steps:
                self._validate_and_log()
            if self.job.eval.every and self.step % self.job.eval.every == 0 and self.step < loop.steps:
                self.evaluate_tasks()

            stop = all_reduce_max(float(self.stop.requested))
            out_of_budget = loop.exit_after_steps and steps_this_process >= loop.exit_after_steps
            if stop:
                return self._stop_after_signal(self.stop.signal_name or "a signal on another rank",
                                               f"training (after step {self.step})")
            saved = False
            if (loop.checkpoint_every and self.step % loop.checkpoint_every == 0) or out_of_budget:
                if consecutive_bad:  # a checkpoint from inside the streak is what a rollback must not land on
                    monitor.event("checkpoint_skipped", f"not saving step {self.step}: {consecutive_bad} non-finite "
                                                        "step(s) in a row", self.step)
                else:
                    attempted_step, saved = self.step, self.save() is not None
                    if not saved and out_of_budget:
                        exit_code = EXIT_FAILED
            if out_of_budget:
                break

        if self.step >= loop.steps:
            val_loss = self._validate_and_log()
            # a last step skipped for its gradient alone (e.g. fp16 loss scaling) left finite weights
            problems = ([f"training loss {loss}"] if steps_this_process and not math.isfinite(loss) else []) \
                + ([f"validation loss {val_loss}"] if not math.isfinite(val_loss) else []) \
                + (["weights"] if not self._weights_finite() else [])
            if problems:
                self._abort(f"the run ended with non-finite {', '.join(problems)}")
            if self.last_checkpoint is None or not self.last_checkpoint.endswith(f"/{self.step}"):
                if attempted_step != self.step:  # not tried at this step yet (a failed save is not retried)
                    saved = self.save() is not None
                if not saved:
                    exit_code = EXIT_FAILED
            if self.job.eval.tasks:
                self.evaluate_tasks()
            if self.logger_cfg.wandb.log_artifacts and self.last_checkpoint and exit_code == 0:
                barrier()
                if self.env.is_main:
                    export = export_checkpoint(self.last_checkpoint)
                    monitor.log_artifact(export, f"{self.model_cfg.family}-{self.model_cfg.size}",
                                         {"step": self.step, "val_loss": val_loss})
        val_loss, val_step = self.last_val or (None, None)
        monitor.close({"val_loss": val_loss, "val_step": val_step, "first_val_loss": self.first_val_loss,
                       "step": self.step})
        # the checkpoint reported is the newest one on disk: it says so when a save failed
        checkpoint = self.checkpoints.latest() if self.env.is_main else self.last_checkpoint
        result = TrainResult(self.run_dir, self.step, checkpoint, self.first_val_loss, val_loss, exit_code, val_step)
        if self.env.is_main:
            self._report(result)
        return result

    def _report(self, result: TrainResult) -> None:
        lines = [f"run_dir:     {result.run_dir}",
                 f"config:      {os.path.join(result.run_dir, 'config.yaml')}",
                 f"metrics:     {os.path.join(result.run_dir, 'metrics.jsonl')}",
                 f"checkpoint:  {self._describe_checkpoint(result)}",
                 f"wandb:       {self.monitor.wandb_dir or 'disabled'} ({self.logger_cfg.wandb.mode})"]
        if result.first_val_loss is not None and result.last_val_step:
            lines.append(f"val_loss:    {result.first_val_loss:.4f} (step 0) -> {result.last_val_loss:.4f} "
                         f"(step {result.last_val_step})")
        elif result.first_val_loss is not None:
            lines.append(f"val_loss:    {result.first_val_loss:.4f} (step 0; none measured since)")
        print("\n".join(lines), file=sys.stdout if result.exit_code in (0, EXIT_REQUEUE) else sys.stderr,
              flush=True)

    def _describe_checkpoint(self, result: TrainResult) -> str:
        if result.checkpoint is None:
            return "none: no checkpoint of this run exists" + (" (saving failed)" if result.exit_code else "")
        saved_step = int(os.path.basename(result.checkpoint))
        if saved_step == result.step:
            return result.checkpoint
        return f"{result.checkpoint} (step {saved_step}; step {result.step} was not saved)"


def train(job: DictConfig) -> TrainResult:
    return Trainer(job).run()
