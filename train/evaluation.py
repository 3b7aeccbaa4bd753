"""What the trainer measures on the model besides the training loss: the validation loss, the
``eval`` config's tasks, and the final states Fitted Noise fits its statistics on."""
from __future__ import annotations

import os
import tempfile
from typing import Iterable, Iterator, Optional

import torch

from recurlm.data.loader import Batch, PackedLoader
from recurlm.eval import EvalConfig, run_tasks
from recurlm.models import RecurrentLM
from recurlm.models.state import ModelState
from recurlm.train.monitor import Monitor


@torch.no_grad()
def validation_loss(engine, batches: Iterable[Batch]) -> float:
    """Mean loss per label token over ``batches`` (the engine is back in training mode after)."""
    engine.eval()
    total, count = 0.0, 0
    for batch in batches:
        n = batch.num_loss_tokens
        if n == 0:
            continue
        loss, _ = engine(batch.input_ids.to(engine.device), resets=batch.resets.to(engine.device),
                         labels=batch.labels.to(engine.device))
        total += loss.item() * n
        count += n
    engine.train()
    return total / max(count, 1)


def evaluate_tasks(model: RecurrentLM, data, cfg: EvalConfig, run_dir: str, step: int, seq_len: int,
                   monitor: Monitor, is_main: bool, zero3: bool, checkpoint: Optional[str]) -> None:
    """``cfg``'s tasks (``recurlm.eval.run_tasks``) on the current weights, results in
    ``<run_dir>/eval/<step>/``. Under ZeRO-3 every rank takes part (parameters are gathered layer
    by layer); otherwise rank 0 evaluates alone."""
    if not (is_main or zero3):
        return
    # ranks other than 0 write their (identical) results to a scratch directory, removed after
    with tempfile.TemporaryDirectory(prefix="recurlm-eval-") as scratch:
        out_dir = (cfg.out_dir or os.path.join(run_dir, "eval", str(step))) if is_main else scratch
        result = run_tasks(model, data.tokenizer, data, cfg, out_dir, step, seq_len,
                           log=monitor.log if is_main else None, wandb_run=monitor.run if is_main else None,
                           checkpoint=checkpoint or "")
    monitor.write(result["summary"])


@torch.no_grad()
def final_states(model: RecurrentLM, loader: PackedLoader, batches: int, micro: int, accumulation: int,
                 device: torch.device) -> Iterator[ModelState]:
    """Final states of ``model`` from its initial state on ``batches`` batches of ``loader``,
    micro-batch by micro-batch (rows [i*micro, (i+1)*micro) of each), in eval mode."""
    was_training = model.training
    model.eval()
    try:
        for _ in range(batches):
            batch = next(loader)
            for i in range(accumulation):
                rows = slice(i * micro, (i + 1) * micro)
                _, final = model(batch.input_ids[rows].to(device), resets=batch.resets[rows].to(device),
                                 return_state=True)
                yield final
    finally:
        model.train(was_training)
