"""The entry points that compose a job or read one back: ``recurlm-train``, ``recurlm-launch`` and
``recurlm-eval``.

They sit above every package (docs/dev-guide.md, "Package graph"): each composes the Hydra
config into the job once, then hands it down. ``recurlm-train``'s ``launch.mode`` decides where:

    recurlm-train                                   # the embedded default run (HGRN2 on the stdlib corpus)
    recurlm-train model=griffin model.size=tiny train.steps=100 deepspeed=zero2
    recurlm-train --cfg job [overrides]             # print the composed config and exit
    recurlm-train launch=local launch.nproc_per_node=2 ...   # start the workers here
    recurlm-train launch=slurm ...                  # render and submit an sbatch script
    torchrun --nproc-per-node 2 -m recurlm.train ...         # or start the workers yourself

``python -m recurlm.train`` (what the local and Slurm launchers start on every rank) is
``recurlm-train``. ``recurlm-launch`` (submit, sweep, status) is ``recurlm.launch.cli``'s parser
with its jobs composed here. ``recurlm-eval`` is ``recurlm.eval.cli``, handed ``configs.load_yaml``
to read an evaluated run's ``config.yaml`` as its typed job.
"""
from __future__ import annotations

import sys
from typing import Sequence

from recurlm.configs import ConfigError, compose, load_yaml, to_yaml
from recurlm.eval import cli as eval_cli
from recurlm.launch.cli import SweepError, as_slurm, build_parser, expand_sweep, show_status, submit_sweep
from recurlm.launch.local import start_local
from recurlm.launch.slurm import submit_from_train
from recurlm.train.cli import train_job

_TRAIN_EXAMPLES = next(block for block in __doc__.split("\n\n") if block.startswith("    recurlm-train"))
_TRAIN_USAGE = ("recurlm-train: compose the Hydra config from command-line overrides and train.\n\n"
                f"{_TRAIN_EXAMPLES}\n\nGroups: model, data, optim, schedule, deepspeed, logger, launch, recipe, eval.\n")


def train_main(argv: Sequence[str] | None = None) -> int:
    """``recurlm-train [--cfg job] [overrides]``: compose, then train here, start local workers or submit to Slurm."""
    args = list(sys.argv[1:] if argv is None else argv)
    # the deepspeed launcher passes --local_rank=N; the rank also arrives in $LOCAL_RANK
    args = [a for a in args if not a.startswith(("--local_rank", "--local-rank"))]
    if any(a in ("-h", "--help") for a in args):
        print(_TRAIN_USAGE)
        return 0
    print_cfg = False
    if "--cfg" in args:
        i = args.index("--cfg")
        print_cfg = True
        del args[i:i + 2]
    try:
        job = compose(args)
    except ConfigError as err:
        print(f"recurlm-train: configuration error:\n{err}", file=sys.stderr)
        return 2
    if print_cfg:
        print(to_yaml(job))
        return 0
    mode = job.launch.mode
    if mode == "none":
        return train_job(job)
    if mode == "local":
        return start_local(job, args)
    return submit_from_train(job, args)  # slurm: LaunchConfig admits no other mode


def launch_main(argv: Sequence[str] | None = None) -> int:
    """``recurlm-launch submit|sweep|status ...``."""
    args = build_parser().parse_args(argv)
    if args.command == "status":
        return show_status(args)
    try:
        combos = [args.overrides] if args.command == "submit" else expand_sweep(args.grid, args.overrides)
        jobs = [compose(as_slurm(combo)) for combo in combos]
    except (ConfigError, SweepError) as err:
        print(f"recurlm-launch: configuration error:\n{err}", file=sys.stderr)
        return 2
    if args.command == "submit":
        return submit_from_train(jobs[0], args.overrides, dry_run=args.dry_run)
    return submit_sweep(args, combos, jobs)


def eval_main(argv: Sequence[str] | None = None) -> int:
    """``recurlm-eval key=value ...``: evaluate a checkpoint; a run's ``config.yaml`` is read as its
    typed job config (``configs.load_yaml``) for the data, training length and W&B project."""
    return eval_cli.main(sys.argv[1:] if argv is None else argv, read_job_config=load_yaml)
