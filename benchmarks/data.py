"""Data pipeline throughput, side by side with the simplest baselines run in the same process.

    python -m recurlm.benchmarks.data [--mb 4] [--seq-len 512] [--batch 16]

Tokenize: ``build_shards`` (read, encode in 1 or 2 worker processes, split, write shards with
checksums) vs a plain single-process loop of ``SentencePieceProcessor.encode`` over the same texts
already in memory. Loader: ``PackedLoader`` (shuffled documents, resets, labels, tensors) vs
slicing contiguous rows straight out of the token memmap.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from recurlm.data.build import build_shards
from recurlm.data.config import SourceConfig, TokenizerConfig
from recurlm.data.loader import PackedLoader
from recurlm.data.sources import iter_documents
from recurlm.data.tokenizer import train_tokenizer


def _timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=4.0, help="MB of stdlib text to tokenize")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--loader-seconds", type=float, default=2.0)
    args = parser.parse_args()

    src = SourceConfig(name="stdlib", kind="stdlib", max_bytes=int(args.mb * 1e6))
    texts = [d.text for d in iter_documents(src)]
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    with tempfile.TemporaryDirectory() as tmp:
        tok = train_tokenizer(texts, TokenizerConfig(vocab_size=4096), f"{tmp}/tok.model")

        base_s, ids = _timed(lambda: [tok.sp.encode(t) for t in texts])
        n_tokens = sum(len(i) for i in ids) + 2 * len(texts)  # + BOS/EOS as stored in shards
        print(f"tokenize {n_bytes / 1e6:.1f} MB of stdlib, {n_tokens:,} tokens")
        print(f"  {'method':<34}{'MB/s':>8}{'Mtok/s':>9}{'vs baseline':>13}")
        print(f"  {'plain sp.encode loop (in memory)':<34}{n_bytes / 1e6 / base_s:>8.2f}{n_tokens / 1e6 / base_s:>9.2f}"
              f"{1.0:>12.2f}x")
        shards = None
        for workers in (1, 2):
            sec, sets = _timed(lambda: build_shards(src, tok, f"{tmp}/w{workers}", num_workers=workers,
                                                    progress=False))
            assert sets["train"].num_tokens == n_tokens
            shards = sets["train"]
            print(f"  {f'build_shards, {workers} worker(s)':<34}{n_bytes / 1e6 / sec:>8.2f}"
                  f"{n_tokens / 1e6 / sec:>9.2f}{base_s / sec:>12.2f}x")

        T, B = args.seq_len, args.batch
        flat = shards.shards[0].tokens
        n_rows = (flat.shape[0] - 1) // T

        def plain_rows(step: int) -> torch.Tensor:
            rows = [np.asarray(flat[(r % n_rows) * T:(r % n_rows) * T + T + 1], dtype=np.int64)
                    for r in range(step * B, step * B + B)]
            return torch.from_numpy(np.stack(rows))

        def rate(make_batch) -> float:
            steps, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < args.loader_seconds:
                make_batch(steps)
                steps += 1
            return steps * B * T / (time.perf_counter() - t0)

        loader = PackedLoader(shards, T, B, seed=0)
        base = rate(plain_rows)
        ours = rate(lambda _: next(loader))
        print(f"loader, seq_len {T}, batch {B}")
        print(f"  {'plain memmap row slicing':<34}{base / 1e6:>8.2f} Mtok/s{1.0:>8.2f}x")
        print(f"  {'PackedLoader (shuffled, resets)':<34}{ours / 1e6:>8.2f} Mtok/s{ours / base:>8.2f}x")


if __name__ == "__main__":
    main()
