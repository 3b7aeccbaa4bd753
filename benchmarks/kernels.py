"""Kernel benchmarks on CPU: recurlm's chunkwise path vs its sequential reference and vs the torch
references of other packages, forward + backward, side by side in one process.

    python -m recurlm.benchmarks.kernels            # full: T in {512, 2048, 8192}
    python -m recurlm.benchmarks.kernels --quick    # small shapes, about a minute
    python -m recurlm.benchmarks.kernels --ops gla,mlstm --repeats 5

For every op and sequence length T it prints:
- fwd+bwd time of ``impl="chunk"`` and ``impl="naive"`` and their ratio (target: chunk >= 10x naive
  at T = 2048). naive is only run up to ``--naive-max-t`` (2048 in full mode); above it its time is
  extrapolated from the longest measured length, linearly in T (every naive path is a sequential
  loop), and marked "~".
- achieved GFLOP/s of the chunk path: 3 x the forward FLOPs of ``recurlm.kernels.<op>.flops`` (backward
  ~= 2 x forward) over the fwd+bwd time, and the fraction of this machine's float32 matmul ceiling
  (2048^3 matmul, measured at the start of the same run).
- peak tensor memory of one chunk fwd+bwd (``common.PeakTensorMemory``: live bytes of every storage
  allocated under a dispatch mode, freed via finalizers; inputs excluded) and bytes per token, which
  stays flat when memory is linear in T.
- a second table: recurlm chunk vs the other packages' torch references run on the same inputs
  (pre-transposed to their layout): mlstm_kernels ``chunkwise--native_autograd`` for mlstm, fla's
  ``naive_recurrent_gla`` (fla has no torch chunk GLA), ``naive_chunk_rwkv6`` (forward only: its
  backward fails in place) and ``naive_recurrent_rwkv6``, and ``dplr_chunkwise``; for local_attention
  torch's own SDPA with a dense banded mask (``local_attention.naive.banded_sdpa_reference``, the
  test oracle of naive; O(T^2), so skipped above ``--naive-max-t``). "ref / recurlm" > 1 means recurlm is faster
  (target: >= 1).
"""
from __future__ import annotations

import argparse
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch

from recurlm.benchmarks.common import (best_times, fmt_bytes, fmt_ratio, fmt_time, matmul_gflops,
                                       peak_memory_bytes, print_table, set_threads)
from recurlm.kernels.examples import grad_leaves

Inputs = dict
Runner = Callable[[], torch.Tensor]  # one forward; returns the output to backpropagate


def fwd_bwd(forward: Runner, leaves: list[torch.Tensor]) -> Callable[[], None]:
    """A callable running forward and the backward of a fixed random cotangent to ``leaves``."""
    cotangent: list[torch.Tensor] = []

    def step() -> None:
        out = forward()
        if not cotangent:
            cotangent.append(torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(out.dtype))
        torch.autograd.grad(out, leaves, cotangent[0])

    return step


def forward_only(forward: Runner) -> Callable[[], None]:
    def step() -> None:
        with torch.no_grad():
            forward()

    return step


@dataclass
class Reference:
    """Another package's torch implementation of an op: ``prepare`` maps recurlm's inputs to its
    arguments (outside the timing), ``run`` runs it on them and returns the output."""
    name: str
    prepare: Callable[[Inputs], dict]
    run: Callable[[dict], torch.Tensor]
    backward: bool = True
    min_t: int = 1
    """Some references need T to be a multiple of their chunk size."""
    quadratic: bool = False
    """O(T^2) references run only up to --naive-max-t."""


@dataclass
class OpBench:
    name: str
    make: Callable[[int], Inputs]
    """T -> inputs (requires_grad set) for recurlm's op."""
    run: Callable[[Inputs, str], torch.Tensor]
    """(inputs, impl) -> output."""
    flops: Callable[[int], int]
    """T -> forward FLOPs (the op's ``flops``)."""
    shape: str
    references: list[Reference] = field(default_factory=list)


def _copies(*names: str) -> Callable[[Inputs], dict]:
    """Detached leaf copies of the named inputs (layout unchanged)."""
    return lambda inputs: {n: inputs[n].detach().clone().requires_grad_() for n in names}


