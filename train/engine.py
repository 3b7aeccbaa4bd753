"""The DeepSpeed engine: its JSON config from the typed job config, wrapping the model and the
optimizer (``recurlm.train.optimizer``). Start-up only: no function here runs per step.
"""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from typing import Any

import torch

from recurlm.models import build_model
from recurlm.train.config import DeepSpeedConfig, JobConfig, OptimConfig
from recurlm.train.optimizer import make_optimizer


def batch_geometry(global_batch_size: int, micro_batch_size: int, world_size: int) -> tuple[int, int]:
    """(micro batch per rank, gradient accumulation steps) for a global batch over ``world_size``."""
    if global_batch_size % world_size:
        raise ValueError(f"train.global_batch_size={global_batch_size} is not divisible by the world size {world_size}")
    per_rank = global_batch_size // world_size
    micro = micro_batch_size or per_rank
    if per_rank % micro:
        raise ValueError(f"train.micro_batch_size={micro} does not divide the per-rank batch {per_rank}")
    return micro, per_rank // micro


GPU_BUCKET_ELEMENTS = int(2e8)
"""Elements per gradient reduce / all-gather bucket on GPUs (400 MB in bf16): large enough that
NCCL runs near bandwidth, small enough to overlap with the backward pass of the next blocks."""


def gpu_zero_settings(zero_stage: int) -> dict[str, Any]:
    """ZeRO settings for NCCL on GPUs: gradient reduction overlapped with the backward pass
    (``overlap_comm``), gradients copied into one contiguous buffer as they are produced
    (``contiguous_gradients``, no fragmentation at large models), reduce-scatter instead of
    all-reduce, and explicit bucket sizes. Not used on CPU (gloo), where overlap has no streams to
    run on and the CPU tests check the plain configuration."""
    if zero_stage == 0:
        return {}
    settings: dict[str, Any] = {"overlap_comm": True, "contiguous_gradients": True,
                                "reduce_bucket_size": GPU_BUCKET_ELEMENTS}
    if zero_stage in (1, 2):
        settings.update(reduce_scatter=True, allgather_partitions=True, allgather_bucket_size=GPU_BUCKET_ELEMENTS)
    else:
        # parameters are gathered layer by layer ahead of use; small ones stay whole on every rank
        settings.update(stage3_prefetch_bucket_size=GPU_BUCKET_ELEMENTS // 4,
                        stage3_param_persistence_threshold=int(1e5),
                        stage3_max_live_parameters=int(1e9), stage3_max_reuse_distance=int(1e9))
    return settings


