"""GPU acceptance run: one command on one GPU (a second one adds a 2-GPU step), ~8 minutes on an
H100 with a cold Triton cache, writing ``gpu_acceptance.json`` and ``gpu_acceptance.md``.

    python -m recurlm.benchmarks.gpu_acceptance --out acceptance/          # on a GPU node
    python benchmarks/gpu_acceptance.py --dry-run --out /tmp/acceptance    # CPU: the plumbing, ~1-2 min

Sections (each a list of rows with ``ok`` in the JSON; the exit code is 1 if any row fails):

1. ``ops``: every op's fast path (``impl="triton"``) against its naive path in float64 on the same
   inputs, outputs, final states and gradients of every input, float32 and bfloat16, with document
   resets and initial states, at the shapes of two size presets of the family using it
   (``gpu_ops.TOLERANCE`` states the tolerances);
2. ``timing``: forward+backward time of each op against the reference implementation on the same
   GPU (``gpu_ops.reference_runner``), the ratio, TFLOP/s and the fraction of the GPU's bf16 peak;
3. ``train``: every family at ~125M (``gpu_models.TRAIN_PRESETS``) for 30 steps in bf16 through
   the trainer's DeepSpeed engine (ZeRO-2, one rank): tokens/s, MFU (``flops_per_token``), peak
   memory, loss falls, and the first step's start-up (compilation, fla autotuning) over a steady step;
4. ``syncs``: host-device synchronisations of one training step per block type
   (``torch.cuda.set_sync_debug_mode("warn")``);
5. ``decode``: 256 tokens at batch 1 and 64 with ``model.step``: tokens/s, memory flat;
6. ``doctor``: ``recurlm-doctor`` on this device (kernels forward, backward, bf16);
7. ``multi_gpu``: with two GPUs, two ``recurlm-train`` steps at 2 ranks (NCCL, ZeRO-3 bf16) on a
   small stdlib corpus: the run that crashes if a collective gets a CPU tensor.

``--dry-run`` runs every section on CPU at tiny sizes: ``impl="chunk"`` in place of Triton, the
op's naive path in place of the GPU references, explicit host reads in place of CUDA sync
warnings, 2 gloo processes in place of 2 GPUs. ``tests/benchmarks/test_gpu_acceptance.py`` runs it.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import time

if __name__ == "__main__" and not __package__:
    # run as a file: its folder (benchmarks/, holding kernels.py, models.py, train.py) must not
    # shadow top-level packages of the same names that dependencies import (e.g. `kernels`)
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch


@dataclass
class Settings:
    """Sizes of one acceptance run (full on a GPU, or the CPU dry run)."""

    dry_run: bool
    device: str
    impl: str
    op_sizes: tuple[str, str] | None
    """Two presets of each op's family; None: per-op defaults (``FULL_OP_SIZES``)."""
    op_batch: int
    op_seq_len: int
    timing_seq_len: int
    timing_repeats: int
    train_steps: int
    train_micro: int
    train_seq_len: int
    vocab: int
    decode_tokens: int
    decode_batches: tuple[int, ...]
    families: tuple[str, ...]


FULL_OP_SIZES = {"linear_scan": ("100m", "1b"), "gla": ("150m", "1b"), "rwkv6": ("small", "7b"),
                 "dplr_delta_rule": ("0.1b", "1.5b"), "mlstm": ("125m", "1.3b"), "slstm": ("125m", "350m"),
                 "titans_memory": ("170m", "760m"), "local_attention": ("100m", "1b")}
"""The ~125M preset and a ~1B one of each op's family (sLSTM: 350m, the largest its kernel runs)."""

OPS = tuple(FULL_OP_SIZES)


def settings(dry_run: bool) -> Settings:
    from recurlm.benchmarks.gpu_models import TRAIN_PRESETS

    families = tuple(TRAIN_PRESETS)
    if dry_run:
        return Settings(True, "cpu", "chunk", ("tiny", "small"), 1, 24, 32, 1, 2, 2, 16, 256, 8, (1, 4), families)
    return Settings(False, "cuda", "triton", None, 2, 256, 4096, 10, 30, 8, 2048, 32768, 256, (1, 64), families)


def _rows(section: str, fn: Callable[[], list[dict] | dict], log: Callable[[str], None]) -> dict[str, Any]:
    """Run one section; a crash becomes a failed section with its cause."""
    start = time.perf_counter()
    try:
        rows = fn()
        rows = rows if isinstance(rows, list) else [rows]
    except Exception as err:  # report, then go on with the next section
        rows = [{"ok": False, "failure": f"{type(err).__name__}: {str(err)[:500]}"}]
    seconds = time.perf_counter() - start
    ok = all(r.get("ok", False) for r in rows)
    log(f"{section}: {'ok' if ok else 'FAILED'} ({len(rows)} rows, {seconds:.1f} s)")
    return {"ok": ok, "seconds": seconds, "rows": rows}


def run_doctor(device: str, dry_run: bool) -> dict:
    from recurlm.launch import doctor

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = doctor.main(["--device", device] + (["--family", "hgrn2"] if dry_run else []))
    return {"ok": code == 0, "exit_code": code, "output": out.getvalue()[-4000:]}


