"""``recurlm-doctor``: a preflight check of this node (and of every rank of a job) before training.

    recurlm-doctor                               # versions + every kernel, this process only
    recurlm-doctor --family hgrn2                # only the kernels HGRN2 uses
    torchrun --nproc-per-node 2 -m recurlm.launch.doctor --family griffin   # + all_reduce over the ranks
    recurlm-doctor compile --arch 80,90 --json out.json   # compile every Triton kernel for A100/H100
                                                          # (no GPU needed: recurlm.launch.compile_gate)

1. versions: Python, torch (+ CUDA and driver), Triton, DeepSpeed, flash-linear-attention, recurlm;
2. kernels: each recurrence the model uses (``recurlm/kernels/<op>``) at small shapes on this
   node's device, with document resets and an initial state: ``impl="chunk"`` (and on CUDA
   ``impl="triton"``) against the sequential ``impl="naive"`` reference, outputs, final states and
   the gradients of every input, in float32; on CUDA also ``impl="triton"`` in bfloat16 and at
   head dim 64 (tolerances in ``TOLERANCES``);
3. collective: when started under torchrun / srun (WORLD_SIZE > 1), one all_reduce over every rank
   (gloo on CPU, nccl on GPU) whose result must be sum(rank + 1), within ``--timeout`` seconds.

Exit code 0 when everything passes; 1 with a report naming each failing check. Every generated
Slurm job runs it on all its ranks before training.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

# The recurrence ops each family's layers call (models/<family>.py).
FAMILY_KERNELS: dict[str, list[str]] = {
    "hgrn2": ["gla"],
    "griffin": ["linear_scan", "local_attention"],
    "hawk": ["linear_scan"],
    "rwkv6": ["rwkv6"],
    "rwkv7": ["dplr_delta_rule"],
    "titans_mac": ["titans_memory"],
    "titans_mag": ["titans_memory"],
    "titans_mal": ["titans_memory"],
    "xlstm": ["mlstm", "slstm"],
}


@dataclass
class KernelCase:
    """How to call one op at small shapes: the public function and its keyword inputs."""

    op: Callable
    inputs: Callable[[torch.device], dict[str, Any]]


def _cases(head_dim: int | None = None) -> dict[str, KernelCase]:
    """Small inputs with resets and an initial state, built by each op's ``examples.make_inputs``:
    head dims 8-16 (scan width 32), or ``head_dim`` for every op (scan width 2 x ``head_dim``)."""
    hd, small = head_dim or 16, head_dim or 8
    from recurlm import kernels
    from recurlm.kernels.dplr_delta_rule import examples as dplr_t
    from recurlm.kernels.gla import examples as gla_t
    from recurlm.kernels.linear_scan import examples as scan_t
    from recurlm.kernels.local_attention import examples as attn_t
    from recurlm.kernels.mlstm import examples as mlstm_t
    from recurlm.kernels.rwkv6 import examples as rwkv6_t
    from recurlm.kernels.slstm import examples as slstm_t
    from recurlm.kernels.titans_memory import examples as titans_t

    def seeded(build: Callable[..., dict], **kwargs) -> Callable[[torch.device], dict]:
        def make(device: torch.device) -> dict:
            torch.manual_seed(0)
            return build(device=device, **kwargs)
        return make

    return {
        "gla": KernelCase(kernels.gla, seeded(gla_t.make_inputs, batch=2, seq_len=40, heads=2, head_dim=hd,
                                              reset_prob=0.05, initial_state=True)),
        "rwkv6": KernelCase(kernels.rwkv6, seeded(rwkv6_t.make_inputs, batch=2, seq_len=40, heads=2, head_dim=hd,
                                                  reset_prob=0.05, initial_state=True)),
        "dplr_delta_rule": KernelCase(kernels.dplr_delta_rule, seeded(dplr_t.make_inputs, batch=2, seq_len=40, heads=2, dk=hd,
                                                           dv=hd, reset_prob=0.05, initial_state=True)),
        "linear_scan": KernelCase(kernels.linear_scan, seeded(scan_t.make_inputs, batch=2, seq_len=40, dim=2 * hd,
                                                              reset_prob=0.05, initial_state=True)),
        "local_attention": KernelCase(kernels.local_attention,
                                      seeded(attn_t.make_inputs, batch=2, seq_len=40, heads=2, kv_heads=1,
                                             head_dim=hd, window=8, reset_prob=0.05, initial_state=True)),
        "mlstm": KernelCase(kernels.mlstm, seeded(mlstm_t.make_inputs, batch=2, seq_len=40, heads=2, dk=hd,
                                                  reset_prob=0.05, initial_state=True)),
        "slstm": KernelCase(kernels.slstm, seeded(slstm_t.make_inputs, batch=2, seq_len=24, heads=2, dim=small,
                                                  reset_prob=0.05, initial_state=True)),
        "titans_memory": KernelCase(kernels.titans_memory, seeded(titans_t.make_inputs, B=1, T=32, H=2, D=small)),
    }


def tensors_of(value: Any) -> list[torch.Tensor]:
    """Every tensor inside an output / state (tensors, tuples, named tuples, dataclasses)."""
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in tensors_of(v)]
    if hasattr(value, "__dataclass_fields__"):
        return [t for name in value.__dataclass_fields__ for t in tensors_of(getattr(value, name))]
    return []


def max_error(result: Any, reference: Any) -> float:
    """Largest |a - b| / (1 + |b|) over all tensors of two results of one op."""
    got, want = tensors_of(result), tensors_of(reference)
    if len(got) != len(want):
        return float("inf")
    worst = 0.0
    for a, b in zip(got, want):
        if a.shape != b.shape:
            return float("inf")
        if a.dtype == torch.bool:
            worst = max(worst, float((a != b).any()))
            continue
        a, b = a.detach().double().cpu(), b.detach().double().cpu()
        if not torch.isfinite(a).all():
            return float("inf")
        worst = max(worst, float(((a - b).abs() / (1 + b.abs())).max()))
    return worst


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


TOLERANCES = {("cpu", torch.float32): 1e-3, ("cuda", torch.float32): 5e-3, ("cpu", torch.bfloat16): 5e-2,
              ("cuda", torch.bfloat16): 5e-2}
"""Largest |a - b| / (1 + |b|) allowed against the float32 naive reference, outputs and gradients.
CUDA float32 is looser than CPU: the Triton kernels' float32 ``tl.dot`` runs in TF32 (10-bit
mantissa) on Ampere and Hopper. bfloat16: inputs rounded to bf16 (the reference sees the same
rounded values in float32), 8-bit mantissa outputs."""


def _floating_inputs(inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The top-level floating-point tensors of an op's inputs (states excepted: they stay float32)."""
    return {k: v for k, v in inputs.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and "state" not in k}


