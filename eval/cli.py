"""``recurlm-eval``: evaluate a checkpoint on a list of tasks.

    recurlm-eval checkpoint=outputs/run/checkpoints 'tasks=[ppl,ppl_by_position,mqar]'
    recurlm-eval checkpoint=outputs/run/checkpoints/300/export tasks=[passkey] passkey_lengths=[512,2048]
    recurlm-eval checkpoint=<dir> 'tasks=[lm_eval:my_task]' lm_eval_include_path=./tasks

Arguments are ``key=value`` overrides of :class:`EvalCommand`; keys of :class:`EvalConfig` may be
given bare (``tasks=[...]``) or as ``eval.<key>``. Results go to ``<run_dir>/eval/<step>/``
(``out_dir=`` overrides): ``results.json``, one PNG per plotted task; a Markdown summary is printed.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from omegaconf import MISSING, OmegaConf

from recurlm.data import ShardSet, Tokenizer, check_tokenizer, prepare
from recurlm.eval.config import EvalConfig
from recurlm.eval.runner import NEEDS_DATA, check_tasks, run_tasks
from recurlm.models import checkpoint_files as ckpt
from recurlm.models.pretrained import export_checkpoint, is_export, load_for_inference

ReadJobConfig = Callable[[str], Any]
"""Reads a run's ``config.yaml`` into its typed job config (``recurlm.configs.load_yaml``, handed
down by the entry point ``recurlm.cli.eval_main``: typing a whole job needs every package's schema,
which only the level above the packages knows)."""


@dataclass
class EvalCommand:
    checkpoint: str = MISSING
    """A run dir, its checkpoints dir, one checkpoint, or an export dir."""
    shards: str = ""
    """A shard directory (``.../valid``) to evaluate ppl tasks on instead of the run's validation split."""
    train_seq_len: int = 0
    """Training length (ppl row length, ppl_by_position unit, chunk length); 0: from the run's config."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """What to evaluate (the fields of EvalConfig, also accepted without the ``eval.`` prefix)."""


@dataclass
class CheckpointContext:
    """What is known about the evaluated checkpoint beyond its weights."""

    export_dir: str
    checkpoint_dir: Optional[str]
    run_dir: Optional[str]
    step: int
    job_config: Optional[Any]
    """The run's typed job config (``config.yaml`` of the checkpoint, a ``JobConfig``), if found."""
    wandb_id: Optional[str]


def _string_field(cls: type, dotted: str) -> bool:
    """Is ``dotted`` (e.g. ``eval.out_dir``) a ``str`` field of dataclass ``cls``?"""
    for part in dotted.split("."):
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return False
        cls = hints[part]
    return cls is str


def apply_overrides(cls: type, argv: Sequence[str], rename=lambda key: key):
    """``key=value`` arguments → an instance of dataclass ``cls``. Values of ``str`` fields are
    taken verbatim (a prompt or path may contain ``:`` or spaces); others are parsed as YAML
    (``tasks=[ppl,mqar]``, ``top_p=0.9``). A wrong key or type fails naming the valid keys."""
    cfg = OmegaConf.structured(cls)
    try:
        for arg in argv:
            if "=" not in arg:
                raise ValueError(f"expected key=value, got {arg!r}")
            key, value = arg.lstrip("+").split("=", 1)
            key = rename(key)
            if _string_field(cls, key):
                OmegaConf.update(cfg, key, value, merge=False)
            else:
                cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([f"{key}={value}"]))
        return OmegaConf.to_object(cfg)
    except Exception as err:  # omegaconf's errors name the key; add what is valid
        valid = sorted(f.name for f in dataclasses.fields(cls))
        raise ValueError(f"{err}\nValid keys: {', '.join(valid)}") from err


def parse_args(argv: Sequence[str]) -> EvalCommand:
    """key=value overrides → EvalCommand; EvalConfig's keys may omit the ``eval.`` prefix."""
    eval_keys = {f.name for f in dataclasses.fields(EvalConfig)}
    return apply_overrides(EvalCommand, argv,
                           rename=lambda key: f"eval.{key}" if key.split(".")[0] in eval_keys else key)


