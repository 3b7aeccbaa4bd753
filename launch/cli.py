"""``recurlm-launch``: Slurm jobs for recurlm runs.

    recurlm-launch submit [--dry-run] <overrides>           # = recurlm-train launch=slurm <overrides>
    recurlm-launch sweep  [--dry-run] [--sweep-dir DIR] [--parallel P] [--grid key=a,b ...] <overrides>
    recurlm-launch status <run dir | sweep dir>

Overrides are recurlm-train's (``model=griffin launch.slurm.nodes=4 launch.slurm.partition=gpu ...``).
A sweep is the cartesian product of every ``--grid key=a,b,...`` and of every override in Hydra's
multirun syntax (``optim.lr=1e-3,3e-3``, ``seed=range(3)``, ``model=hgrn2,griffin``): one job array,
one run directory per element (``<sweep dir>/<i>/``), at most ``--parallel`` elements at once.

The entry point is ``recurlm.cli.launch_main``: it parses with :func:`build_parser`, composes each
job, and hands them to ``launch.slurm.submit_from_train`` (``submit``) or :func:`submit_sweep`; ``status``
is :func:`show_status`.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from typing import Sequence

from recurlm.launch.sbatch import Element, worker_overrides
from recurlm.launch.slurm import SubmitError, print_submission, read_jobs, status_lines, submit
from recurlm.train.config import JobConfig


class SweepError(ValueError):
    """Sweep overrides that do not parse; the message is Hydra's, naming the override."""


def expand_sweep(grid: Sequence[str], overrides: Sequence[str]) -> list[list[str]]:
    """Every combination of the sweep overrides (``--grid`` and Hydra multirun syntax), each a full
    override list in a stable order (grid first). Plain overrides appear in every element."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(list(grid) + list(overrides))
    except Exception as err:  # Hydra's parser errors name the override
        raise SweepError(f"cannot parse the sweep overrides: {err}") from None
    axes: list[list[str]] = []
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            values = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            values = [override.input_line]
        axes.append(values)
    return [list(combo) for combo in itertools.product(*axes)]


def as_slurm(overrides: Sequence[str]) -> list[str]:
    """The overrides with ``launch=slurm`` (whatever launch option they named)."""
    return [o for o in overrides if not o.startswith("launch=")] + ["launch=slurm"]


def submit_sweep(args: argparse.Namespace, combos: Sequence[Sequence[str]], jobs: Sequence[JobConfig]) -> int:
    """``sweep``: one job array over ``combos`` (from :func:`expand_sweep`) and their composed ``jobs``."""
    first = jobs[0]
    sweep_dir = os.path.abspath(args.sweep_dir or os.path.join(
        "outputs", f"sweep-{first.model.family}-{time.strftime('%Y%m%d-%H%M%S')}"))
    elements = [Element(os.path.join(sweep_dir, str(i)), worker_overrides(combo), int(job.train.steps),
                        str(job.model.family))
                for i, (combo, job) in enumerate(zip(combos, jobs))]
    launch = first.launch
    name = launch.slurm.job_name or f"recurlm-{os.path.basename(sweep_dir)}"
    parallel = launch.slurm.array_parallelism if args.parallel is None else args.parallel
    if not args.dry_run:
        os.makedirs(sweep_dir, exist_ok=True)
        with open(os.path.join(sweep_dir, "sweep.tsv"), "w") as f:
            f.write("element\trun_dir\toverrides\n")
            for i, e in enumerate(elements):
                f.write(f"{i}\t{e.run_dir}\t{' '.join(e.overrides)}\n")
    try:
        result = submit(first, elements, sweep_dir, name, array_parallelism=parallel, dry_run=args.dry_run)
    except SubmitError as err:
        print(f"recurlm-launch: {err}", file=sys.stderr)
        return 1
    if result is not None:
        print_submission(result, sweep_dir, elements)
        print(f"elements: {os.path.join(sweep_dir, 'sweep.tsv')}")
    return 0


def show_status(args: argparse.Namespace) -> int:
    """``status``: the Slurm jobs of a run or sweep directory, and its progress."""
    if not read_jobs(args.run_dir) and not os.path.isdir(args.run_dir):
        print(f"recurlm-launch: {args.run_dir} is not a run directory", file=sys.stderr)
        return 2
    print("\n".join(status_lines(args.run_dir)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recurlm-launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    submit = sub.add_parser("submit", help="render <run_dir>/slurm/train.sbatch and submit it")
    submit.add_argument("--dry-run", action="store_true", help="print the script(s), submit nothing")
    submit.add_argument("overrides", nargs="*", help="recurlm-train overrides")
    sweep = sub.add_parser("sweep", help="a job array over combinations of overrides")
    sweep.add_argument("--dry-run", action="store_true", help="print the script(s), submit nothing")
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=A,B",
                       help="a swept override (repeatable); Hydra multirun syntax in overrides works too")
    sweep.add_argument("--sweep-dir", default=None, help="parent of the element run dirs "
                                                         "(default outputs/sweep-<family>-<time>)")
    sweep.add_argument("--parallel", type=int, default=None,
                       help="at most this many elements at once (default launch.slurm.array_parallelism)")
    sweep.add_argument("overrides", nargs="*", help="recurlm-train overrides (shared or swept)")
    status = sub.add_parser("status", help="the Slurm jobs of a run or sweep, and its progress")
    status.add_argument("run_dir")
    return parser
