"""Data worker processes: every wait ends, and a stuck or dead worker becomes an error that says
which task and which workers."""
import os
import time

import pytest

from recurlm.data.workers import WorkerError, call_in_subprocess, close_pool, ordered_results, spawn_pool


def test_a_stuck_worker_is_an_error_naming_the_task_and_the_workers():
    pool = spawn_pool(2, int, ())
    try:
        assert list(ordered_results(pool, abs, iter([-1, -2]), timeout_s=120, describe=str)) == [1, 2]  # started
        t0 = time.monotonic()
        with pytest.raises(WorkerError, match=r"no result for batch 1 of shard_00003 within 2s .*workers: pid \d+ alive"):
            list(ordered_results(pool, time.sleep, iter([0, 300]), timeout_s=2.0,
                                 describe=lambda i: f"batch {i} of shard_00003"))
        assert time.monotonic() - t0 < 30
    finally:
        close_pool(pool, timeout_s=10)
    assert not any(p.is_alive() for p in pool._pool)


def test_results_come_back_in_order():
    pool = spawn_pool(2, int, ())
    try:
        assert list(ordered_results(pool, abs, iter([-3, 2, -1]), timeout_s=60, describe=str)) == [3, 2, 1]
    finally:
        close_pool(pool)


def test_subprocess_call_returns_raises_and_reports_a_death():
    assert call_in_subprocess(abs, -5, what="abs") == 5
    with pytest.raises(ValueError, match="invalid literal"):
        call_in_subprocess(int, "x", what="parse")  # the child's own exception, re-raised here
    with pytest.raises(WorkerError, match=r"tokenizer training: worker process \d+ died with exit code 7"):
        call_in_subprocess(os._exit, 7, what="tokenizer training")
