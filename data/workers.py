"""Worker processes for data preparation: started by ``spawn``, every wait bounded.

Why ``spawn`` and not the default ``fork``: a trainer builds its data after the process group
exists, so the process already runs threads (gloo's ``pt_gloo_runloop`` and TCPStore threads, W&B,
tqdm's monitor). A forked child gets a copy of every lock those threads held at that moment, and
blocks forever on the first one it touches (seen: a tokenizing worker stuck on a futex). Spawned
workers start a fresh interpreter: no inherited locks and no inherited signal handlers (a forked
worker inherited the trainer's SIGTERM handler, so ``Pool.terminate()`` could not end it). The
price, ~1 s of imports per worker, is paid once per build.

Waits poll with a short timeout, so the parent's signal handlers run while it waits (a blocked
``recv`` would defer them), and every wait has an overall limit that turns a stuck worker into an
error naming what it waited for.
"""
from __future__ import annotations

import multiprocessing as mp
import multiprocessing.pool
import os
import signal
import threading
import traceback
from typing import Any, Callable, Iterator

_POLL_S = 0.5
_CONTEXT = mp.get_context("spawn")


class WorkerError(RuntimeError):
    """A data worker failed, died or did not answer in time; the message says which and doing what."""


def _run_and_send(conn, fn: Callable[..., Any], args: tuple) -> None:
    try:
        conn.send((True, fn(*args)))
    except Exception as err:  # noqa: BLE001 - sent to the parent, which raises it as its own
        try:
            conn.send((False, err))
        except Exception:  # an exception that does not pickle travels as text
            conn.send((False, WorkerError(f"{type(err).__name__}: {err}\n{traceback.format_exc()}")))
    finally:
        conn.close()


def call_in_subprocess(fn: Callable[..., Any], *args: Any, what: str) -> Any:
    """``fn(*args)`` in a spawned process; returns its result or raises the exception it raised
    (WorkerError when it died without one).

    The parent polls, so a signal handler that raises (a preemption) ends the wait within
    ``_POLL_S`` seconds; the child is then terminated. Use it for long C++ calls that would hold
    the main thread (and its signal handlers) for minutes, such as SentencePiece training."""
    receiver, sender = _CONTEXT.Pipe(duplex=False)
    proc = _CONTEXT.Process(target=_run_and_send, args=(sender, fn, args), name=f"recurlm: {what}", daemon=True)
    proc.start()
    sender.close()
    try:
        while not receiver.poll(_POLL_S) and proc.is_alive():
            pass
        try:
            ok, value = receiver.recv()  # poll is also true at end of file: the child died
        except EOFError:
            proc.join(_POLL_S)
            raise WorkerError(f"{what}: worker process {proc.pid} died with exit code {proc.exitcode} "
                              "without a result (out of memory?)") from None
    finally:
        receiver.close()
        stop_process(proc)
    if not ok:
        raise value
    return value


def stop_process(proc: mp.process.BaseProcess, grace_s: float = 5.0) -> None:
    """Terminate ``proc`` if it still runs; SIGKILL it when it ignores SIGTERM for ``grace_s``."""
    proc.join(_POLL_S)
    if proc.is_alive():
        proc.terminate()
        proc.join(grace_s)
    if proc.is_alive():
        proc.kill()
        proc.join(grace_s)


def _worker_init(initializer: Callable[..., None], initargs: tuple) -> None:
    # a pool worker leaves SIGINT to the parent (Ctrl-C would print one traceback per worker)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    initializer(*initargs)


def spawn_pool(num_workers: int, initializer: Callable[..., None], initargs: tuple) -> mp.pool.Pool:
    """A pool of spawned workers, each running ``initializer(*initargs)`` once."""
    return _CONTEXT.Pool(num_workers, initializer=_worker_init, initargs=(initializer, initargs))


def _describe_workers(pool: mp.pool.Pool) -> str:
    procs = getattr(pool, "_pool", [])  # the pool's worker processes; no public accessor exists
    return ", ".join(f"pid {p.pid} " + ("alive" if p.is_alive() else f"exited with {p.exitcode}")
                     for p in procs) or "none"


def ordered_results(pool: mp.pool.Pool, fn: Callable[[Any], Any], tasks: Iterator[Any], timeout_s: float,
                    describe: Callable[[int], str]) -> Iterator[Any]:
    """``pool.imap(fn, tasks)`` whose every result must arrive within ``timeout_s`` seconds.

    ``describe(i)`` names task ``i`` (e.g. its shard and documents) in the error raised when it
    does not arrive. Waits in slices of ``_POLL_S`` so the caller's signal handlers keep running."""
    results = pool.imap(fn, tasks)
    index = 0
    while True:
        waited = 0.0
        while True:
            try:
                item = results.next(timeout=_POLL_S)
                break
            except StopIteration:
                return
            except mp.TimeoutError:
                waited += _POLL_S
                if waited >= timeout_s:
                    raise WorkerError(f"data worker gave no result for {describe(index)} within {timeout_s:.0f}s "
                                      f"(data.worker_timeout_s); workers: {_describe_workers(pool)}") from None
        yield item
        index += 1


def close_pool(pool: mp.pool.Pool, timeout_s: float = 30.0) -> None:
    """``pool.terminate()`` with a time limit: workers still alive after it are SIGKILLed."""
    procs = list(getattr(pool, "_pool", []))
    closer = threading.Thread(target=pool.terminate, name="recurlm-pool-terminate", daemon=True)
    closer.start()
    closer.join(timeout_s)
    for proc in procs:
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
