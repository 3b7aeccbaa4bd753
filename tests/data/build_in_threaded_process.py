"""Run by ``test_build_stress.py`` in its own process: cold shard builds with 2 workers, again and
again, in a process that already has what a trainer has when it builds data (an initialized gloo
process group with its threads, and busy threads of its own). Each build runs under a watchdog
(faulthandler) that dumps every thread's stack and exits 3 if the build hangs.

    python -P build_in_threaded_process.py <work dir> <corpus dir> <tokenizer.model> <builds> <seconds per build>
"""
import faulthandler
import os
import sys
import threading
import time


def busy_threads(stop: threading.Event) -> list[threading.Thread]:
    """Threads that keep taking locks and allocating, so a fork lands while one is held."""
    lock = threading.Lock()

    def churn() -> None:
        while not stop.is_set():
            with lock:
                _ = [bytearray(4096) for _ in range(64)]
            sys.stderr.flush()

    threads = [threading.Thread(target=churn, daemon=True, name=f"churn-{i}") for i in range(2)]
    for t in threads:
        t.start()
    return threads


def main() -> int:
    work, corpus, tokenizer_path, builds, seconds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), \
        float(sys.argv[5])
    import torch.distributed as dist

    from recurlm.data.build import build_shards
    from recurlm.data.config import SourceConfig
    from recurlm.data.tokenizer import Tokenizer

    dist.init_process_group("gloo", init_method=f"file://{os.path.join(work, 'pg-store')}", rank=0, world_size=1)
    dist.barrier()
    stop = threading.Event()
    busy_threads(stop)
    with open("/proc/self/status") as f:  # native threads: gloo's and torch's besides Python's own
        native = next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
    print(f"process group initialized: {dist.is_initialized()}; native threads: {native}", flush=True)
    src = SourceConfig(name="corpus", kind="text", paths=[corpus])
    tokenizer = Tokenizer(tokenizer_path)
    for i in range(builds):
        faulthandler.dump_traceback_later(seconds, exit=True)  # a hang dumps all stacks and exits
        t0 = time.perf_counter()
        sets = build_shards(src, tokenizer, os.path.join(work, f"build-{i}"), valid_fraction=0.1,
                            shard_tokens=3000, num_workers=2, worker_timeout_s=seconds / 2, progress=False)
        faulthandler.cancel_dump_traceback_later()
        print(f"build {i}: {sets['train'].num_docs} train docs in {time.perf_counter() - t0:.1f}s", flush=True)
    stop.set()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
