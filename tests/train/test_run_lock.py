"""One writer per run directory: a second trainer fails at once naming the holder, before it
writes anything; a lock left by a killed trainer is taken over and reported."""
import json
import os
import socket
import subprocess
import sys

import pytest

from recurlm.train.errors import RunLockedError
from recurlm.train.run_lock import LOCK_FILE, RunLock
from recurlm.train.trainer import Trainer


def test_second_lock_fails_naming_the_holder(tmp_path):
    first = RunLock(str(tmp_path))
    with pytest.raises(RunLockedError, match=f"pid {os.getpid()} on {socket.gethostname()}"):
        RunLock(str(tmp_path))
    first.release()
    RunLock(str(tmp_path)).release()  # free again once released


def test_lock_held_by_another_process(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                               f"fd = os.open({str(tmp_path / LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)\n"
                               "fcntl.flock(fd, fcntl.LOCK_EX)\n"
                               "os.write(fd, b'{\"host\": \"node7\", \"pid\": 4242, \"started\": \"then\"}')\n"
                               "print('locked', flush=True)\n"
                               "time.sleep(60)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match="pid 4242 on node7"):
            RunLock(str(tmp_path))
    finally:
        holder.kill()
        holder.wait()
    lock = RunLock(str(tmp_path))  # the holder died: the kernel dropped its lock, its note is stale
    assert lock.previous == "pid 4242 on node7 (since then)"
    lock.release()
    assert open(tmp_path / LOCK_FILE).read() == ""  # a clean release leaves no stale note


def test_second_trainer_on_a_run_dir_fails_before_writing(tiny_job, tmp_path):
    run_dir = str(tmp_path / "shared")
    first = Trainer(tiny_job("train.steps=2", "logger.wandb.mode=disabled", run_dir=run_dir))
    before = sorted(os.listdir(run_dir))
    with pytest.raises(RunLockedError, match=f"{run_dir} is in use by another trainer: pid {os.getpid()}"):
        Trainer(tiny_job("train.steps=2", "seed=1", "logger.wandb.mode=disabled", run_dir=run_dir))
    assert sorted(os.listdir(run_dir)) == before
    first.run()
    holder = json.loads(open(os.path.join(run_dir, LOCK_FILE)).read() or "{}")
    assert holder == {}  # released at the end of the run


def test_recurlm_train_on_a_locked_run_dir_exits_at_once_naming_the_holder(tiny_overrides, data_cache, tmp_path,
                                                                           capsys):
    from recurlm.cli import train_main as main

    run_dir = tmp_path / "held"
    lock = RunLock(str(run_dir))
    try:
        code = main([*tiny_overrides, f"data.cache_dir={data_cache}", f"run_dir={run_dir}"])
    finally:
        lock.release()
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert f"is in use by another trainer: pid {os.getpid()} on {socket.gethostname()}" in err
    assert sorted(os.listdir(run_dir)) == [LOCK_FILE]  # nothing written into the holder's run