def run_two_ranks(out_dir: str, dry_run: bool) -> dict:
    """Two steps of ``recurlm-train`` at 2 ranks (torchrun): ZeRO-3 bf16 over NCCL on 2 GPUs, gloo
    on CPU in a dry run."""
    if not dry_run and torch.cuda.device_count() < 2:
        return {"ok": True, "skipped": f"{torch.cuda.device_count()} GPU(s): needs 2"}
    out_dir = os.path.abspath(out_dir)
    size = ["model.size=tiny"] if dry_run else ["model.size=small", "model.kernel_impl=triton"]
    overrides = ["model=hgrn2", *size, "deepspeed=gpu_zero3_bf16", "train.steps=2", "train.seq_len=64",
                 "train.global_batch_size=4", "train.eval_batches=1", "logger.progress=false",
                 "logger.log_every=1", "logger.wandb.mode=disabled", "data.sources.0.max_bytes=300000",
                 "data.tokenizer.vocab_size=512", "data.tokenizer.input_sentence_size=20000",
                 "data.valid_fraction=0.05", "data.num_workers=1", f"data.cache_dir={out_dir}/data-cache",
                 f"run_dir={out_dir}/two-ranks", "resume=none", "launch=local", "launch.nproc_per_node=2"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    start = time.perf_counter()
    # -P and a neutral cwd: the repository root must never be on sys.path (its folders shadow packages)
    proc = subprocess.run([sys.executable, "-P", "-m", "recurlm.train", *overrides], capture_output=True, text=True,
                          timeout=900, env=env, cwd=out_dir)
    losses = []
    metrics = os.path.join(out_dir, "two-ranks", "metrics.jsonl")
    if os.path.exists(metrics):
        with open(metrics) as f:
            losses = [r["loss"] for r in map(json.loads, f) if "loss" in r]
    return {"ok": proc.returncode == 0 and len(losses) == 2, "exit_code": proc.returncode, "losses": losses,
            "backend": "gloo" if dry_run else "nccl", "seconds": time.perf_counter() - start,
            "stderr_tail": proc.stderr[-2000:] if proc.returncode else ""}


def run(s: Settings, out_dir: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    from recurlm.benchmarks import gpu_models, gpu_ops
    from recurlm.train.distributed import init_distributed
    from recurlm.train.monitor import peak_flops

    device = torch.device(s.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_acceptance: no CUDA device (use --dry-run on CPU)")
    os.makedirs(out_dir, exist_ok=True)
    peak = peak_flops(0.0)
    report: dict[str, Any] = {"settings": asdict(s), "device": torch.cuda.get_device_name(device)
                              if device.type == "cuda" else "cpu", "peak_flops": peak,
                              "torch": torch.__version__, "sections": {}}
    sections = report["sections"]
    sizes = (lambda op: s.op_sizes or FULL_OP_SIZES[op])
    sections["ops"] = _rows("ops", lambda: [r for op in OPS for r in gpu_ops.check_ops(
        [op], sizes(op), s.impl, device, s.op_batch, s.op_seq_len)], log)
    dtype = torch.float32 if s.dry_run else torch.bfloat16
    sections["timing"] = _rows("timing", lambda: [r for op in OPS for r in gpu_ops.time_ops(
        [op], sizes(op), s.impl, device, dtype, s.op_batch, s.timing_seq_len, s.timing_repeats, peak, s.dry_run)],
        log)
    init_distributed()  # a world of one for DeepSpeed
    presets = {f: ({"size": "tiny"} if s.dry_run else gpu_models.TRAIN_PRESETS[f]) for f in s.families}
    sections["train"] = _rows("train", lambda: [gpu_models.train_family(
        f, presets[f], s.train_steps, s.train_micro, s.train_seq_len, s.vocab, "bf16", peak, device)
        for f in s.families], log)
    sections["syncs"] = _rows("syncs", lambda: [gpu_models.syncs_per_step(
        f, presets[f], s.train_micro, s.train_seq_len, s.vocab, dtype, device) for f in s.families], log)
    sections["decode"] = _rows("decode", lambda: [gpu_models.decode_family(
        f, presets[f], s.decode_tokens, s.decode_batches, s.vocab, dtype, device) for f in s.families], log)
    sections["doctor"] = _rows("doctor", lambda: run_doctor(s.device, s.dry_run), log)
    sections["multi_gpu"] = _rows("multi_gpu", lambda: run_two_ranks(out_dir, s.dry_run), log)
    report["ok"] = all(sec["ok"] for sec in sections.values())
    with open(os.path.join(out_dir, "gpu_acceptance.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    from recurlm.benchmarks.gpu_report import markdown

    with open(os.path.join(out_dir, "gpu_acceptance.md"), "w") as f:
        f.write(markdown(report))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, chunk/naive/gloo stand-ins")
    parser.add_argument("--out", default="gpu_acceptance", help="directory for the JSON and markdown report")
    parser.add_argument("--families", default=None, help="comma-separated subset of families")
    args = parser.parse_args(argv)
    s = settings(args.dry_run)
    if args.families:
        s.families = tuple(args.families.split(","))
    report = run(s, args.out)
    print(f"gpu_acceptance: {'all sections passed' if report['ok'] else 'FAILED'}; report in "
          f"{os.path.join(args.out, 'gpu_acceptance.md')}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
