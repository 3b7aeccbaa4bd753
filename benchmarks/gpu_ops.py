"""The kernel sections of ``gpu_acceptance.py``: every op's fast path against its naive reference
(outputs, final states, gradients; float32 and bfloat16) and forward+backward timing against the
reference implementation of the same op on the same GPU.

Shapes come from the size presets (``configs/model_sizes/``) of the family that uses each op.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from recurlm.models.config import preset_table
from recurlm.tests.kernels import harness  # run from a checkout, as the tests are

OP_FAMILY = {"linear_scan": "hawk", "gla": "hgrn2", "rwkv6": "rwkv6", "dplr_delta_rule": "rwkv7", "mlstm": "xlstm",
             "slstm": "xlstm", "titans_memory": "titans_mac", "local_attention": "griffin"}
"""The family whose presets give each op's shapes."""

TOLERANCE = {torch.float32: 5e-3, torch.bfloat16: 5e-2}
"""max |fast - naive| / max |naive| per tensor (``relative_error``), against naive in float64 on the same inputs.
float32 allows for TF32 ``tl.dot`` on Ampere/Hopper (10-bit mantissa); bfloat16 for 8-bit
mantissa inputs and outputs (states and accumulation stay float32)."""


def op_shape(op: str, size: str) -> dict[str, int]:
    """The op's head shape at preset ``size`` of its family (keyword arguments of its make_inputs)."""
    return op_shape_of(op, preset_table(OP_FAMILY[op])[size])


