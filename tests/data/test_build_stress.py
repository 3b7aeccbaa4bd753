"""No fork after threads: cold shard builds with worker processes, 20 times in a row, in a process
that has an initialized gloo process group and busy threads (as a trainer has), each build under a
watchdog. With the ``fork`` start method this hung now and then (a forked worker blocked on a lock
held by a thread at fork time); the workers are now spawned."""
import os
import subprocess
import sys

from recurlm.data.tokenizer import train_tokenizer

from .conftest import TINY_TOKENIZER, write_corpus

BUILDS = 20
SECONDS_PER_BUILD = 60


def test_cold_builds_in_a_threaded_process_never_hang(tmp_path):
    texts = write_corpus(str(tmp_path / "corpus"), n_docs=60)
    tokenizer = train_tokenizer(texts, TINY_TOKENIZER, str(tmp_path / "tok.model"))
    script = os.path.join(os.path.dirname(__file__), "build_in_threaded_process.py")
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
    proc = subprocess.run([sys.executable, "-P", script, str(tmp_path), str(tmp_path / "corpus"), tokenizer.path,
                           str(BUILDS), str(SECONDS_PER_BUILD)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=BUILDS * SECONDS_PER_BUILD + 60)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}"
    header = proc.stdout.splitlines()[0]  # the builds really ran beside a process group and other threads
    assert "process group initialized: True" in header and int(header.rsplit(" ", 1)[1]) > 3, header
    done = [line for line in proc.stdout.splitlines() if line.startswith("build ")]
    assert len(done) == BUILDS, proc.stdout
    first = sorted(os.listdir(tmp_path / "build-0" / "train"))
    for i in range(1, BUILDS):  # and every build wrote the same shards
        assert sorted(os.listdir(tmp_path / f"build-{i}" / "train")) == first
