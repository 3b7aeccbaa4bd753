"""``recurlm-doctor compile``: compile every Triton kernel a training or decode step can launch, for
A100 (sm_80) and H100 (sm_90), on a machine without a GPU.

    recurlm-doctor compile --arch 80,90 --json compile.json     # the CI gate (all ops, all presets)
    recurlm-doctor compile --arch 90 --ops slstm,mlstm --dtypes float32   # a subset
    recurlm-doctor compile --arch 80 --presets xlstm/small,hawk/small     # the dims of two presets

Covered: recurlm's own kernels (linear_scan, local_attention, mlstm, slstm, titans_memory) and the
flash-linear-attention kernels behind gla / rwkv6 / dplr_delta_rule, forward and backward, with and without
resets and states, at the dims of every size preset (``scenarios``), in each ``--dtypes``. How the
launches are obtained: ``capture``; how they are compiled and measured: ``build``. Autotuned
kernels: every config their pruning keeps, else a sample of ``--configs-per-kernel`` per launch.

A launch fails the gate (exit code 1) when it does not compile (a compile running past
``--timeout`` seconds included), when its block needs more shared memory than the target allows
(``recurlm.kernels.gpu_arch.SHARED_MEMORY_PER_BLOCK``), or when ptxas spills more than
``--max-spill`` bytes per thread (``SPILL_FAIL_BYTES``); smaller spills are listed as warnings.
An autotune candidate over a limit is a warning ("autotune-skip") when every autotuned launch it
belongs to has a candidate within the limits: the autotuner skips configs that cannot launch
(out of resources) and times spilling ones out, so only a launch with no usable config fails.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from typing import Sequence

from recurlm.launch.compile_gate.scenarios import FLA_OPS, OWN_OPS

SPILL_FAIL_BYTES = 1024
"""Spilled bytes per thread above which a launch fails the gate. A spill is a round trip through
local memory (L1, then L2/HBM) on every use of the spilled value; a few hundred bytes in a
prologue cost little, but spills of this size sit in the inner loop of a recurrence (sLSTM and
mLSTM at large heads spilled 4.7-174 KB here before their fixes). Any spill below it is a warning."""


FAILING = ("compile", "shared-memory", "spill")
"""Statuses that fail the gate."""


def classify(row: dict, max_spill: int) -> str:
    """"ok", "warn-spill", or the reason the row fails: "compile", "shared-memory", "spill"."""
    if not row["ok"]:
        return "compile"
    if row["shared_bytes"] > row["shared_limit"]:
        return "shared-memory"
    if row["spilled_bytes"] > max_spill:
        return "spill"
    return "warn-spill" if row["spilled_bytes"] > 0 else "ok"


def excuse_autotune_candidates(rows: list[dict]) -> None:
    """Mark "autotune-skip" the failing candidates whose every autotuned launch has a passing one."""
    usable = {site for row in rows if row["status"] in ("ok", "warn-spill") for site in row.get("autotune_sites", ())}
    for row in rows:
        sites = row.get("autotune_sites") or []
        if row["status"] in ("shared-memory", "spill") and sites and all(site in usable for site in sites):
            row["status"] = "autotune-skip"


def run_target(arch: int, args: argparse.Namespace, out: str) -> list[dict]:
    """Run one target's capture and compiles in a fresh process (no interpreter: real JIT kernels)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    command = [sys.executable, "-P", "-m", "recurlm.launch.compile_gate.target", "--arch", str(arch), "--out", out,
               "--ops", args.ops, "--families", args.families, "--presets", args.presets, "--dtypes", args.dtypes, "--timeout",
               str(args.timeout), "--jobs", str(args.jobs), "--configs-per-kernel", str(args.configs_per_kernel)]
    subprocess.run(command, env=env, check=True, timeout=args.total_timeout)
    with open(out) as f:
        return json.load(f)


def print_table(rows: list[dict]) -> None:
    """One line per (arch, op, kernel): launches, failures, worst shared memory, registers and spills."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["arch"], row["op"], row["kernel"])].append(row)
    print(f"{'arch':<6}{'op':<16}{'kernel':<44}{'launches':>9}{'failed':>7}{'max smem KB':>12}{'limit':>7}"
          f"{'max regs':>9}{'max spill B':>12}")
    for (arch, op, kernel), group in sorted(groups.items()):
        compiled = [r for r in group if r["ok"]]
        failed = sum(r["status"] in FAILING for r in group)
        worst = lambda key: max((r[key] for r in compiled), default=0)
        print(f"sm_{arch:<3}{op:<16}{kernel[:43]:<44}{len(group):>9}{failed:>7}{worst('shared_bytes') / 1024:>12.1f}"
              f"{group[0].get('shared_limit', 0) // 1024:>7}{worst('registers'):>9}{worst('spilled_bytes'):>12}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recurlm-doctor compile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="80,90", help="compute capabilities to compile for (80: A100, 90: H100)")
    parser.add_argument("--json", default=None, help="write every row (one per compiled launch) to this file")
    parser.add_argument("--dtypes", default="float32,bfloat16,float16", help="input dtypes the ops are run with")
    parser.add_argument("--ops", default=",".join(OWN_OPS + FLA_OPS), help="ops to cover (default: all)")
    parser.add_argument("--families", default="", help="only these families' presets (default: all)")
    parser.add_argument("--presets", default="", help="only dims some of these presets use, e.g. xlstm/small")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one compile may take")
    parser.add_argument("--total-timeout", type=float, default=3600.0, help="seconds one target may take")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiles run in parallel")
    parser.add_argument("--configs-per-kernel", type=int, default=2,
                        help="autotune configs sampled per launch of a kernel without config pruning")
    parser.add_argument("--max-spill", type=int, default=SPILL_FAIL_BYTES,
                        help="spilled bytes per thread above which a launch fails")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in (int(a) for a in args.arch.split(",")):
            rows += run_target(arch, args, os.path.join(tmp, f"sm_{arch}.json"))
    for row in rows:
        row["status"] = classify(row, args.max_spill)
    excuse_autotune_candidates(rows)
    print_table(rows)
    for row in rows:
        if row["status"] != "ok":
            detail = row["error"].splitlines()[-1] if row["error"] else (
                f"shared {row['shared_bytes']} B (limit {row['shared_limit']}), {row['registers']} registers, "
                f"{row['spilled_bytes']} B spilled")
            print(f"{'FAIL' if row['status'] in FAILING else 'WARN'} [{row['status']}] sm_{row['arch']} "
                  f"{row['kernel']} ({row['op']} {row['scenario']}, {row['dtype']}): {detail}")
    failed = [r for r in rows if r["status"] in FAILING]
    for arch in sorted({r["arch"] for r in rows}):
        counts = defaultdict(int)
        for row in rows:
            if row["arch"] == arch:
                counts[row["status"]] += 1
        print(f"sm_{arch}: {sum(counts.values())} launches: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=1, default=str)
    print(f"{'FAILED' if failed else 'passed'}: {len(failed)} of {len(rows)} launches fail the gate "
          f"({time.perf_counter() - start:.0f} s)")
    return 1 if failed else 0
