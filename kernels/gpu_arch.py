"""The GPU a Triton launch is for, and what one thread block of it may use.

Launchers pick block sizes per target (``target_arch``) so that every size preset fits the
shared memory of one block; ``recurlm-doctor compile`` (``recurlm/launch/compile_gate``) checks the
result by compiling every launch ahead of time for sm_80 and sm_90.

Per-block shared memory limits (opt-in maximum, bytes): NVIDIA CUDA C++ Programming Guide,
"Compute Capabilities", Table "Technical Specifications per Compute Capability", row "Maximum
amount of shared memory per thread block": 163 KB for compute capability 8.0 (A100), 99 KB for
8.6 / 8.9, 227 KB for 9.0 (H100); 1 KB = 1024 bytes. (flash-linear-attention's
``fla.utils.hardware.Backend`` uses the same numbers: AMPERE 166912, HOPPER 232448.)
"""
from __future__ import annotations

import functools

SHARED_MEMORY_PER_BLOCK: dict[int, int] = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
"""Opt-in shared memory per thread block in bytes, by compute capability (major * 10 + minor)."""

DEFAULT_ARCH = 90
"""The target assumed when no GPU (or compile target) is present: the Triton interpreter then runs
the launch configuration an H100 would run, so the tests exercise it."""


@functools.cache
def target_arch() -> int:
    """Compute capability (e.g. 80, 90) of the GPU Triton launches for.

    Read from Triton's active driver: the current CUDA device on a GPU node, the target the compile
    gate sets when it compiles ahead of time. Without a driver (CPU, interpreter) ``DEFAULT_ARCH``.
    Cached: one process launches for one kind of GPU."""
    try:
        import triton

        target = triton.runtime.driver.active.get_current_target()
    except Exception:  # no GPU driver: the interpreter, or a CPU-only process
        return DEFAULT_ARCH
    if target.backend != "cuda":
        return DEFAULT_ARCH
    return int(target.arch)


def shared_memory_limit(arch: int) -> int:
    """Bytes of shared memory one block may use on ``arch`` (the smallest listed limit if unknown)."""
    return SHARED_MEMORY_PER_BLOCK.get(arch, min(SHARED_MEMORY_PER_BLOCK.values()))