def deepspeed_config(ds: DeepSpeedConfig, optim: OptimConfig, global_batch_size: int, micro: int,
                     accumulation: int, device_type: str | None = None) -> dict[str, Any]:
    """DeepSpeed's JSON config for the job. ``device_type`` ("cuda" or "cpu"; default: cuda when
    available) adds the GPU communication settings of :func:`gpu_zero_settings`.

    Precision: bf16 keeps float32 master weights and optimizer states in ZeRO's optimizer (stages
    1-3) and reduces gradients in float32 (``communication_data_type``); at stage 1 gradients are
    also accumulated over micro-batches in float32 (``data_types.grad_accum_dtype``: DeepSpeed's
    BF16 optimizer; stages 2/3 accumulate into their bf16 partitions). bf16 without ZeRO would
    update bf16 weights in place (DeepSpeed's plain bf16 data parallelism), so ``DeepSpeedConfig`` refuses it."""
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if device_type == "cuda":
        zero.update(gpu_zero_settings(ds.zero_stage))
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": device_type == "cuda"}
    if ds.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": device_type == "cuda"}
    config: dict[str, Any] = {
        "train_batch_size": global_batch_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accumulation,
        # without ZeRO the SkipNonFinite wrapper clips (and reports the norm); ZeRO optimizers clip themselves
        "gradient_clipping": optim.grad_clip if ds.zero_stage > 0 else 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": ds.precision == "bf16"},
        "fp16": {"enabled": ds.precision == "fp16", "initial_scale_power": 16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if ds.precision == "bf16":
        config["communication_data_type"] = "fp32"
        if ds.zero_stage == 1:
            config["data_types"] = {"grad_accum_dtype": "fp32"}
    return _merged(config, ds.overrides)


def _merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in recursively: overriding one key of a section (e.g.
    ``zero_optimization.stage3_param_persistence_threshold``) keeps the section's other keys."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def warm_up_prefix(model_cfg) -> int:
    """Layers of the shortest prefix of the model that holds every kind of block it has (Griffin's
    recurrent and attention blocks, xLSTM's mLSTM and sLSTM blocks): those run every kernel shape
    the whole model runs. Found on the meta device (no memory)."""
    with torch.device("meta"):
        blocks = build_model(model_cfg).blocks
    first_of_kind: dict[str, int] = {}
    for i, block in enumerate(blocks):
        kind = type(block).__name__ + "/" + "/".join(type(m).__name__ for m in block.children())
        first_of_kind.setdefault(kind, i)
    return max(first_of_kind.values()) + 1


def warm_kernels_once_per_node(model_cfg, micro: int, seq_len: int, precision: str, local_rank: int) -> float:
    """Compile and autotune the model's Triton kernels on local rank 0 only, then let every rank go.

    flash-linear-attention autotunes 272-461 configurations per op at its first call; with
    ``FLA_CACHE_RESULTS=1`` (fla's default) Triton stores the chosen configurations, and the
    compiled kernels, under ``TRITON_CACHE_DIR``. With that directory on node-local disk and
    shared by the node's ranks (docs/training.md, "GPU clusters"), one warm-up per node, on a
    model with only :func:`warm_up_prefix` layers at the training micro-batch shape (with a
    document boundary, so the varlen kernels are built too), fills it; the other ranks' first
    step then reads it instead of compiling the same kernels in parallel. Returns the seconds
    this rank spent (warming or waiting)."""
    import dataclasses

    import torch.distributed as dist

    start = time.perf_counter()
    if local_rank == 0:
        cfg = dataclasses.replace(model_cfg, n_layers=warm_up_prefix(model_cfg))
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
        model = build_model(cfg).to(device=torch.device("cuda", torch.cuda.current_device()), dtype=dtype)
        ids = torch.randint(0, cfg.vocab_size, (micro, seq_len), device=model.embed.weight.device)
        resets = torch.zeros_like(ids, dtype=torch.bool)
        resets[:, 0] = True
        resets[:, seq_len // 2] = True
        loss, _ = model(ids, resets=resets, labels=ids)
        loss.backward()
        del model, loss
        torch.cuda.synchronize()
    if dist.is_initialized():
        dist.barrier()
    return time.perf_counter() - start


def build_engine(job: JobConfig, model_cfg, global_batch_size: int, micro: int, accumulation: int,
                 load_universal: bool = False):
    """(engine, model) with the model built under ZeRO-3's zero.Init when asked. ``load_universal``
    prepares the engine to load a universal checkpoint (resuming at another world size)."""
    import deepspeed

    ds_config = deepspeed_config(job.deepspeed, job.optim, global_batch_size, micro, accumulation)
    if torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        warm_kernels_once_per_node(model_cfg, micro, job.train.seq_len, job.deepspeed.precision,
                                   int(os.environ.get("LOCAL_RANK", "0")))
    if load_universal:
        ds_config["checkpoint"] = {**ds_config.get("checkpoint", {}), "load_universal": True}
    partition = job.deepspeed.zero_stage == 3 and job.deepspeed.zero_init
    ctx = deepspeed.zero.Init(config_dict_or_path=ds_config) if partition else contextlib.nullcontext()
    with ctx:
        model = build_model(model_cfg)
    blocks = list(job.deepspeed.checkpoint_blocks)
    model.checkpoint_blocks = frozenset(range(len(model.blocks))) if blocks == [-1] else frozenset(blocks)
    optimizer = make_optimizer(model, job.optim, job.deepspeed.zero_stage)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    return engine, model


def load_initial_weights(engine, model: torch.nn.Module, weights: dict[str, torch.Tensor], zero_stage: int,
                         rank: int) -> None:
    """Copy ``weights`` (``recipe.init_from``'s) into the engine's model, and into the optimizer's
    fp32 master copies that ZeRO keeps apart from the module parameters. Under ZeRO-3 rank 0
    loads into the gathered parameters."""
    import deepspeed

    zero3 = zero_stage == 3
    gather = deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=0) if zero3 \
        else contextlib.nullcontext()
    with gather, torch.no_grad():
        if rank == 0 or not zero3:
            model.load_state_dict(weights, strict=True)
    refresh = getattr(engine.optimizer, "refresh_fp32_params", None)
    if refresh is not None:
        refresh()