def _run(case: KernelCase, device: torch.device, impl: str, dtype: torch.dtype, backward: bool) -> list[torch.Tensor]:
    """Outputs and final states of one call (inputs rounded to ``dtype``, computed in ``dtype`` for
    ``impl`` and in float32 for the naive reference) and, with ``backward``, the gradients of a fixed
    random projection of them w.r.t. every floating input."""
    inputs = case.inputs(device)
    leaves = _floating_inputs(inputs)
    for key, x in leaves.items():
        rounded = x.detach().to(dtype)
        inputs[key] = (rounded if impl != "naive" else rounded.float()).requires_grad_(backward)
    result = tensors_of(case.op(**inputs, output_final_state=True, impl=impl))
    if not backward:
        return result
    generator = torch.Generator().manual_seed(0)
    projection = sum((t.float() * torch.randn(t.shape, generator=generator).to(t.device)).sum()
                     for t in result if t.is_floating_point() and t.requires_grad)
    grads = torch.autograd.grad(projection, [inputs[k] for k in leaves], allow_unused=True)
    return result + [torch.zeros_like(inputs[k]) if g is None else g for k, g in zip(leaves, grads)]


def check_kernel(name: str, case: KernelCase, device: torch.device, impls: Sequence[str],
                 tolerance: float | None = None, dtype: torch.dtype = torch.float32,
                 backward: bool = False) -> list[Check]:
    """``impls`` of one op against ``impl="naive"`` (float32) at small shapes on ``device``: outputs
    and final states, and with ``backward`` the gradients of every floating input; inputs in
    ``dtype`` (float32 or bfloat16); ``tolerance`` defaults to :data:`TOLERANCES`."""
    tolerance = TOLERANCES[(device.type, dtype)] if tolerance is None else tolerance
    what = ("fwd+bwd" if backward else "fwd") + ("" if dtype == torch.float32 else f" {str(dtype)[6:]}")
    checks = []
    try:
        reference = _run(case, device, "naive", dtype, backward)
    except Exception as err:  # a broken reference is a failed check, reported with its cause
        return [Check(f"kernel {name} naive", False, f"{type(err).__name__}: {err}")]
    for impl in impls:
        start = time.perf_counter()
        try:
            result = _run(case, device, impl, dtype, backward)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            err = max_error(result, reference)
            ok = err <= tolerance
            detail = (f"max rel. error {err:.2e} vs naive (tolerance {tolerance:g}), "
                      f"{time.perf_counter() - start:.2f} s")
        except Exception as exc:  # report, do not crash: the point is a readable diagnosis
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        checks.append(Check(f"kernel {name} {impl} {what} [{device.type}]", ok, detail))
    return checks