def describe_checkpoint(path: str, export_dir: str, info: dict, read_job_config: ReadJobConfig) -> CheckpointContext:
    """Find the checkpoint, run dir, step, run config and W&B id behind ``path``."""
    checkpoint_dir = None
    source = info.get("source")
    if source and ckpt.is_valid(source):
        checkpoint_dir = source
    elif not os.path.samefile(path, export_dir):
        checkpoint_dir = ckpt.resolve_checkpoint(path)
    if checkpoint_dir is None:
        return CheckpointContext(export_dir, None, None, int(info.get("step", 0)), None, None)
    state = ckpt.read_state(checkpoint_dir)
    config_path = os.path.join(checkpoint_dir, "config.yaml")
    job = read_job_config(config_path) if os.path.isfile(config_path) else None
    run_dir = os.path.dirname(os.path.dirname(os.path.abspath(checkpoint_dir)))
    return CheckpointContext(export_dir, checkpoint_dir, run_dir, int(state["step"]), job, state.get("wandb_id"))


def validation_data(command: EvalCommand, context: CheckpointContext, tokenizer: Any):
    """The ShardSet to score ppl tasks on, or None when no task needs one."""
    if not any(t in NEEDS_DATA for t in command.eval.tasks):
        return None
    if command.shards:
        shards = ShardSet.open(command.shards)
    elif context.job_config is not None:
        shards = prepare(context.job_config.data, progress=False).valid
    else:
        return None
    if tokenizer is not None:
        check_tokenizer(shards, tokenizer)
    return shards


def _wandb_run(command: EvalCommand, context: CheckpointContext, out_dir: str):
    if command.eval.wandb_mode == "disabled":
        return None
    import wandb

    project = context.job_config.logger.wandb.project if context.job_config is not None else "recurlm"
    root = context.run_dir or out_dir
    return wandb.init(project=project, mode=command.eval.wandb_mode, dir=root, id=context.wandb_id,
                      resume="allow" if context.wandb_id else None, job_type="eval",
                      config={"eval": dataclasses.asdict(command.eval), "checkpoint": command.checkpoint},
                      settings=wandb.Settings(console="off", silent=True))


def evaluate_checkpoint(command: EvalCommand, read_job_config: ReadJobConfig) -> dict[str, Any]:
    """Load, evaluate, write results; returns run_tasks' result plus ``out_dir``."""
    path = os.path.abspath(os.path.expanduser(command.checkpoint))
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint={command.checkpoint}: no such file or directory")
    export_dir = path if is_export(path) else export_checkpoint(path)
    model, tokenizer_path, info = load_for_inference(export_dir, device=command.eval.device)
    context = describe_checkpoint(path, export_dir, info, read_job_config)
    tokenizer = Tokenizer(tokenizer_path) if tokenizer_path else None
    data = validation_data(command, context, tokenizer)
    check_tasks(list(command.eval.tasks), data is not None, tokenizer is not None)
    train_seq_len = command.train_seq_len or (context.job_config.train.seq_len if context.job_config else 256)
    out_dir = command.eval.out_dir or os.path.join(context.run_dir or export_dir, "eval", str(context.step))
    run = _wandb_run(command, context, out_dir)
    try:
        result = run_tasks(model, tokenizer, data, command.eval, out_dir, context.step, train_seq_len,
                           wandb_run=run, checkpoint=context.checkpoint_dir or export_dir)
    finally:
        if run is not None:
            run.finish()
    return {**result, "out_dir": out_dir, "wandb_dir": run.dir if run is not None else None}


def main(argv: Sequence[str], read_job_config: ReadJobConfig) -> int:
    """``recurlm-eval`` (its entry point is ``recurlm.cli.eval_main``)."""
    argv = list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print("keys:", json.dumps(OmegaConf.to_container(OmegaConf.structured(EvalCommand)), indent=1))
        return 0
    try:
        command = parse_args(argv)
        result = evaluate_checkpoint(command, read_job_config)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"recurlm-eval: error: {err}", file=sys.stderr)
        return 2
    print(result["summary"])
    print(f"\nresults: {result['results_path']}")
    for task, plot in result["plots"].items():
        print(f"plot:    {plot}")
    return 0