def _bhtd(*names: str, rest: tuple[str, ...] = ()) -> Callable[[Inputs], dict]:
    """[B, T, H, D] -> contiguous [B, H, T, D] detached leaves (keys kept), other keys copied."""
    def prepare(inputs: Inputs) -> dict:
        out = {n: inputs[n].detach().transpose(1, 2).contiguous().requires_grad_() for n in names}
        out.update({n: inputs[n].detach().clone().requires_grad_() for n in rest})
        return out

    return prepare


def build_ops(B: int, H: int, D: int, scan_dim: int, window: int) -> dict[str, OpBench]:
    from recurlm.kernels import dplr_delta_rule, gla, linear_scan, local_attention, mlstm, rwkv6, slstm, titans_memory
    from recurlm.kernels.dplr_delta_rule import examples as dplr_t, flops as dplr_flops
    from recurlm.kernels.gla import examples as gla_t, flops as gla_flops
    from recurlm.kernels.linear_scan import examples as scan_t, flops as scan_flops
    from recurlm.kernels.local_attention import examples as la_t, flops as la_flops
    from recurlm.kernels.mlstm import examples as mlstm_t, flops as mlstm_flops
    from recurlm.kernels.rwkv6 import examples as rwkv6_t, flops as rwkv6_flops
    from recurlm.kernels.slstm import examples as slstm_t, flops as slstm_flops
    from recurlm.kernels.titans_memory import examples as titans_t, flops as titans_flops
    from recurlm.kernels.local_attention.naive import banded_sdpa_reference

    ops = [
        OpBench("linear_scan", lambda T: scan_t.make_inputs(B, T, scan_dim, requires_grad=True),
                lambda x, impl: linear_scan(**x, impl=impl)[0], lambda T: scan_flops(B, T, scan_dim),
                f"B={B} D={scan_dim}"),
        OpBench("gla", lambda T: gla_t.make_inputs(B, T, H, D, requires_grad=True),
                lambda x, impl: gla(**x, impl=impl)[0], lambda T: gla_flops(B, T, H, D),
                f"B={B} H={H} K=V={D}"),
        OpBench("rwkv6", lambda T: rwkv6_t.make_inputs(B, T, H, D, requires_grad=True),
                lambda x, impl: rwkv6(**x, impl=impl)[0], lambda T: rwkv6_flops(B, T, H, D),
                f"B={B} H={H} K=V={D}"),
        OpBench("dplr_delta_rule", lambda T: dplr_t.make_inputs(B, T, H, D, D, requires_grad=True),
                lambda x, impl: dplr_delta_rule(**x, impl=impl)[0], lambda T: dplr_flops(B, T, H, D, D),
                f"B={B} H={H} K=V={D}"),
        OpBench("mlstm", lambda T: mlstm_t.make_inputs(B, T, H, D, requires_grad=True),
                lambda x, impl: mlstm(**x, impl=impl)[0], lambda T: mlstm_flops(B, T, H, D),
                f"B={B} H={H} K=V={D}"),
        OpBench("slstm", lambda T: slstm_t.make_inputs(B, T, H, D, requires_grad=True),
                lambda x, impl: slstm(**x, impl=impl)[0], lambda T: slstm_flops(B, T, H, D),
                f"B={B} H={H} D={D}"),
        # learning rates up to 0.1: at the examples' default (0.5) the depth-2 memory diverges to NaN
        # within ~64 tokens, and the run would time a NaN workload
        OpBench("titans_memory",
                lambda T: titans_t.make_inputs(B, T, H, D, depth=2, theta_max=0.1, requires_grad=True),
                lambda x, impl: titans_memory(**x, impl=impl)[0],
                lambda T: titans_flops(B, T, H, D, depth=2), f"B={B} H={H} D={D} depth=2 chunk=16"),
        OpBench("local_attention", lambda T: la_t.make_inputs(B, T, H, 1, D, window, requires_grad=True),
                lambda x, impl: local_attention(**x, impl=impl)[0],
                lambda T: la_flops(B, T, H, D, window), f"B={B} H={H} Hkv=1 D={D} window={window}"),
    ]
    ops = {op.name: op for op in ops}
    ops["local_attention"].references.append(Reference(
        "torch SDPA, dense banded mask", _copies("q", "k", "v"),
        lambda a: banded_sdpa_reference(a["q"], a["k"], a["v"], window), quadratic=True))
    _add_references(ops)
    return ops


