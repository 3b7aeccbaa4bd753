"""SIGTERM ends a run within seconds in every phase, saying what it was doing and whether a
checkpoint was saved, and leaves no worker process behind: tokenizer training (a subprocess),
shard building (spawned workers), model build, training, evaluation, checkpoint writing."""
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from recurlm.train.signals import EXIT_REQUEUE

RUNNER = os.path.join(os.path.dirname(__file__), "phase_runner.py")
EXIT_WITHIN_S = 30.0

# phase -> (extra overrides, words the stop message must contain, whether a checkpoint is saved)
PHASES = {
    "tokenizer": ([], "SIGTERM while preparing the tokenizer", False),
    "shards": (["data.num_workers=2"], "SIGTERM while building shards of 'stdlib'", False),
    "model": ([], "SIGTERM while building the model", False),
    "training": (["train.steps=1000"], "SIGTERM while training (after step", True),
    "evaluation": (["train.steps=1000", "train.eval_every=2"], "SIGTERM while computing the validation loss at step 2",
                   True),
    "checkpoint": (["train.steps=1000", "train.checkpoint_every=2"], "SIGTERM while training (after step", True),
}


def _read_lines(proc, lines: list[str]) -> None:
    for line in proc.stdout:
        lines.append(line)


@pytest.mark.parametrize("phase", list(PHASES))
def test_sigterm_ends_the_run_in_every_phase(phase, tiny_overrides, subprocess_env, tmp_path):
    extra, message, saved = PHASES[phase]
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-P", RUNNER, phase, *tiny_overrides, f"data.cache_dir={tmp_path / 'cache'}",
           f"run_dir={run_dir}", *extra]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines: list[str] = []
    reader = threading.Thread(target=_read_lines, args=(proc, lines), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 240
        while not any(line.startswith(f"PAUSED {phase}") for line in lines):
            assert proc.poll() is None, "".join(lines)[-4000:]
            assert time.monotonic() < deadline, f"never reached phase {phase}:\n" + "".join(lines)[-4000:]
            time.sleep(0.1)
        children = psutil.Process(proc.pid).children(recursive=True)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=EXIT_WITHIN_S)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(10)
    out = "".join(lines)
    assert code == EXIT_REQUEUE, out[-4000:]
    assert took < EXIT_WITHIN_S
    assert message in out, out[-4000:]
    if saved:
        assert "checkpoint saved: " in out and (run_dir / "checkpoints" / "latest").is_file(), out[-4000:]
    else:
        assert "no checkpoint saved" in out and not (run_dir / "checkpoints" / "latest").exists(), out[-4000:]
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left behind: {[p.pid for p in alive]}"
