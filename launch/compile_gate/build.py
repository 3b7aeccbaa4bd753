"""Compile recorded launches for a target, in worker processes with a time limit, and measure them.

Each launch is compiled by ``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))``
all the way to a cubin (the ``ptxas`` of Triton's wheel); the wheel's ``ptxas -v`` is then run on the
PTX for registers per thread and spilled bytes. Shared memory is what Triton reports for the block
(``metadata.shared``: the dynamic shared memory the launch requests). Workers are forked from the
capturing process (they inherit the kernels), ``jobs`` at a time; one that runs past ``timeout``
seconds is killed and its launch reported as a failure.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import signal
import subprocess
import tempfile
import time
import traceback
from multiprocessing.connection import wait
from typing import Any

from recurlm.launch.compile_gate.capture import Launch

_PTXAS_USAGE = re.compile(r"Used (\d+) registers")
_PTXAS_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def ptxas_usage(ptx: str, arch: int) -> tuple[int, int]:
    """(registers per thread, spilled bytes = spill stores) of the kernel in ``ptx``, from ``ptxas -v``
    with the register-allocation flag Triton's own ptxas call uses. Cached next to Triton's cache
    (keyed by the PTX), so a rerun with a warm Triton cache skips ptxas as well."""
    from triton import knobs
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    cache = os.path.join(knobs.cache.dir, "recurlm_ptxas_usage",
                         hashlib.sha256(f"{arch}\n{ptx}".encode()).hexdigest() + ".json")
    if os.path.exists(cache):
        with open(cache) as f:
            return tuple(json.load(f))
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as source:
        source.write(ptx)
        source.flush()
        result = subprocess.run([get_ptxas(arch).path, "-v", "--regAllocOptLevel=2",
                                 f"--gpu-name={sm_arch_from_capability(arch)}", source.name, "-o", "/dev/null"],
                                capture_output=True, text=True, check=True)
    report = result.stdout + result.stderr
    registers = _PTXAS_USAGE.search(report)
    spills = _PTXAS_SPILLS.search(report)
    usage = (int(registers.group(1)) if registers else -1), (int(spills.group(1)) if spills else 0)
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    with open(cache, "w") as f:
        json.dump(usage, f)
    return usage


def compile_launch(launch: Launch, arch: int) -> dict[str, Any]:
    """Compile one launch for ``arch``: shared bytes, warps, stages, registers and spills (raises on failure)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    source = ASTSource(launch.fn, launch.signature, launch.constexprs, launch.attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=launch.options)
    registers, spilled = ptxas_usage(compiled.asm["ptx"], arch)
    return {"shared_bytes": compiled.metadata.shared, "num_warps": compiled.metadata.num_warps,
            "num_stages": compiled.metadata.num_stages, "registers": registers, "spilled_bytes": spilled}


def _worker(launch: Launch, arch: int, conn) -> None:
    os.setpgrp()  # its own process group: a timeout kills the ptxas it started too
    try:
        conn.send({"ok": True, "error": "", **compile_launch(launch, arch)})
    except Exception as error:  # reported as the launch's compile failure
        lines = traceback.format_exception_only(type(error), error)
        conn.send({"ok": False, "error": "".join(lines).strip()[-2000:]})
    finally:
        conn.close()


def _kill_group(process) -> None:
    """Kill a timed-out worker and the compiler processes it started (its process group)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:  # already gone
        pass
    process.join()


def compile_all(launches: list[Launch], arch: int, jobs: int, timeout: float,
                progress=lambda done, total: None) -> list[dict[str, Any]]:
    """Compile every launch (``jobs`` forked workers, ``timeout`` seconds each); one result per launch."""
    context = multiprocessing.get_context("fork")
    results: list[dict[str, Any] | None] = [None] * len(launches)
    pending = list(range(len(launches)))[::-1]
    running: dict[Any, tuple[int, Any, float]] = {}
    while pending or running:
        while pending and len(running) < jobs:
            index = pending.pop()
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(target=_worker, args=(launches[index], arch, sender), daemon=True)
            process.start()
            sender.close()
            running[receiver] = (index, process, time.monotonic())
        for receiver in wait(list(running), timeout=0.5):
            index, process, _ = running.pop(receiver)
            try:
                results[index] = receiver.recv()
            except EOFError:
                results[index] = {"ok": False, "error": f"compile worker died (exit code {process.exitcode})"}
            process.join()
            progress(sum(r is not None for r in results), len(launches))
        for receiver, (index, process, started) in list(running.items()):
            if time.monotonic() - started > timeout:
                _kill_group(process)
                running.pop(receiver)
                results[index] = {"ok": False, "error": f"compile timed out after {timeout:.0f} s (killed)"}
    return [r for r in results if r is not None]
