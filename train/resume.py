"""The trainer's checkpoints: choosing the one to resume from, saving, and restoring (on resume
and on a rollback after non-finite steps)."""
from __future__ import annotations

from typing import Any, Optional

import torch

from recurlm.train import checkpoint as ckpt
from recurlm.train import run_records
from recurlm.train.distributed import all_reduce_max


def resume_path(resume: str, manager: ckpt.CheckpointManager) -> tuple[Optional[str], list[str]]:
    """(checkpoint to resume from or None, notes on checkpoints skipped). ``auto`` takes the newest
    checkpoint that verifies; an explicit path must verify."""
    if resume == "none":
        return None, []
    if resume == "auto":
        return manager.newest_intact()
    ckpt.verify(resume)
    return resume, []


class Checkpointing:
    """A part of :class:`recurlm.train.trainer.Trainer` (kept apart so the trainer reads as
    start-up plus the step loop): what a checkpoint holds of the trainer's counters, loader and
    recipe, and how they come back."""

    def _choose_resume(self) -> tuple[Optional[str], bool, list[str]]:
        """(checkpoint to resume from, saved at another world size?, notes on checkpoints skipped)."""
        resume, skipped = resume_path(self.job.resume, self.checkpoints)
        if resume is None:
            return None, False, skipped
        saved = ckpt.read_state(resume)
        ckpt.check_compatible(saved, self._identity(), self.data.tokenizer.sha256, resume)
        run_records.refuse_changed_finished_run(resume, saved["step"], self.loop.steps, self.config_yaml)
        universal = ckpt.needs_universal(resume, self.env.world_size, self.job.deepspeed.zero_stage)
        if universal:
            ckpt.make_universal(resume, self.env.rank)
        return resume, universal, skipped

    def _identity(self) -> dict[str, Any]:
        return {"family": self.model_cfg.family, "size": self.model_cfg.size, "d_model": self.model_cfg.d_model,
                "n_layers": self.model_cfg.n_layers, "vocab_size": self.model_cfg.vocab_size}

    def _restore(self, path: str, keep_loader_position: bool = False, universal: bool = False) -> None:
        state = ckpt.load(self.engine, path, self.env.rank, universal=universal)
        if self.recipe is not None:
            # a rollback skips data, so carried states would continue the wrong text (and may be non-finite)
            self.recipe.load_state_dict({} if keep_loader_position else
                                        ckpt.load_recipe_state(path, self.env.rank, self.env.world_size))
        if not keep_loader_position:
            self.loader.load_state_dict(state["loader"])
        self.step, self.tokens = state["step"], state["tokens"]
        self.wandb_id = state.get("wandb_id")
        self.first_val_loss = state.get("first_val_loss")
        self.last_checkpoint = path

    def save(self) -> Optional[str]:
        state = {"step": self.step, "tokens": self.tokens, "loader": self.loader.state_dict(),
                 "wandb_id": self.wandb_id, "model": self._identity(),
                 "model_config": run_records.config_dict(self.model_cfg),
                 "tokenizer_sha256": self.data.tokenizer.sha256, "tokenizer_path": self.data.tokenizer.path,
                 "first_val_loss": self.first_val_loss, "world_size": self.env.world_size}
        if not self._weights_finite():
            self.monitor.event("checkpoint_skipped", f"not saving step {self.step}: the weights are non-finite",
                               self.step)
            return None
        try:
            self.last_checkpoint = self.checkpoints.save(self.engine, self.step, state, self.config_yaml,
                                                         self.recipe.state_dict() if self.recipe else None)
        except ckpt.CheckpointError as err:
            self.monitor.event("checkpoint_failed", str(err), self.step)
            return None
        return self.last_checkpoint

    def _weights_finite(self) -> bool:
        """Every rank's parameters (its ZeRO-3 partition) are finite."""
        bad = any(not torch.isfinite(getattr(p, "ds_tensor", p)).all() for p in self.model.parameters())
        return not all_reduce_max(float(bad))
