"""Process-group set-up for a job started by torchrun, the deepspeed launcher, srun or nothing."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _from_slurm() -> None:
    """srun with one task per rank: map Slurm's variables onto torch's."""
    if "SLURM_PROCID" in os.environ and "RANK" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        os.environ["RANK"] = os.environ["SLURM_PROCID"]
        os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
        os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")


def init_distributed() -> DistEnv:
    """Initialise torch.distributed through DeepSpeed (gloo on CPU, nccl on GPU); a lone process
    gets a world of one on a free local port."""
    import deepspeed

    _from_slurm()
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    if not dist.is_initialized():
        # DeepSpeed's shared-memory collective builds a C++ extension (~100 s) on every CPU start.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo",
                                   verbose=False)
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank)


BACKEND_DEVICE_TYPES = {"nccl": "cuda", "gloo": "cpu", "mpi": "cpu", "ccl": "cpu", "xccl": "xpu"}
"""The device type whose tensors a process-group backend's collectives take. NCCL rejects CPU
tensors; gloo takes CPU tensors (and CUDA ones only through a copy)."""


def collective_device(backend: str) -> torch.device:
    """Where a tensor must live for a collective of ``backend`` (``dist.get_backend()``): the
    current CUDA device for NCCL, the CPU for gloo / MPI / oneCCL."""
    device_type = BACKEND_DEVICE_TYPES.get(str(backend).lower())
    if device_type is None:
        raise ValueError(f"unknown torch.distributed backend {backend!r}; known: {sorted(BACKEND_DEVICE_TYPES)}")
    if device_type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(device_type)


REDUCE_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


def all_reduce_scalar(value: float, op: str = "sum") -> float:
    """``value`` reduced over every rank (``op``: sum, max or min), the one way every host-side
    number in recurlm is reduced: the float64 tensor is placed on :func:`collective_device`, so
    the same call works under gloo and NCCL. A world of one returns ``value`` unchanged."""
    if op not in REDUCE_OPS:
        raise ValueError(f"op must be one of {sorted(REDUCE_OPS)}, got {op!r}")
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return float(value)
    t = torch.tensor([value], dtype=torch.float64, device=collective_device(dist.get_backend()))
    dist.all_reduce(t, op=REDUCE_OPS[op])
    return float(t.item())


def all_reduce_max(value: float) -> float:
    """The largest ``value`` over the ranks (any rank's error or stop request reaches all)."""
    return all_reduce_scalar(value, "max")


def all_reduce_mean(value: float) -> float:
    """The mean of ``value`` over the ranks (e.g. the step's loss)."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    return all_reduce_scalar(value, "sum") / world


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
