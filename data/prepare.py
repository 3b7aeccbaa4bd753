"""``prepare(cfg)``: tokenizer + shards for a DataConfig, built once and cached.

Cache layout under ``cfg.resolved_cache_dir()``::

    tokenizers/<key>/tokenizer.model   key = hash(tokenizer settings, fingerprints of all sources,
                                          split settings, mixture weights of a sampled mixture)
    shards/<source>-<key>/{train,valid}/  key = hash(tokenizer sha256, source fingerprint, split
                                          settings, shard size, shard format version)

The tokenizer trains on the training documents only (the validation split is held out of it too),
on a sample that follows the mixture weights when there are several sources.

A fingerprint is the source settings plus (id, size, mtime) of each input file, so editing the
corpus or any setting builds a new entry and the second identical call reuses everything. Builds
take a file lock, so concurrent ranks wait for one builder instead of racing (still, calling
``prepare`` on rank 0 first and then on the others after a barrier avoids duplicate work).
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from recurlm.data.build import build_shards, is_valid_doc
from recurlm.data.config import DataConfig, SourceConfig, TokenizerConfig
from recurlm.data.loader import Batch, PackedLoader, iter_eval_batches
from recurlm.data.shards import FORMAT_VERSION, ShardSet, check_tokenizer
from recurlm.data.sources import fingerprint, iter_documents
from recurlm.data.tokenizer import Tokenizer, mixture_sample, train_tokenizer
from recurlm.data.workers import call_in_subprocess


@dataclass
class PreparedData:
    """What a training run needs from the data package.

    ``train`` is one ShardSet for a single source, else ``{source name: ShardSet}`` mixed with
    ``mixture_weights``; ``valid`` concatenates every source's validation documents."""

    cfg: DataConfig
    tokenizer: Tokenizer
    train: ShardSet | dict[str, ShardSet]
    valid: ShardSet
    mixture_weights: dict[str, float]

    def train_loader(self, seq_len: int, global_batch_size: int, rank: int = 0, world_size: int = 1) -> PackedLoader:
        """The training loader configured by ``cfg`` (mode, seed, boundary loss, mixture)."""
        return PackedLoader(self.train, seq_len, global_batch_size, rank=rank, world_size=world_size,
                            seed=self.cfg.seed, mode=self.cfg.loader_mode,
                            loss_on_boundary=self.cfg.loss_on_boundary,
                            mixture_weights=self.mixture_weights if isinstance(self.train, dict) else None)

    def eval_batches(self, seq_len: int, batch_size: int, max_batches: int | None = None) -> Iterator[Batch]:
        """Deterministic validation batches, identical on every rank."""
        return iter_eval_batches(self.valid, seq_len, batch_size, max_batches=max_batches)


def _key(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode("utf-8")).hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _say(msg: str, progress: bool) -> None:
    if progress:
        print(f"[recurlm.data] {msg}", file=sys.stderr, flush=True)


def _tokenizer_texts(cfg: DataConfig, progress: bool) -> tuple[Iterable[str], TokenizerConfig]:
    """The texts to train the tokenizer on (training documents only) and the settings to train with."""
    def training_texts(src: SourceConfig) -> Iterator[str]:
        return (doc.text for doc in iter_documents(src)
                if not is_valid_doc(doc.doc_id, src.name, cfg.valid_fraction, cfg.split_seed))

    if not _sampled_mixture(cfg):
        return (text for src in cfg.sources for text in training_texts(src)), cfg.tokenizer
    settings = cfg.tokenizer
    texts, counts = mixture_sample({src.name: training_texts(src) for src in cfg.sources}, cfg.mixture_weights(),
                                   settings.input_sentence_size, settings.max_sentence_bytes, settings.seed)
    _say("tokenizer sample by mixture weight: " + ", ".join(
        f"{name} {sampled:,} of {available:,} sentences" for name, (sampled, available) in counts.items()), progress)
    return texts, dataclasses.replace(settings, input_sentence_size=0)  # SentencePiece takes all of the sample


def _sampled_mixture(cfg: DataConfig) -> bool:
    return len(cfg.sources) > 1 and cfg.tokenizer.input_sentence_size > 0