def op_shape_of(op: str, p: dict[str, Any]) -> dict[str, int]:
    """The op's head shape in a model whose size fields are ``p`` (a preset, or a config as a dict)."""
    d = p["d_model"]
    if op == "gla":
        return {"heads": d // p["expand_ratio"], "head_dim": p["expand_ratio"]}
    if op == "rwkv6":
        return {"heads": d // p["head_dim"], "head_dim": p["head_dim"]}
    if op == "dplr_delta_rule":
        return {"heads": d // p["head_dim"], "dk": p["head_dim"], "dv": p["head_dim"]}
    if op == "linear_scan":
        return {"dim": p["lru_width"]}
    if op == "local_attention":
        return {"heads": p["n_heads"], "kv_heads": 1, "head_dim": d // p["n_heads"],
                "window": p["attention_window"]}
    if op == "mlstm":
        if p.get("architecture") == "xlstm7b":  # post-up projection: q, k at qk_dim_factor d, v at v_dim_factor d
            heads = p["n_heads"]
            return {"heads": heads, "dk": int(p.get("qk_dim_factor", 0.5) * d) // heads,
                    "dv": int(p.get("v_dim_factor", 1.0) * d) // heads}
        return {"heads": p["n_heads"], "dk": 2 * d // p["n_heads"]}  # v1: the up-projected width 2 d
    if op == "slstm":
        return {"heads": p["n_heads"], "dim": d // p["n_heads"]}
    if op == "titans_memory":  # the Triton kernel covers the linear (depth 1) memory
        return {"H": p["memory_heads"], "D": d // p["memory_heads"], "depth": p.get("depth", 1)}
    raise ValueError(f"unknown op {op!r}")


@dataclass
class OpCall:
    """One op at one shape: ``make(dtype, device)`` gives its keyword inputs, ``run(inputs, impl)``
    its (output, final state), ``flops`` its forward FLOPs."""
    op: str
    size: str
    shape: dict[str, int]
    make: Callable[[torch.dtype, torch.device], dict[str, Any]]
    run: Callable[[dict[str, Any], str], tuple]
    flops: float


def op_call(op: str, size: str, batch: int, seq_len: int) -> OpCall:
    """The op at ``size``'s shape with document resets and an initial state (Titans: resets only,
    its state is a weight pair set by ``init_weights``)."""
    import importlib

    package = importlib.import_module(f"recurlm.kernels.{op}")
    examples = importlib.import_module(f"recurlm.kernels.{op}.examples")
    shape = op_shape(op, size)
    fn = getattr(package, op)

    def make(dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
        if op == "titans_memory":
            inputs = examples.make_inputs(B=batch, T=seq_len, dtype=dtype, device=device, seed=0, **shape)
            resets = torch.zeros(batch, seq_len, dtype=torch.bool, device=device)
            resets[:, seq_len // 3] = True
            return {**inputs, "resets": resets}
        inputs = examples.make_inputs(batch=batch, seq_len=seq_len, dtype=torch.float32, device=device, seed=0,
                                      reset_prob=4.0 / seq_len, initial_state=True, **shape)
        # states stay float32; RWKV-7 computes its log decay in float32 (models/rwkv7.py)
        keep = ("initial_state",) + (("gk",) if op == "dplr_delta_rule" else ())
        return {k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() and k not in keep else v
                for k, v in inputs.items()}

    flop_args = {k: v for k, v in shape.items() if k not in ("kv_heads", "depth")}
    flops = float(package.flops(batch, seq_len, **flop_args))
    # RWKV-7's call: its decay bound (make_inputs draws gk above it) selects fla's chunk-64 path
    extra = {"gk_lower_bound": examples.RWKV7_LOG_DECAY_FLOOR} if op == "dplr_delta_rule" else {}
    return OpCall(op, size, shape, make,
                  lambda inputs, impl: fn(**inputs, output_final_state=True, impl=impl, **extra), flops)


def outputs_and_grads(call: OpCall, inputs: dict[str, Any], impl: str) -> list[torch.Tensor]:
    """Output, final state and the gradients of a fixed random projection of both w.r.t. every
    floating input (states included), by the kernel tests' harness."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()
              if isinstance(v, torch.Tensor) and v.is_floating_point()}
    results = harness.outputs_and_grads(lambda output_final_state, **kw: call.run(kw, impl), {**inputs, **leaves},
                                        allow_unused=True)
    return [*results.outputs.values(), *results.grads.values()]


def relative_error(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    """The largest over tensors of max |a - b| / max(max |b|, 0.01) (non-finite: inf); the floor
    keeps a gradient that is exactly zero in the reference (e.g. a decay whose every effect a reset
    cuts) from turning rounding noise into an infinite relative error."""
    worst = 0.0
    for a, b in zip(got, want):
        if a.dtype == torch.bool:
            worst = max(worst, float((a != b).any()))
            continue
        a, b = a.double(), b.double()
        if not torch.isfinite(a).all():
            return float("inf")
        worst = max(worst, float((a - b).abs().max() / b.abs().max().clamp_min(1e-2)))
    return worst


def check_ops(ops: list[str], sizes: tuple[str, str], impl: str, device: torch.device, batch: int,
              seq_len: int) -> list[dict]:
    """``impl`` vs naive (float64 on the same inputs, rounded to each dtype first) for every op at
    both preset sizes, in float32 and bfloat16, forward and backward."""
    rows = []
    for op in ops:
        for size in sizes:
            call = op_call(op, size, batch, seq_len)
            for dtype in (torch.float32, torch.bfloat16):
                row = {"op": op, "size": size, "shape": call.shape, "dtype": str(dtype)[6:], "impl": impl,
                       "tolerance": TOLERANCE[dtype]}
                try:
                    inputs = call.make(dtype, device)
                    as64 = {k: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
                            for k, v in inputs.items()}
                    want = outputs_and_grads(call, as64, "naive")
                    got = outputs_and_grads(call, inputs, impl)
                    row["error"] = relative_error(got, want)
                    row["ok"] = row["error"] <= TOLERANCE[dtype]
                except Exception as err:  # a crash is a failed row with its cause
                    row.update(ok=False, error=None, failure=f"{type(err).__name__}: {str(err)[:300]}")
                rows.append(row)
    return rows


def fwd_bwd_seconds(step: Callable[[], None], device: torch.device, repeats: int) -> float:
    """Best wall time of ``step`` (device-synchronised), after one warm-up call."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def _backward_of(forward: Callable[[], torch.Tensor], leaves: list[torch.Tensor]) -> Callable[[], None]:
    def step() -> None:
        out = forward()
        torch.autograd.grad(out.float().sum(), leaves, allow_unused=True)
    return step


def reference_runner(call: OpCall, inputs: dict[str, Any], dry_run: bool) -> tuple[str, Callable[[], torch.Tensor]]:
    """The reference implementation of the op on the same inputs: fla's chunk kernels for gla /
    rwkv6 / dplr_delta_rule and its HGRN kernel for linear_scan, mlstm_kernels' chunkwise Triton kernel for
    mlstm, torch SDPA with a banded (sliding-window) mask for local_attention. sLSTM and the Titans
    memory have none. In a dry run (CPU) the op's own naive path stands in."""
    if dry_run:
        return "recurlm naive (dry-run stand-in)", lambda: call.run(inputs, "naive")[0]
    x = inputs
    if call.op == "gla":
        from fla.ops.gla import chunk_gla
        return "fla chunk_gla", lambda: chunk_gla(x["q"], x["k"], x["v"], x["g"])[0]
    if call.op == "rwkv6":
        from fla.ops.rwkv6 import chunk_rwkv6
        return "fla chunk_rwkv6", lambda: chunk_rwkv6(x["r"], x["k"], x["v"], x["w"], x["u"])[0]
    if call.op == "dplr_delta_rule":
        from fla.ops.generalized_delta_rule.dplr import chunk_dplr_delta_rule
        return "fla chunk_dplr_delta_rule", lambda: chunk_dplr_delta_rule(
            x["q"], x["k"], x["v"], x["a"], x["b"], x["gk"], safe_gate=True,
            lower_bound=-0.6065306597126334)[0]  # fla's RWKV-7 layer's arguments
    if call.op == "linear_scan":
        from fla.ops.hgrn import chunk_hgrn
        # HGRN's recurrence h_t = g_t h_{t-1} + x_t with log gate g: [B, T, D], as linear_scan
        return "fla chunk_hgrn", lambda: chunk_hgrn(x["x"], x["g"])[0]
    if call.op == "mlstm":
        from mlstm_kernels.torch import get_mlstm_kernel
        kernel = get_mlstm_kernel("chunkwise--triton_xl_chunk")
        heads_first = {k: x[k].transpose(1, 2).contiguous() for k in ("q", "k", "v", "i", "f")}
        return "mlstm_kernels chunkwise--triton_xl_chunk", lambda: kernel(
            heads_first["q"], heads_first["k"], heads_first["v"], heads_first["i"], heads_first["f"], chunk_size=64)
    if call.op == "local_attention":
        from recurlm.kernels.local_attention.naive import banded_sdpa_reference
        return "torch SDPA, banded mask", lambda: banded_sdpa_reference(x["q"], x["k"], x["v"], call.shape["window"])
    raise LookupError(f"no reference implementation for {call.op}")


def time_ops(ops: list[str], sizes: tuple[str, str], impl: str, device: torch.device, dtype: torch.dtype,
             batch: int, seq_len: int, repeats: int, peak_flops: float, dry_run: bool) -> list[dict]:
    """Forward+backward time of ``impl`` and of the reference, their ratio, and the achieved
    TFLOP/s (3 x the op's forward FLOPs per fwd+bwd) against the device peak."""
    rows = []
    for op in ops:
        for size in sizes:
            call = op_call(op, size, batch, seq_len)
            inputs = {k: (v.detach().requires_grad_() if isinstance(v, torch.Tensor) and v.is_floating_point()
                          else v) for k, v in call.make(dtype, device).items()}
            inputs.update(initial_state=None, resets=None)  # references take neither: time both without
            leaves = [v for v in inputs.values() if isinstance(v, torch.Tensor) and v.requires_grad]
            row = {"op": op, "size": size, "shape": call.shape, "dtype": str(dtype)[6:], "batch": batch,
                   "seq_len": seq_len}
            try:
                ours = fwd_bwd_seconds(_backward_of(lambda: call.run(inputs, impl)[0], leaves), device, repeats)
                row.update(seconds=ours, tflops=3 * call.flops / ours / 1e12)
                row["fraction_of_peak"] = 3 * call.flops / ours / peak_flops if peak_flops else None
                try:
                    name, forward = reference_runner(call, inputs, dry_run)
                    theirs = fwd_bwd_seconds(_backward_of(forward, leaves), device, repeats)
                    row.update(reference=name, reference_seconds=theirs, reference_over_ours=theirs / ours)
                except LookupError as missing:
                    row["reference"] = str(missing)
                except Exception as err:  # the reference's own failure is reported, not ours
                    row["reference"] = f"reference failed: {type(err).__name__}: {str(err)[:200]}"
                row["ok"] = True
            except Exception as err:
                row.update(ok=False, failure=f"{type(err).__name__}: {str(err)[:300]}")
            rows.append(row)
    return rows
