"""Run fla's autotuned Triton kernels in the Triton CPU interpreter (test code: the ``fla_interpreter``
fixture of tests/kernels/conftest.py).

Under ``TRITON_INTERPRET=1`` (triton 3.9), fla 0.6.0's chunk kernels stop on three interpreter
gaps; :func:`fla_interpreter_patches` closes them for the duration of a ``with`` block. Nothing
here touches compiled (GPU) kernels. Not specific to dplr: any fla package's kernels can be named.
"""
from __future__ import annotations

import builtins
import importlib
import sys
from contextlib import ExitStack, contextmanager
from typing import Iterator

import triton
import triton.language as tl
from triton.runtime.autotuner import Autotuner


@triton.jit
def _jit_gather(src, index, axis: tl.constexpr):
    """``tl.gather`` called from a JIT function, as the interpreter requires."""
    return tl.gather(src, index, axis)


class _LoopIndex(int):
    """A Python loop index that accepts the ``.to(dtype)`` compiled Triton allows on it."""

    def to(self, *args, **kwargs) -> "_LoopIndex":
        return self


def _interpreter_range(*args: int) -> list[_LoopIndex]:
    return [_LoopIndex(i) for i in builtins.range(*args)]


@contextmanager
def fla_interpreter_patches(package: str = "fla.ops.generalized_delta_rule.dplr") -> Iterator[None]:
    """Let fla's autotuned Triton kernels of ``package`` run under ``TRITON_INTERPRET=1`` (CPU tests).

    Closes three gaps of the triton 3.9 interpreter for fla 0.6.0, undone on exit:
    1. ``@triton.autotune`` benchmarks its configs through the (absent) GPU driver: keep only the
       first config, so nothing is benchmarked;
    2. fla aliases ``gather = tl.gather``, which the interpreter calls outside a JIT function:
       route it through a ``@triton.jit`` wrapper;
    3. kernels call ``.to(tl.int64)`` on ``range`` loop indices, Python ints when interpreted:
       give the package's kernel modules a ``range`` whose indices accept ``.to``.
    Only for tests on tiny float32 shapes: it changes nothing about the compiled (GPU) kernels.
    """
    importlib.import_module(package)
    prune_configs = Autotuner.prune_configs
    gather_users = [m for name, m in list(sys.modules.items())
                    if name.startswith("fla.") and getattr(m, "gather", None) is tl.gather]
    kernel_modules = [m for name, m in list(sys.modules.items()) if name.startswith(package + ".")]
    Autotuner.prune_configs = lambda self, kwargs: prune_configs(self, kwargs)[:1]
    for module in gather_users:
        module.gather = _jit_gather
    for module in kernel_modules:
        module.range = _interpreter_range
    try:
        yield
    finally:
        Autotuner.prune_configs = prune_configs
        for module in gather_users:
            module.gather = tl.gather
        for module in kernel_modules:
            del module.range


FLA_PACKAGES = ("fla.ops.gla", "fla.ops.rwkv6", "fla.ops.generalized_delta_rule.dplr", "fla.ops.common",
                "fla.ops.utils")
"""The fla packages behind gla, rwkv6 and dplr_delta_rule, and the chunk-state / cumsum kernels they share."""


@contextmanager
def fla_interpreter(packages: tuple[str, ...] = FLA_PACKAGES) -> Iterator[None]:
    """:func:`fla_interpreter_patches` applied to every package of ``packages``."""
    with ExitStack() as stack:
        for package in packages:
            stack.enter_context(fla_interpreter_patches(package))
        yield