def _add_references(ops: dict[str, OpBench]) -> None:
    """Attach the other packages' torch implementations that are installed."""
    warnings.filterwarnings("ignore", message=".*Triton is not supported.*")
    try:
        from mlstm_kernels.torch import get_mlstm_kernel

        chunkwise = get_mlstm_kernel("chunkwise--native_autograd")

        def prep_mlstm(x: Inputs) -> dict:
            out = _bhtd("q", "k", "v")(x)
            out.update({n: x[n].detach().transpose(1, 2).contiguous().requires_grad_() for n in ("i", "f")})
            return out

        ops["mlstm"].references.append(Reference(
            "mlstm_kernels chunkwise--native_autograd", prep_mlstm,
            lambda a: chunkwise(a["q"], a["k"], a["v"], a["i"], a["f"], chunk_size=64), min_t=64))
    except ImportError as e:
        print(f"# mlstm_kernels unavailable: {e}")
    try:
        from fla.ops.generalized_delta_rule.dplr.naive import dplr_chunkwise
        from fla.ops.gla.naive import naive_recurrent_gla
        from fla.ops.rwkv6.chunk_naive import naive_chunk_rwkv6
        from fla.ops.rwkv6.recurrent_naive import naive_recurrent_rwkv6
    except ImportError as e:
        print(f"# flash-linear-attention references unavailable: {e}")
        return

    ops["gla"].references.append(Reference(
        "fla naive_recurrent_gla (sequential)", _copies("q", "k", "v", "g"),
        lambda a: naive_recurrent_gla(a["q"], a["k"], a["v"], a["g"])[0]))
    rwkv_prep = _bhtd("r", "k", "v", "w", rest=("u",))
    ops["rwkv6"].references += [
        Reference("fla naive_chunk_rwkv6 (fwd only)", rwkv_prep,
                  lambda a: naive_chunk_rwkv6(a["r"], a["k"], a["v"], a["w"], a["u"], chunk_size=32),
                  backward=False, min_t=32),
        Reference("fla naive_recurrent_rwkv6 (sequential)", rwkv_prep,
                  lambda a: naive_recurrent_rwkv6(a["r"], a["k"], a["v"], a["w"], a["u"])[0]),
    ]
    ops["dplr_delta_rule"].references.append(Reference(
        "fla dplr_chunkwise", _bhtd("q", "k", "v", "a", "b", "gk"),
        lambda a: dplr_chunkwise(a["q"], a["k"], a["v"], a["a"], a["b"], a["gk"], chunk_size=32)[0], min_t=32))