PRESET_HEAD_DIM = 64
"""Head dim of the extra CUDA check (RWKV's and most presets' head size): the small test shapes
alone would not exercise the block sizes real models launch."""


def check_kernels(family: Optional[str], device: torch.device) -> list[Check]:
    """Every op of ``family`` (all ops without one): chunk (and on CUDA Triton) against naive,
    forward and backward in float32; on CUDA also the Triton path in bfloat16 and in float32 at
    head dim ``PRESET_HEAD_DIM``."""
    cases = _cases()
    if family is not None and family not in FAMILY_KERNELS:
        return [Check("kernels", False, f"unknown model family {family!r}; known: {sorted(FAMILY_KERNELS)}")]
    names = FAMILY_KERNELS[family] if family else sorted(cases)
    checks = []
    preset_sized = _cases(head_dim=PRESET_HEAD_DIM) if device.type == "cuda" else {}
    for name in names:
        checks += check_kernel(name, cases[name], device, ["chunk"] + (["triton"] if device.type == "cuda" else []),
                               backward=True)
        if device.type == "cuda":
            checks += check_kernel(name, cases[name], device, ["triton"], dtype=torch.bfloat16, backward=True)
            checks += check_kernel(f"{name} head_dim {PRESET_HEAD_DIM}", preset_sized[name], device, ["triton"],
                                   backward=True)
    return checks


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # not installed, or no metadata
        return "not installed"


def versions() -> list[tuple[str, str]]:
    rows = [("python", platform.python_version()), ("torch", torch.__version__),
            ("cuda (torch build)", str(torch.version.cuda)),
            ("cuda devices", str(torch.cuda.device_count()) if torch.cuda.is_available() else "none")]
    if torch.cuda.is_available():
        rows.append(("gpu", torch.cuda.get_device_name(0)))
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.split()
        rows.append(("nvidia driver", out[0] if out else "unknown"))
    rows += [("triton", _version("triton")), ("deepspeed", _version("deepspeed")),
             ("flash-linear-attention", _version("flash-linear-attention")), ("recurlm", _version("recurlm")),
             ("host", platform.node())]
    return rows


def check_collective(timeout: float) -> list[Check]:
    """One all_reduce over every rank of the job (torchrun / srun environment)."""
    world = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")))
    if world <= 1:
        return []
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    name = f"all_reduce {backend} over {world} ranks"
    start = time.perf_counter()
    try:
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout))
        value = torch.tensor([float(rank + 1)], device="cuda" if backend == "nccl" else "cpu")
        dist.all_reduce(value)
        expected = world * (world + 1) / 2
        ok = float(value.item()) == expected
        detail = f"sum {value.item():g} (expected {expected:g}) in {time.perf_counter() - start:.2f} s"
        dist.destroy_process_group()
    except Exception as err:  # timeouts, refused connections: the report is the point
        ok = False
        detail = (f"{type(err).__name__} after {time.perf_counter() - start:.1f} s: {str(err).splitlines()[0][:300]} "
                  f"(MASTER_ADDR={os.environ.get('MASTER_ADDR')} MASTER_PORT={os.environ.get('MASTER_PORT')})")
    return [Check(name, ok, detail)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recurlm-doctor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default=None, help=f"check only this model's kernels ({', '.join(FAMILY_KERNELS)})")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds allowed for the collective")
    parser.add_argument("--no-kernels", action="store_true", help="skip the kernel checks")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compile"]:
        from recurlm.launch.compile_gate import main as compile_gate
        return compile_gate(argv[1:])
    args = build_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    tag = f"[recurlm-doctor rank {rank} {platform.node()}]"
    start = time.perf_counter()
    if rank == 0:
        print("\n".join(f"{tag} {k:<24}{v}" for k, v in versions()), flush=True)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    checks = [] if args.no_kernels else check_kernels(args.family, device)
    checks += check_collective(args.timeout)
    failed = [c for c in checks if not c.ok]
    for c in checks:
        if rank == 0 or not c.ok:
            print(f"{tag} {'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}", flush=True)
    verdict = "FAILED: " + "; ".join(c.name for c in failed) if failed else "all checks passed"
    print(f"{tag} {verdict} ({time.perf_counter() - start:.1f} s)", file=sys.stderr if failed else sys.stdout,
          flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
