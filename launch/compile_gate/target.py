"""One target of the compile gate, in a process of its own: capture every launch, compile, report rows.

    python -m recurlm.launch.compile_gate.target --arch 90 --out rows.json [--ops ...] [--families ...]

Started by ``recurlm-doctor compile`` once per ``--arch`` (``capture.capturing`` changes the process
for good). Writes a JSON list with one row per distinct compiled launch.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from recurlm.kernels.gpu_arch import shared_memory_limit
from recurlm.launch.compile_gate.build import compile_all
from recurlm.launch.compile_gate.capture import Launch, capture_op, capturing
from recurlm.launch.compile_gate.scenarios import FLA_OPS, OWN_OPS, preset_scenarios

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def capture_launches(recorded: list[Launch], ops: list[str], families: list[str] | None, dtypes: list[str],
                     presets: list[str] | None = None) -> tuple[list[Launch], list[dict], list[dict]]:
    """(distinct launches, where each came from, capture failures) over the preset grid; ``recorded``
    is the list ``capturing`` appends to."""
    launches: dict[str, Launch] = {}
    origins: dict[str, dict] = {}
    failures = []
    for scenario in preset_scenarios(families):
        if scenario.op not in ops or (presets and not set(presets) & set(scenario.presets)):
            continue
        for dtype in dtypes:
            recorded.clear()
            try:
                capture_op(scenario, DTYPES[dtype])
            except Exception as error:  # the launcher itself failed: reported as a failed row
                failures.append({"kernel": "(launcher)", "module": f"recurlm.kernels.{scenario.op}",
                                 "op": scenario.op, "dtype": dtype, "scenario": scenario.label,
                                 "presets": list(scenario.presets), "ok": False,
                                 "error": f"{type(error).__name__}: {error}"[:2000]})
                continue
            for launch in recorded:
                origin = origins.setdefault(launch.key, {"op": scenario.op, "scenario": scenario.label,
                                                         "presets": list(scenario.presets), "dtypes": [],
                                                         "autotune_sites": []})
                launches.setdefault(launch.key, launch)
                if dtype not in origin["dtypes"]:
                    origin["dtypes"].append(dtype)
                if launch.site:
                    origin["autotune_sites"].append(launch.site)
    keys = list(launches)
    return [launches[k] for k in keys], [origins[k] for k in keys], failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--ops", default=",".join(OWN_OPS + FLA_OPS))
    parser.add_argument("--families", default="")
    parser.add_argument("--presets", default="")
    parser.add_argument("--dtypes", default="float32,bfloat16,float16")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--configs-per-kernel", type=int, default=2)
    args = parser.parse_args(argv)

    recorded: list[Launch] = []
    capturing(args.arch, recorded, args.configs_per_kernel)
    start = time.perf_counter()
    launches, origins, failures = capture_launches(recorded, args.ops.split(","), [f for f in args.families.split(",") if f],
                                                   args.dtypes.split(","), [p for p in args.presets.split(",") if p])
    print(f"sm_{args.arch}: {len(launches)} distinct launches captured in {time.perf_counter() - start:.0f} s; "
          f"compiling with {args.jobs} workers", file=sys.stderr, flush=True)

    def progress(done: int, total: int) -> None:
        if done % 50 == 0 or done == total:
            print(f"sm_{args.arch}: compiled {done}/{total} ({time.perf_counter() - start:.0f} s)",
                  file=sys.stderr, flush=True)

    results = compile_all(launches, args.arch, args.jobs, args.timeout, progress)
    rows = failures
    for launch, origin, result in zip(launches, origins, results):
        rows.append({"kernel": launch.fn.__name__, "module": launch.fn.module, "arch": args.arch,
                     "op": origin["op"], "dtype": ",".join(origin["dtypes"]), "scenario": origin["scenario"],
                     "presets": origin["presets"], "constexprs": launch.named_constexprs(),
                     "config": launch.config, "autotune_sites": origin["autotune_sites"], "num_warps": launch.options["num_warps"],
                     "num_stages": launch.options["num_stages"], **result,
                     "shared_limit": shared_memory_limit(args.arch)})
    for row in failures:
        row["arch"] = args.arch
    with open(args.out, "w") as out:
        json.dump(rows, out, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
