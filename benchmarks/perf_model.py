"""A performance model on paper: FLOPs, bytes, roofline times, tokens/s and GPU counts, as markdown.

    python -m recurlm.benchmarks.perf_model                     # the tables of docs/performance.md
    python -m recurlm.benchmarks.perf_model --seq-len 8192 --global-batch 512 --gpu A100-SXM4-80GB

Every number comes from this script, from the model code (``flops_per_token`` of meta-device
builds, ``recurlm.kernels.<op>.flops``) or from the cited constants below. Conventions:

- FLOPs: forward FLOPs (multiply-add = 2); backward = 2 x forward, so a training step is 3 x
  forward (the convention of ``train/trainer.py``'s MFU and ``benchmarks/kernels.py``).
- Bytes of an op per token and layer (forward): its per-token inputs and output read/written once
  in bf16 (2 bytes; log decays in float32: 4 bytes), plus the float32 state the chunkwise kernels
  write once per chunk of C tokens (read again in backward). Backward moves 2 x the forward bytes
  (inputs and output gradient read, input gradients written). Local attention re-reads its window's
  keys/values once per 64-query block.
- Weights are read inside the matmuls, which stay compute-bound at thousands of tokens per
  micro-batch (intensity ~ tokens per micro-batch FLOP/byte), so they add no memory-bound time.
- Elementwise traffic outside the ops (norms, activations, gates, residual adds):
  ``ELEMENTWISE_BYTES`` x d_model bytes per layer per token for forward + backward (an assumption:
  about six bf16 reads or writes of a d-vector forward, twice that backward).
- Expected speed: matmul time at ``--matmul-efficiency`` of the bf16 peak plus memory-bound time at
  ``--memory-efficiency`` of HBM bandwidth (assumptions, not measurements: the acceptance run,
  ``benchmarks/gpu_acceptance.py``, measures the real numbers).
- Memory per GPU (ZeRO, Rajbhandari et al. 2020): bf16 parameters 2P, bf16 gradients 2P, Adam
  with float32 master weights 12P; ZeRO-1 shards the 12P, ZeRO-2 also the gradients, ZeRO-3 all
  16P. Activations: 34 d bytes per token and layer without recomputation (Korthikanti et al. 2022,
  16-bit activations, no attention-score term), 2 d bytes per token and layer with every block
  checkpointed plus one block's 34 d during its recomputation; the cross-entropy never holds the
  logits (``linear_cross_entropy``).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from recurlm.models.config import preset_table
from recurlm.models.registry import FAMILIES, to_model_config
from recurlm.models.summary import DEFAULT_VOCAB, summarize


@dataclass(frozen=True)
class GPU:
    name: str
    bf16_flops: float
    """Dense bf16 tensor-core peak, FLOP/s."""
    hbm_bytes_per_s: float
    memory_bytes: float
    source: str


GPUS = {
    "H100-SXM5-80GB": GPU("H100-SXM5-80GB", 989.4e12, 3.35e12, 80e9,
                          "NVIDIA H100 Tensor Core GPU datasheet: 989.4 TFLOP/s dense BF16, 3.35 TB/s HBM3, 80 GB"),
    "A100-SXM4-80GB": GPU("A100-SXM4-80GB", 312e12, 2.039e12, 80e9,
                          "NVIDIA A100 Tensor Core GPU datasheet: 312 TFLOP/s dense BF16, 2,039 GB/s HBM2e, 80 GB"),
}

ELEMENTWISE_BYTES = 36
"""Bytes x d_model per layer per token, forward + backward, of the elementwise work (assumption)."""
ACTIVATION_BYTES = 34
"""Bytes x d_model per layer per token of saved activations without recomputation (Korthikanti et al.)."""
CHUNK = {"gla": 64, "rwkv6": 64, "dplr_delta_rule": 64, "mlstm": 64, "titans_memory": 16}
"""Chunk lengths C of the Triton paths (fla's chunk 64; RWKV-7's DPLR at chunk 64 with its decay
bound, ``kernels/dplr_delta_rule/triton.py``; the Titans memory's mini-batch of 16)."""
FAMILY_OPS = {"hgrn2": {"HGRN2Block": "gla"}, "rwkv6": {"*": "rwkv6"}, "rwkv7": {"*": "dplr_delta_rule"},
              "hawk": {"*": "linear_scan"}, "griffin": {"recurrent": "linear_scan", "attention": "local_attention"},
              "xlstm": {"mlstm": "mlstm", "mlstm7b": "mlstm", "slstm": "slstm"},
              "titans_mac": {"*": "titans_memory"}, "titans_mag": {"*": "titans_memory"},
              "titans_mal": {"*": "titans_memory"}}
"""The recurrence op of each block kind (``summarize``'s layer kinds)."""
TARGETS = {"1.3B": 1.3e9, "7B": 7e9, "14B": 14e9}
RECOMPUTE_SPEED = 0.75
"""Speed with every block checkpointed: one more forward (3 -> 4 forward-equivalents)."""


def op_cost(op: str, shape: dict[str, int], seq_len: int) -> tuple[float, float]:
    """Forward (FLOPs, bytes) per token of one layer's op (module docstring)."""
    import importlib

    op_flops = importlib.import_module(f"recurlm.kernels.{op}").flops
    flop_args = {k: v for k, v in shape.items() if k != "kv_heads"}
    if op == "titans_memory":
        flops = op_flops(1, seq_len, **flop_args) / seq_len
    else:
        flops = op_flops(1, seq_len, **{k: v for k, v in flop_args.items() if k != "depth"}) / seq_len
    bf16, f32 = 2, 4
    if op in ("gla", "rwkv6", "dplr_delta_rule", "mlstm"):
        h = shape["heads"]
        k = shape.get("head_dim") or shape.get("dk")
        v = shape.get("dv") or shape.get("head_dim") or k
        keyed = {"gla": 2, "rwkv6": 2, "dplr_delta_rule": 4, "mlstm": 2}[op]  # q, k (+ a, b) in bf16
        decay = h * k * f32 if op != "mlstm" else 2 * h * f32      # per-channel log decay / i, f gates
        data = h * (keyed * k * bf16 + 2 * v * bf16) + decay
        state = h * k * v * f32 / CHUNK[op]
    elif op == "slstm":
        h, dim = shape["heads"], shape["dim"]
        data, state = h * dim * (4 + 1) * bf16, 0.0  # 4 gate pre-activations in, h out; state on chip
    elif op == "linear_scan":
        dim = shape["dim"]
        data, state = dim * (2 * bf16 + f32), 0.0   # x in, h out, log decay in float32
    elif op == "local_attention":
        h, dh, w = shape["heads"], shape["head_dim"], shape["window"]
        data = (2 * h * dh + 2 * dh) * bf16 + 2 * dh * bf16 * min(w, seq_len) / 64
        state = 0.0
    elif op == "titans_memory":
        h, dh, depth = shape["H"], shape["D"], shape["depth"]
        data = h * (4 * dh * bf16 + 3 * f32)
        weights = dh * dh if depth == 1 else 2 * dh * 2 * dh
        state = 2 * h * weights * f32 / CHUNK[op]    # memory and momentum per chunk
    else:
        raise ValueError(op)
    return flops, data + state


def model_ops(family: str, config: dict[str, Any], layers: list[dict]) -> list[tuple[str, dict, int]]:
    """(op, shape, number of layers running it) of a model."""
    from recurlm.benchmarks.gpu_ops import op_shape_of

    kinds: dict[str, int] = {}
    for layer in layers:
        kinds[str(layer["kind"])] = kinds.get(str(layer["kind"]), 0) + 1
    ops = []
    for kind, count in kinds.items():
        op = FAMILY_OPS[family].get(kind) or FAMILY_OPS[family].get("*")
        fields = {**config, "depth": config.get("memory_depth", 1)}
        ops.append((op, op_shape_of(op, fields), count))
    return ops


def roofline(flops: float, nbytes: float, gpu: GPU) -> float:
    return max(flops / gpu.bf16_flops, nbytes / gpu.hbm_bytes_per_s)


def family_rows(seq_len: int, gpu: GPU, matmul_eff: float, memory_eff: float) -> list[dict[str, Any]]:
    """One row per preset of every family (custom-sized presets such as ``tiny`` included)."""
    rows = []
    for family in FAMILIES:
        for size in preset_table(family):
            cfg = to_model_config({"family": family, "size": size, "vocab_size": DEFAULT_VOCAB})
            config = dataclasses.asdict(cfg)
            s = summarize(cfg, seq_len)
            L, d = len(s["layers"]), config["d_model"]
            op_flops = op_bytes = 0.0
            for op, shape, count in model_ops(family, config, s["layers"]):
                f, b = op_cost(op, shape, seq_len)
                op_flops += 3 * f * count
                op_bytes += 3 * b * count
            train_flops = 3 * s["flops_per_token"]
            memory_bytes = op_bytes + ELEMENTWISE_BYTES * d * L
            t_compute = train_flops / gpu.bf16_flops
            t_memory = memory_bytes / gpu.hbm_bytes_per_s
            expected = 1 / (train_flops / (gpu.bf16_flops * matmul_eff) + memory_bytes / (gpu.hbm_bytes_per_s * memory_eff))
            rows.append({"family": family, "size": size, "params": s["params"], "layers": L, "d_model": d,
                         "train_flops_per_token": train_flops, "op_flops_share": op_flops / train_flops,
                         "bytes_per_token": memory_bytes, "intensity": train_flops / memory_bytes,
                         "roofline_tokens_per_s": 1 / max(t_compute, t_memory),
                         "memory_bound_share": t_memory / (t_compute + t_memory),
                         "expected_tokens_per_s": expected, "expected_mfu": expected * train_flops / gpu.bf16_flops})
    return rows


def op_rows(seq_len: int, gpu: GPU) -> list[dict[str, Any]]:
    """Each op at the shape of every preset of its family (distinct shapes only)."""
    from recurlm.benchmarks.gpu_ops import OP_FAMILY, op_shape_of

    rows, seen = [], set()
    for op, family in OP_FAMILY.items():
        for size, preset in preset_table(family).items():
            config = dataclasses.asdict(to_model_config({"family": family, "size": size, "vocab_size": 1}))
            shape = op_shape_of(op, {**config, "depth": config.get("memory_depth", 1)})
            key = (op, tuple(sorted(shape.items())))
            if key in seen:
                continue
            seen.add(key)
            f, b = op_cost(op, shape, seq_len)
            t = roofline(3 * f, 3 * b, gpu)
            rows.append({"op": op, "preset": f"{family} {size}", "shape": shape, "fwd_flops": f, "fwd_bytes": b,
                         "intensity": f / b, "bound": "compute" if f / b > gpu.bf16_flops / gpu.hbm_bytes_per_s
                         else "memory", "fwd_bwd_ns": t * 1e9})
    return rows


def memory_per_gpu(params: float, layers: int, d: int, micro: int, seq_len: int, gpus: int, stage: int,
                   checkpoint: bool) -> float:
    """Bytes per GPU: model states under ZeRO ``stage`` over ``gpus`` ranks plus activations."""
    shard = {1: 4 * params + 12 * params / gpus, 2: 2 * params + 14 * params / gpus, 3: 16 * params / gpus}[stage]
    tokens = micro * seq_len
    acts = tokens * d * (2 * layers + ACTIVATION_BYTES) if checkpoint else tokens * d * ACTIVATION_BYTES * layers
    return shard + acts


def gpu_count_rows(seq_len: int, global_batch: int, gpu: GPU, family_table: list[dict], budget: float,
                   tokens: float, days: float) -> list[dict[str, Any]]:
    """For each target size, the preset of each family nearest to it (within 40%): the fewest GPUs
    (a power of two) whose memory holds it at micro-batch 1 per stage, with and without
    checkpointing, and the GPUs needed to train on ``tokens`` within ``days`` at the expected speed."""
    rows = []
    for target, n in TARGETS.items():
        for family in FAMILIES:
            candidates = [r for r in family_table if r["family"] == family and abs(r["params"] / n - 1) < 0.4]
            if not candidates:
                continue
            r = min(candidates, key=lambda r: abs(r["params"] / n - 1))
            row = {"target": target, "family": family, "size": r["size"], "params": r["params"]}
            for stage in (1, 2, 3):
                for ckpt in (False, True):
                    fits = [g for g in (2 ** i for i in range(11)) if g <= global_batch and memory_per_gpu(
                        r["params"], r["layers"], r["d_model"], 1, seq_len, g, stage, ckpt) <= budget * gpu.memory_bytes]
                    row[f"zero{stage}{'_ckpt' if ckpt else ''}"] = fits[0] if fits else None
            expected = r["expected_tokens_per_s"] * RECOMPUTE_SPEED
            row["expected_tokens_per_s_ckpt"] = expected
            row["gpus_for_budget"] = math.ceil(tokens / (days * 86400 * expected))
            row["step_s_at_256"] = global_batch * seq_len / (256 * expected)
            rows.append(row)
    return rows


def fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if x == 0:
            return "0"
        for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if abs(x) >= scale:
                return f"{x / scale:.3g}{unit}"
        return f"{x:.3g}"
    if isinstance(x, int) and x >= 10000:
        return fmt(float(x))
    if isinstance(x, dict):
        return " ".join(f"{k}={v}" for k, v in x.items())
    return str(x)


def md_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    out = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(fmt(r.get(k)) for _, k in columns) + " |" for r in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", default="H100-SXM5-80GB", choices=sorted(GPUS))
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--global-batch", type=int, default=1024, help="sequences per optimizer step")
    parser.add_argument("--matmul-efficiency", type=float, default=0.6, help="assumed fraction of bf16 peak")
    parser.add_argument("--memory-efficiency", type=float, default=0.8, help="assumed fraction of HBM bandwidth")
    parser.add_argument("--memory-budget", type=float, default=0.9, help="usable fraction of GPU memory")
    parser.add_argument("--tokens", type=float, default=1e12, help="training tokens for the GPU-count column")
    parser.add_argument("--days", type=float, default=30.0)
    args = parser.parse_args(argv)
    gpu = GPUS[args.gpu]
    T = args.seq_len
    print(f"## Inputs\n\n{gpu.source}; ridge point {gpu.bf16_flops / gpu.hbm_bytes_per_s:.0f} FLOP/byte. "
          f"T = {T}, global batch {args.global_batch} sequences ({args.global_batch * T / 1e6:.2f}M tokens), "
          f"assumed efficiencies: matmuls {args.matmul_efficiency:.0%} of peak, memory-bound work "
          f"{args.memory_efficiency:.0%} of HBM bandwidth, {args.memory_budget:.0%} of GPU memory usable.\n")
    print(f"## Ops (one layer, per token, T = {T})\n")
    print(md_table(op_rows(T, gpu), [("op", "op"), ("preset", "preset"), ("shape", "shape"),
                                     ("fwd FLOPs", "fwd_flops"), ("fwd bytes", "fwd_bytes"),
                                     ("FLOP/byte", "intensity"), ("bound", "bound"),
                                     (f"fwd+bwd ns ({gpu.name.split('-')[0]} roofline)", "fwd_bwd_ns")]))
    families = family_rows(T, gpu, args.matmul_efficiency, args.memory_efficiency)
    print(f"\n## Families (training, per token, T = {T}, one {gpu.name})\n")
    print(md_table(families, [("family", "family"), ("size", "size"), ("params", "params"),
                              ("train FLOPs", "train_flops_per_token"), ("op share", "op_flops_share"),
                              ("bytes", "bytes_per_token"), ("FLOP/byte", "intensity"),
                              ("memory-bound share", "memory_bound_share"),
                              ("roofline tok/s", "roofline_tokens_per_s"),
                              ("expected tok/s", "expected_tokens_per_s"), ("expected MFU", "expected_mfu")]))
    print(f"\n## GPUs for 1.3B, 7B and 14B (T = {T}, micro-batch 1, {gpu.name})\n")
    print("Fewest GPUs (power of two) whose memory holds the run, per ZeRO stage, without / with "
          "checkpointing every block; tok/s with checkpointing (x 3/4: one more forward); GPUs to train "
          f"on {args.tokens:.0e} tokens in {args.days:g} days; step time on 256 GPUs.\n")
    print(md_table(gpu_count_rows(T, args.global_batch, gpu, families, args.memory_budget, args.tokens, args.days),
                   [("target", "target"), ("family", "family"), ("size", "size"), ("params", "params"),
                    ("ZeRO-1", "zero1"), ("ZeRO-1 ckpt", "zero1_ckpt"), ("ZeRO-2", "zero2"),
                    ("ZeRO-2 ckpt", "zero2_ckpt"), ("ZeRO-3", "zero3"), ("ZeRO-3 ckpt", "zero3_ckpt"),
                    ("tok/s/GPU ckpt", "expected_tokens_per_s_ckpt"), ("GPUs for budget", "gpus_for_budget"),
                    ("step s @256", "step_s_at_256")]))


if __name__ == "__main__":
    main()