def _train_tokenizer_job(cfg: DataConfig, path: str, progress: bool) -> str:
    """Runs in a spawned process (see ``_tokenizer_for``): train the tokenizer, return its path."""
    train_tokenizer(*_tokenizer_texts(cfg, progress), path)
    return path


def _tokenizer_for(cfg: DataConfig, fingerprints: dict[str, dict], root: str, progress: bool) -> Tokenizer:
    if cfg.tokenizer_path:
        return Tokenizer(os.path.expanduser(cfg.tokenizer_path))
    key = _key({"tokenizer": dataclasses.asdict(cfg.tokenizer), "sources": fingerprints,
                "held_out": [cfg.valid_fraction, cfg.split_seed],
                **({"mixture": cfg.mixture_weights()} if _sampled_mixture(cfg) else {})})
    path = os.path.join(root, "tokenizers", key, "tokenizer.model")
    with _locked(path + ".lock"):
        if os.path.isfile(path):
            _say(f"reusing cached tokenizer {path}", progress)
            return Tokenizer(path)
        t0 = time.perf_counter()
        _say(f"training a {cfg.tokenizer.model_type} tokenizer ({cfg.tokenizer.vocab_size} pieces)", progress)
        # SentencePiece trains in C++ for minutes on a real corpus, holding the main thread, so a
        # preemption signal's handler could not run until it returned: train in a child process.
        call_in_subprocess(_train_tokenizer_job, cfg, path, progress, what="tokenizer training")
        _say(f"tokenizer trained in {time.perf_counter() - t0:.1f}s: {path}", progress)
        return Tokenizer(path)


def prepare(cfg: DataConfig, progress: bool = True,
            on_stage: Callable[[str], None] = lambda stage: None) -> PreparedData:
    """Train (or reuse) the tokenizer and tokenize (or reuse) every source into train/valid shards.

    ``on_stage`` is told what runs now ("training the tokenizer", "building shards of 'x'", ...),
    for messages such as where a preemption signal found the run."""
    cfg.validate()
    root = cfg.resolved_cache_dir()
    on_stage("fingerprinting the corpus")
    fingerprints = {src.name: fingerprint(src) for src in cfg.sources}
    on_stage("preparing the tokenizer")
    tokenizer = _tokenizer_for(cfg, fingerprints, root, progress)
    train, valid = {}, []
    for src in cfg.sources:
        key = _key({"tokenizer_sha256": tokenizer.sha256, "source": fingerprints[src.name],
                    "valid_fraction": cfg.valid_fraction, "split_seed": cfg.split_seed,
                    "shard_tokens": cfg.shard_tokens, "format": FORMAT_VERSION})
        out_dir = os.path.join(root, "shards", f"{src.name}-{key}")
        on_stage(f"building shards of {src.name!r}")
        with _locked(out_dir + ".lock"):
            cached = os.path.isfile(os.path.join(out_dir, "valid", "manifest.json"))
            t0 = time.perf_counter()
            splits = build_shards(src, tokenizer, out_dir, valid_fraction=cfg.valid_fraction,
                                  split_seed=cfg.split_seed, shard_tokens=cfg.shard_tokens,
                                  num_workers=cfg.num_workers, worker_timeout_s=cfg.worker_timeout_s,
                                  progress=progress)
        verb = "reusing cached" if cached else f"built in {time.perf_counter() - t0:.1f}s"
        _say(f"{verb} shards of {src.name!r}: {splits['train'].num_docs} train docs / "
             f"{splits['train'].num_tokens:,} tokens, {splits['valid'].num_docs} valid docs / "
             f"{splits['valid'].num_tokens:,} tokens in {out_dir}", progress)
        on_stage(f"verifying shards of {src.name!r}")
        for split in splits.values():
            check_tokenizer(split, tokenizer)
            if cached and cfg.verify_checksums:
                split.validate(progress=progress, reuse_stamps=True)
        train[src.name] = splits["train"]
        valid.append(splits["valid"])
    return PreparedData(cfg=cfg, tokenizer=tokenizer,
                        train=train if len(train) > 1 else next(iter(train.values())),
                        valid=ShardSet.concat(valid), mixture_weights=cfg.mixture_weights())
