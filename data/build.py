"""Tokenizing a source into train/valid shards: parallel, deterministic, resumable.

The main process reads documents in their deterministic order and hands batches to worker
processes (``Pool.imap``, which returns results in order), so the output does not depend on the
number of workers. A document goes to ``valid`` when a hash of (split seed, source name, document
id) falls below ``valid_fraction``. Shard ``k`` of both splits is closed at the same document, as
soon as the train split holds ``shard_tokens`` tokens; then ``progress/shard_k.json`` records how many
input documents were consumed. An interrupted run resumes after the last finished shard: it skips
that many input documents without tokenizing them and writes the remaining shards, byte-identical to
an uninterrupted run.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections import deque
from typing import Iterator

import numpy as np
from tqdm import tqdm

from recurlm.data.config import SourceConfig
from recurlm.data.shards import MANIFEST, ShardSet, ShardWriter, shard_stem, write_manifest
from recurlm.data.sources import Document, SkipStats, estimated_bytes, iter_documents, source_files
from recurlm.data.tokenizer import Tokenizer
from recurlm.data.workers import close_pool, ordered_results, spawn_pool

SPLITS = ("train", "valid")
_BATCH_BYTES = 1 << 20  # text per worker task: large enough to amortise pickling

_worker_tokenizer: Tokenizer | None = None


def is_valid_doc(doc_id: str, source: str, fraction: float, seed: int) -> bool:
    """Document-level validation split: reproducible, independent of order and world size."""
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(f"{seed}\0{source}\0{doc_id}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") < fraction * 2.0 ** 64


def _init_worker(path: str) -> None:
    global _worker_tokenizer
    _worker_tokenizer = Tokenizer(path)


def _encode_batch(texts: list[str]) -> list[np.ndarray]:
    """Worker task: texts -> ``[BOS] + ids + [EOS]`` arrays (int64; cast when written)."""
    tok = _worker_tokenizer
    return [np.array([tok.bos_id, *ids, tok.eos_id], dtype=np.int64) for ids in tok.encode_batch(texts)]


class _Progress:
    """tqdm bar over input bytes with docs, tokens and tokens/s in the postfix."""

    def __init__(self, total_bytes: int | None, desc: str, enabled: bool):
        self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                        disable=not enabled, dynamic_ncols=True)
        self.docs = self.tokens = 0
        self.t0 = time.perf_counter()

    def update(self, n_bytes: int, n_docs: int, n_tokens: int) -> None:
        self.docs += n_docs
        self.tokens += n_tokens
        rate = self.tokens / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix(docs=self.docs, tokens=f"{self.tokens:,}", tok_s=f"{rate:,.0f}", refresh=False)
        self.bar.update(n_bytes)

    def close(self) -> None:
        self.bar.close()


def _note(msg: str, progress: bool) -> None:
    if progress:
        tqdm.write(f"[recurlm.data] {msg}", file=sys.stderr)


def _load_finished(progress_dir: str, split_dirs: dict[str, str]) -> list[dict]:
    """Markers of the shards a previous run finished (contiguous from 0, files present)."""
    done = []
    while os.path.isfile(path := os.path.join(progress_dir, shard_stem(len(done)) + ".json")):
        with open(path) as f:
            marker = json.load(f)
        files_ok = all(os.path.isfile(os.path.join(split_dirs[s], e[k]))
                       for s, e in marker["shards"].items() if e is not None for k in ("tokens", "index"))
        if not files_ok:
            break
        done.append(marker)
    return done


def build_shards(src: SourceConfig, tokenizer: Tokenizer, out_dir: str, *, valid_fraction: float = 0.0,
                 split_seed: int = 0, shard_tokens: int = 50_000_000, num_workers: int = 1,
                 worker_timeout_s: float = 600.0, progress: bool = True) -> dict[str, ShardSet]:
    """Tokenize ``src`` into ``out_dir/{train,valid}`` and return the opened ShardSets.

    Returns immediately when both manifests exist; resumes after the last finished shard otherwise.
    With ``num_workers > 1`` the workers are spawned (``recurlm.data.workers``: safe in a process
    that already runs threads) and each batch must come back within ``worker_timeout_s`` seconds.
    Raises ValueError if ``valid_fraction > 0`` selects no document, WorkerError if a worker dies
    or stalls."""
    split_dirs = {s: os.path.join(out_dir, s) for s in SPLITS}
    if all(os.path.isfile(os.path.join(d, MANIFEST)) for d in split_dirs.values()):
        return {s: ShardSet.open(d) for s, d in split_dirs.items()}
    progress_dir = os.path.join(out_dir, "progress")
    os.makedirs(progress_dir, exist_ok=True)
    finished = _load_finished(progress_dir, split_dirs)
    skip_docs = finished[-1]["docs_consumed"] if finished else 0
    stats = SkipStats()

    bar = _Progress(estimated_bytes(src), f"tokenize {src.name}", progress)
    if finished:
        _note(f"resuming {src.name}: {len(finished)} shard(s) finished, skipping {skip_docs} documents", progress)
    writers = {s: ShardWriter(split_dirs[s], shard_stem(len(finished)), tokenizer.dtype) for s in SPLITS}
    # Per task, in order: its documents and the input position (documents read) after each. Tasks
    # are generated in the pool's feeder thread, ahead of the writer; deque append/popleft are
    # thread-safe. The skipped prefix is still read, so ``stats`` ends up counting the whole input.
    pending: deque[tuple[list[Document], list[int]]] = deque()

    def tasks() -> Iterator[list[str]]:
        batch: list[Document] = []
        positions: list[int] = []
        size = 0
        for consumed, doc in enumerate(iter_documents(src, stats), start=1):
            n_bytes = len(doc.text.encode("utf-8"))
            if consumed <= skip_docs:
                bar.update(n_bytes, 0, 0)
                continue
            batch.append(doc)
            positions.append(consumed)
            size += n_bytes
            if size >= _BATCH_BYTES:
                pending.append((batch, positions))
                yield [d.text for d in batch]
                batch, positions, size = [], [], 0
        if batch:
            pending.append((batch, positions))
            yield [d.text for d in batch]

    def close_shard(docs_consumed: int) -> None:
        nonlocal writers
        # a split without a document in this shard (often ``valid``) gets no files: entry None
        entries = {s: w.close() if w.num_docs else w.discard() for s, w in writers.items()}
        marker = {"docs_consumed": docs_consumed, "shards": entries}
        path = os.path.join(progress_dir, shard_stem(len(finished)) + ".json")
        with open(path + ".tmp", "w") as f:
            json.dump(marker, f)
        os.replace(path + ".tmp", path)
        finished.append(marker)
        writers = {s: ShardWriter(split_dirs[s], shard_stem(len(finished)), tokenizer.dtype) for s in SPLITS}

    def describe(task: int) -> str:
        return f"batch {task} of shard {shard_stem(len(finished))} of source {src.name!r}"

    pool = spawn_pool(num_workers, _init_worker, (tokenizer.path,)) if num_workers > 1 else None
    if pool is None:
        _init_worker(tokenizer.path)
    try:
        position = skip_docs
        results = (ordered_results(pool, _encode_batch, tasks(), worker_timeout_s, describe) if pool
                   else map(_encode_batch, tasks()))
        for arrays in results:
            docs, positions = pending.popleft()
            n_tokens = 0
            for doc, arr, position in zip(docs, arrays, positions):
                split = "valid" if is_valid_doc(doc.doc_id, src.name, valid_fraction, split_seed) else "train"
                writers[split].append(arr)
                n_tokens += len(arr)
                if writers["train"].num_tokens >= shard_tokens:
                    close_shard(position)
            bar.update(sum(len(d.text.encode("utf-8")) for d in docs), len(docs), n_tokens)
        if any(w.num_docs for w in writers.values()):
            close_shard(position)
    finally:
        if pool is not None:
            close_pool(pool)
        bar.close()
    for w in writers.values():  # the writers opened after the last close hold nothing
        w.discard()

    if stats.counts:
        _note(f"{src.name}: skipped input: {stats.summary()}", progress)
    n_valid = sum(m["shards"]["valid"]["num_docs"] for m in finished if m["shards"]["valid"])
    if valid_fraction > 0 and n_valid == 0:
        raise ValueError(f"source {src.name!r}: valid_fraction={valid_fraction} selected none of its "
                         f"{finished[-1]['docs_consumed']} documents; raise the fraction or change split_seed")
    files = [file_id for _, file_id in source_files(src)]
    for split in SPLITS:
        entries = [m["shards"][split] for m in finished if m["shards"][split]]
        write_manifest(split_dirs[split], entries, tokenizer, src.name, split, files,
                       extra={"skipped": stats.counts, "valid_fraction": valid_fraction,
                              "split_seed": split_seed})
    return {s: ShardSet.open(d) for s, d in split_dirs.items()}
