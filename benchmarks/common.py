"""Shared helpers of the benchmark scripts: interleaved best-of-N timing, peak tensor memory, the
float32 matmul ceiling of this machine, and plain-text tables.

The machine is shared and noisy, so every comparison runs its candidates in the same process,
interleaved (A, B, A, B, ...), and keeps the best time of each: the minimum is the run least
disturbed by other processes.
"""
from __future__ import annotations

import time
import weakref
from typing import Callable, Mapping, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def best_times(candidates: Mapping[str, Callable[[], object]], repeats: int = 3, warmup: int = 1,
               budget_s: float | None = None) -> dict[str, float]:
    """Best wall time (seconds) of each callable, run interleaved: ``warmup`` untimed rounds, then up
    to ``repeats`` timed rounds (fewer if ``budget_s`` of timed rounds have already elapsed, at least 1)."""
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    best = {name: float("inf") for name in candidates}
    start = time.perf_counter()
    for round_ in range(repeats):
        for name, fn in candidates.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
        if budget_s is not None and time.perf_counter() - start > budget_s:
            break
    return best


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best float32 GFLOP/s of an n x n @ n x n matmul: the ceiling kernel efficiency is measured against."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    seconds = best_times({"mm": lambda: a @ b}, repeats=repeats)["mm"]
    return 2 * n ** 3 / seconds / 1e9


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of tensor storage allocated while the mode is active (forward and backward).

    Method: every op's outputs pass through ``__torch_dispatch__``; each storage not seen before adds
    its ``nbytes`` to a live count, and a weakref finalizer on the storage subtracts them when the
    storage is freed (torch keeps a storage's Python object alive as long as the storage). An output
    sharing the storage of one of the op's inputs (views such as ``weight.t()``, in-place results)
    adds nothing. The peak of the live count is what the computation needed on top of what existed
    before (inputs, parameters); allocator caching and fragmentation are not counted (this is
    torch's memory, not the process RSS). The mode slows ops down, so never time inside it.
    """

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and t.device.type != "meta"}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key, size = storage.data_ptr(), storage.nbytes()
                if size == 0 or key in self._sizes or key in inputs:  # views and in-place results
                    continue
                self._sizes[key] = size
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self._free, key)
        return out

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)


def peak_memory_bytes(fn: Callable[[], object]) -> int:
    """Peak tensor bytes allocated by ``fn()`` (see :class:`PeakTensorMemory`); results are dropped."""
    with PeakTensorMemory() as tracker:
        fn()
    return tracker.peak


def rss_bytes() -> int:
    """Resident set size of this process now."""
    import psutil

    return psutil.Process().memory_info().rss


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f}us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f}ms"
    return f"{seconds:.2f}s"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GB", 2 ** 30), ("MB", 2 ** 20), ("kB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.0f}B"


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], title: str | None = None) -> None:
    """A left-aligned first column and right-aligned others, in a markdown table (pastes into README)."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        parts = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        return "| " + " | ".join(parts) + " |"

    if title:
        print(f"\n{title}\n")
    print(line(cells[0]))
    print("|" + "|".join(["-" * (widths[0] + 2)] + ["-" * (w + 1) + ":" for w in widths[1:]]) + "|")
    for row in cells[1:]:
        print(line(row))
    print(flush=True)


def set_threads(threads: int) -> int:
    """Use ``threads`` intra-op threads; returns the count in use.

    The scripts default to 1: on a shared, loaded 2-core machine a second OpenMP thread waits at
    every barrier for a core and makes timings erratic (seen: 10-60x swings), while on a quiet
    machine it adds little (cpu-probe). Pass ``--threads 2`` on a quiet machine."""
    torch.set_num_threads(threads)
    return torch.get_num_threads()
