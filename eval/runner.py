"""``run_tasks``: every evaluation of a model, shared by ``recurlm-eval`` and the trainer.

The trainer calls it periodically::

    from recurlm.eval import run_tasks
    run_tasks(engine.module, data.tokenizer, data, job_eval_cfg,
              out_dir=os.path.join(run_dir, "eval", str(step)), step=step,
              train_seq_len=seq_len, log=lambda metrics, step: monitor.log(metrics, step))
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Optional

import torch

from recurlm.eval import plots
from recurlm.eval.config import EvalConfig
from recurlm.eval.effrem import effrem_eval
from recurlm.eval.perplexity import loss_by_position, perplexity
from recurlm.eval.results import Record, config_hash, markdown_table, wandb_metrics, write_results
from recurlm.eval.synthetic_tasks import mqar_eval, passkey_eval, state_tracking_eval
from recurlm.models.base import RecurrentLM

NEEDS_DATA = ("ppl", "ppl_by_position", "effrem")
NEEDS_TOKENIZER = ("passkey", "mqar", "state_tracking", "lm_eval")


def _valid_split(data: Any):
    """A ShardSet from a PreparedData (its validation split) or a ShardSet."""
    return getattr(data, "valid", data)


def check_tasks(tasks: list[str], has_data: bool, has_tokenizer: bool) -> None:
    """Fail before any work on a task whose inputs are missing (``EvalConfig`` refuses unknown tasks)."""
    for task in tasks:
        name = task.split(":", 1)[0]
        if name in NEEDS_DATA and not has_data:
            raise ValueError(f"task {task!r} needs a validation split: evaluate a checkpoint of a run "
                             f"(its data config is read) or pass shards=<a shard directory>")
        if name in NEEDS_TOKENIZER and not has_tokenizer:
            raise ValueError(f"task {task!r} needs the checkpoint's tokenizer (tokenizer.model)")


@torch.no_grad()
def run_tasks(model: RecurrentLM, tokenizer: Any, data: Any, cfg: EvalConfig, out_dir: str, step: int,
              train_seq_len: int, log: Optional[Callable[[dict[str, Any], int], None]] = None,
              wandb_run: Any = None, checkpoint: str = "", title: str = "") -> dict[str, Any]:
    """Evaluate ``model`` on ``cfg.tasks``; write ``results.json`` and PNG plots into ``out_dir``.

    ``data``: a PreparedData or ShardSet (validation tokens for ppl tasks) or None.
    ``log(metrics, step)``: an optional metrics sink (e.g. the trainer's monitor); ``wandb_run``:
    an optional W&B run that also receives the plots as images.
    Returns ``{"records": [...], "summary": markdown, "results_path": ..., "plots": {...},
    "metrics": {...}}``. The model's train/eval mode is restored afterwards."""
    tasks = list(cfg.tasks)
    check_tasks(tasks, data is not None, tokenizer is not None)
    was_training = model.training
    model.eval()
    chunk_len = cfg.chunk_len or train_seq_len
    title = title or f"{model.config.family}-{model.config.size or ''} step {step}"
    records: list[Record] = []
    plot_paths: dict[str, str] = {}
    timings: dict[str, float] = {}
    try:
        for task in tasks:
            t0 = time.perf_counter()
            curve, plotter = None, None
            if task == "ppl":
                records += perplexity(model, _valid_split(data), cfg.seq_len or train_seq_len, cfg.batch_size,
                                      cfg.max_batches)
            elif task == "ppl_by_position":
                new, curve = loss_by_position(model, _valid_split(data), train_seq_len, cfg.length_multiple,
                                              cfg.position_sequences, cfg.batch_size, chunk_len)
                records += new
                plotter = plots.plot_loss_by_position
            elif task == "effrem":
                new, curve = effrem_eval(model, _valid_split(data), cfg.effrem_context or cfg.length_multiple * train_seq_len,
                                         cfg.effrem_points, cfg.position_sequences, cfg.batch_size, chunk_len,
                                         train_seq_len)
                records += new
                plotter = plots.plot_effrem
            elif task == "passkey":
                new, curve = passkey_eval(model, tokenizer, cfg.passkey_lengths, cfg.passkey_depths,
                                          cfg.passkey_trials, cfg.seed, cfg.batch_size, chunk_len)
                records += new
                plotter = plots.plot_passkey
            elif task == "mqar":
                new, curve = mqar_eval(model, tokenizer, cfg.mqar_pairs, cfg.mqar_examples, cfg.seed,
                                       cfg.batch_size, chunk_len, cfg.mqar_value_digits)
                records += new
                plotter = plots.plot_mqar
            elif task == "state_tracking":
                new, curve = state_tracking_eval(model, tokenizer, cfg.state_tracking_tasks,
                                                 cfg.state_tracking_lengths, cfg.state_tracking_modulus,
                                                 cfg.state_tracking_examples, cfg.seed, cfg.batch_size, chunk_len)
                records += new
                plotter = plots.plot_state_tracking
            else:
                records += _lm_eval_records(model, tokenizer, task.split(":", 1)[1], cfg, chunk_len)
            if plotter is not None and cfg.plots:
                plot_paths[task] = os.path.basename(plotter(curve, os.path.join(out_dir, f"{task}.png"), title))
            timings[task] = round(time.perf_counter() - t0, 3)
    finally:
        model.train(was_training)
    chash = config_hash(cfg, model.config)
    header = {"checkpoint": checkpoint, "train_seq_len": train_seq_len, "seconds": timings,
              "model": {"family": model.config.family, "size": model.config.size,
                        "params": model.num_params(), "state_bytes": model.state_bytes()},
              "eval_config": _plain(cfg)}
    path = write_results(out_dir, records, step, chash, header, plot_paths)
    metrics = wandb_metrics(records)
    if log is not None:
        log(metrics, step)
    if wandb_run is not None:
        import wandb

        images = {f"eval/{task}/plot": wandb.Image(os.path.join(out_dir, p)) for task, p in plot_paths.items()}
        wandb_run.log({**metrics, **images, "trainer/global_step": step})
    return {"records": records, "summary": markdown_table(records, step), "results_path": path,
            "plots": {t: os.path.join(out_dir, p) for t, p in plot_paths.items()}, "metrics": metrics,
            "config_hash": chash}


def _plain(cfg: EvalConfig) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(cfg)


def _lm_eval_records(model: RecurrentLM, tokenizer: Any, spec: str, cfg: EvalConfig, chunk_len: int) -> list[Record]:
    from recurlm.eval.lm_eval_adapter import evaluate

    table = evaluate(model, tokenizer, spec.split(","), limit=cfg.lm_eval_limit, num_fewshot=cfg.lm_eval_num_fewshot,
                     include_path=cfg.lm_eval_include_path, batch_size=cfg.batch_size, chunk_len=max(chunk_len, 512))
    records = []
    for task, metrics in table.items():
        for metric, value in metrics.items():
            records.append(Record(f"lm_eval:{task}", metric, value, {"limit": cfg.lm_eval_limit},
                                  summary=metric != "sample_len" and not metric.endswith("_stderr")))
    return records