def bench_op(op: OpBench, lengths: list[int], naive_max_t: int, repeats: int, ceiling: float,
             budget_s: float) -> tuple[list[list], list[list]]:
    main_rows, ref_rows = [], []
    naive_at: tuple[int, float] | None = None  # (T, seconds) of the longest measured naive run
    base_memory: float | None = None
    for T in lengths:
        inputs = op.make(T)
        leaves = grad_leaves(inputs)
        chunk = fwd_bwd(lambda: op.run(inputs, "chunk"), leaves)
        candidates = {"chunk": chunk}
        if T <= naive_max_t:
            candidates["naive"] = fwd_bwd(lambda: op.run(inputs, "naive"), leaves)
        refs = {}
        for ref in op.references:
            if T % ref.min_t or (ref.quadratic and T > naive_max_t):
                continue
            args = ref.prepare(inputs)
            forward = (lambda ref=ref, args=args: ref.run(args))
            if ref.backward:
                refs[ref.name] = fwd_bwd(forward, grad_leaves(args))
            else:
                refs[ref.name] = forward_only(forward)
                refs["chunk fwd"] = forward_only(lambda: op.run(inputs, "chunk"))
        times = best_times({**candidates, **refs}, repeats=repeats, budget_s=budget_s)

        if "naive" in times:
            naive, naive_txt = times["naive"], fmt_time(times["naive"])
            naive_at = (T, naive)
        elif naive_at is not None:
            naive = naive_at[1] * T / naive_at[0]
            naive_txt = "~" + fmt_time(naive)
        else:
            naive, naive_txt = None, "-"
        speedup = None if naive is None else naive / times["chunk"]
        gflops = 3 * op.flops(T) / times["chunk"] / 1e9
        memory = peak_memory_bytes(chunk)
        per_token = memory / T
        base_memory = base_memory or per_token
        main_rows.append([op.name, T, fmt_time(times["chunk"]), naive_txt,
                          ("~" if "naive" not in times and speedup else "") + fmt_ratio(speedup),
                          f"{gflops:.2f}", f"{100 * gflops / ceiling:.1f}%", fmt_bytes(memory),
                          fmt_bytes(per_token), f"{per_token / base_memory:.2f}"])
        for ref in op.references:
            if ref.name not in times:
                continue
            ours = times["chunk"] if ref.backward else times["chunk fwd"]
            ref_memory = peak_memory_bytes(refs[ref.name]) if ref.backward else None
            ref_rows.append([op.name, T, ref.name, "fwd+bwd" if ref.backward else "fwd",
                             fmt_time(times[ref.name]), fmt_time(ours), fmt_ratio(times[ref.name] / ours),
                             fmt_bytes(ref_memory), fmt_bytes(memory if ref.backward else None)])
    return main_rows, ref_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes (about a minute)")
    parser.add_argument("--ops", default="", help="comma-separated subset of ops")
    parser.add_argument("--lengths", default="", help="comma-separated T (default 512,2048,8192; quick 128,512)")
    parser.add_argument("--naive-max-t", type=int, default=None, help="longest T to run naive at (default 2048; quick 512)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds, best kept (default 5; quick 2)")
    parser.add_argument("--budget", type=float, default=None, help="stop repeating after this many seconds per shape")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (see common.set_threads)")
    args = parser.parse_args()

    quick = args.quick
    lengths = [int(t) for t in args.lengths.split(",")] if args.lengths else ([128, 512] if quick else [512, 2048, 8192])
    naive_max_t = args.naive_max_t or (512 if quick else 2048)
    repeats = args.repeats or (2 if quick else 5)
    budget = args.budget or (5.0 if quick else 60.0)
    dims = dict(B=1, H=2, D=32, scan_dim=256, window=64) if quick else dict(B=2, H=4, D=64, scan_dim=1024, window=512)
    threads = set_threads(args.threads)
    torch.manual_seed(0)

    ceiling = matmul_gflops()
    print(f"# recurlm kernels, CPU fwd+bwd, float32, {threads} threads, {'quick' if quick else 'full'} mode")
    print(f"# float32 matmul ceiling (2048^3, best of 5, this run): {ceiling:.1f} GFLOP/s")
    print(f"# shapes: {dims}; naive run up to T={naive_max_t}, '~' = extrapolated linearly in T; "
          f"best of {repeats} interleaved rounds")

    ops = build_ops(**dims)
    chosen = [o for o in args.ops.split(",") if o] or list(ops)
    main_rows, ref_rows = [], []
    for name in chosen:
        rows, refs = bench_op(ops[name], lengths, naive_max_t, repeats, ceiling, budget)
        main_rows += rows
        ref_rows += refs
        print(f"# {name} ({ops[name].shape}) done", flush=True)
    print_table(["op", "T", "chunk", "naive", "chunk speedup", "GFLOP/s", "of ceiling", "peak mem",
                 "mem/token", "mem/token vs first T"], main_rows,
                title=f"chunk vs naive, fwd+bwd (ceiling {ceiling:.1f} GFLOP/s; GFLOP/s = 3 x fwd FLOPs / time)")
    ref_rows = ref_rows or [["(none)"] + [""] * 8]
    print_table(["op", "T", "reference", "pass", "reference", "recurlm chunk", "ref / recurlm", "ref mem",
                 "recurlm mem"], ref_rows, title="recurlm chunk vs other packages' torch implementations")
    refless = [n for n in chosen if not ops[n].references]
    if refless:
        print(f"# no torch reference of another package to compare with: {', '.join(refless)}")


if __name__ == "__main__":
    main()
