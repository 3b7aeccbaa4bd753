"""Trainer benchmarks: tokens/s and memory of real ``recurlm-train`` runs at ZeRO 0/1/2/3 with 2
processes vs 1 process, and the cost of activation checkpointing, side by side.

    python -m recurlm.benchmarks.train            # full: HGRN2 small, T = 512, 20 steps per run
    python -m recurlm.benchmarks.train --quick    # tiny HGRN2, T = 64, 6 steps per run (~3 minutes)
    python -m recurlm.benchmarks.train --model griffin --rounds 2

Every run is ``python -m recurlm.train`` (the ``recurlm-train`` entry point) in a subprocess with
``launch=local launch.nproc_per_node=2`` for the 2-process runs (torchrun, gloo), on the stdlib
corpus prepared once up front. Per run the script reads ``<run_dir>/metrics.jsonl`` (written by rank
0): tokens/s is the median of the logged steps after the first (the first includes warm-up), memory
is the largest ``memory_gb`` logged (rank 0's resident set size, so it includes the Python process,
the data and DeepSpeed, not only tensors). The global batch and sequence length are the same in
every run, so a 2-process run does half the work per rank. Runs are repeated ``--rounds`` times in
an interleaved order and the best tokens/s is kept. Ratios are against 1 process, ZeRO-0.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from recurlm.benchmarks.common import fmt_ratio, print_table

RUNS = [  # (label, processes, overrides)
    ("1 proc, ZeRO-0", 1, ["deepspeed=zero0"]),
    ("1 proc, ZeRO-0, checkpoint all blocks", 1, ["deepspeed=zero0", "deepspeed.checkpoint_blocks=[-1]"]),
    ("2 proc, ZeRO-0", 2, ["deepspeed=zero0"]),
    ("2 proc, ZeRO-1", 2, ["deepspeed=zero1"]),
    ("2 proc, ZeRO-2", 2, ["deepspeed=zero2"]),
    ("2 proc, ZeRO-3", 2, ["deepspeed=zero3"]),
    ("2 proc, ZeRO-3, checkpoint all blocks", 2, ["deepspeed=zero3", "deepspeed.checkpoint_blocks=[-1]"]),
]


def job_overrides(quick: bool, model: str, cache: str) -> list[str]:
    data = ["data.sources.0.max_bytes=300000" if quick else "data.sources.0.max_bytes=3000000",
            "data.tokenizer.vocab_size=512" if quick else "data.tokenizer.vocab_size=4096",
            "data.tokenizer.input_sentence_size=20000", "data.valid_fraction=0.05", "data.num_workers=1",
            f"data.cache_dir={cache}"]
    size = "tiny" if quick else "small"
    train = [f"model={model}", f"model.size={size}",
             f"train.seq_len={64 if quick else 512}", f"train.global_batch_size={8}",
             f"train.steps={6 if quick else 20}", "train.eval_batches=1", "train.eval_every=0",
             "train.checkpoint_every=0", "logger.progress=false", "logger.log_every=1"]
    return data + train


def run_once(base: list[str], nproc: int, overrides: list[str], run_dir: str, timeout: int) -> dict:
    launch = ["launch=local", f"launch.nproc_per_node={nproc}"] if nproc > 1 else []
    cmd = [sys.executable, "-m", "recurlm.train", *base, f"run_dir={run_dir}", *launch, *overrides]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"], "wall": wall}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [r for r in map(json.loads, f) if "tokens_per_s" in r]
    steady = [r["tokens_per_s"] for r in records[1:]] or [r["tokens_per_s"] for r in records]
    return {"tokens_per_s": statistics.median(steady), "memory_gb": max(r["memory_gb"] for r in records),
            "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, short runs")
    parser.add_argument("--model", default="hgrn2", help="model family (configs/model/<name>.yaml)")
    parser.add_argument("--rounds", type=int, default=None, help="repeats of every run, best kept (default 2; quick 1)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per run")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 2)

    from recurlm.configs import compose
    from recurlm.data import prepare

    with tempfile.TemporaryDirectory() as root:
        base = job_overrides(args.quick, args.model, os.path.join(root, "cache"))
        prepare(compose(base).data, progress=False)  # every run then reads the cache
        job = compose(base).train
        print(f"# recurlm-train, {args.model} size {'tiny' if args.quick else 'small'}, T={job.seq_len}, "
              f"global batch {job.global_batch_size}, {job.steps} steps per run, best of {rounds} round(s)", flush=True)
        results: dict[str, dict] = {}
        for r in range(rounds):
            order = RUNS if r % 2 == 0 else RUNS[::-1]
            for label, nproc, overrides in order:
                out = run_once(base, nproc, overrides, os.path.join(root, f"run{r}-{RUNS.index((label, nproc, overrides))}"),
                               args.timeout)
                best = results.get(label)
                if best is None or out.get("tokens_per_s", -1) > best.get("tokens_per_s", -1):
                    results[label] = out
                print(f"# {label}: " + (f"{out['tokens_per_s']:.0f} tok/s" if "tokens_per_s" in out
                                          else f"failed: {out['error']}") + f" ({out['wall']:.0f}s wall)", flush=True)

    base_tps = results[RUNS[0][0]].get("tokens_per_s")
    base_mem = results[RUNS[0][0]].get("memory_gb")
    rows = []
    for label, nproc, _ in RUNS:
        out = results[label]
        if "tokens_per_s" not in out:
            rows.append([label, nproc, "failed", "-", "-", "-", f"{out['wall']:.0f}s"])
            continue
        rows.append([label, nproc, f"{out['tokens_per_s']:.0f}",
                     fmt_ratio(out["tokens_per_s"] / base_tps if base_tps else None),
                     f"{out['memory_gb']:.2f}", fmt_ratio(out["memory_gb"] / base_mem if base_mem else None),
                     f"{out['wall']:.0f}s"])
    print_table(["run", "processes", "tokens/s", "vs 1 proc ZeRO-0", "rank-0 RSS GB", "vs 1 proc ZeRO-0",
                 "wall (incl. startup)"], rows, title="training step throughput and memory")


if __name__ == "__main__":
    main()
