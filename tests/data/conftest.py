"""Fixtures of the data tests: a tiny tokenizer trained on a synthetic corpus, and builders of
ShardSets with chosen token ids (so loader tests know every token's document)."""
from __future__ import annotations

import dataclasses
import os
import random

import numpy as np
import pytest

from recurlm.data.config import TokenizerConfig
from recurlm.data.shards import ShardSet, ShardWriter, shard_stem, write_manifest
from recurlm.data.tokenizer import Tokenizer, train_tokenizer


WORDS = ("def class return import self value index items yield lambda None True False for while "
         "with open read write data token model shard batch loader epoch state reset").split()


def synthetic_document(rng: random.Random, n_lines: int) -> str:
    """Python-looking text with indentation, so whitespace handling is exercised."""
    lines = []
    for _ in range(n_lines):
        indent = "    " * rng.randint(0, 2)
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 8)))
        lines.append(f"{indent}{words}({rng.randint(0, 999)}):")
    return "\n".join(lines) + "\n"


def write_corpus(directory: str, n_docs: int = 40, seed: int = 0) -> list[str]:
    """``n_docs`` text files ``doc_XXX.py`` of varied length; returns their texts."""
    rng = random.Random(seed)
    os.makedirs(directory, exist_ok=True)
    texts = []
    for i in range(n_docs):
        text = synthetic_document(rng, rng.randint(3, 60))
        with open(os.path.join(directory, f"doc_{i:03d}.py"), "w", encoding="utf-8") as f:
            f.write(text)
        texts.append(text)
    return texts


TINY_TOKENIZER = TokenizerConfig(vocab_size=400, input_sentence_size=0, num_threads=1)


def build_shardset(directory: str, docs: list[list[int]], tokenizer: Tokenizer, docs_per_shard: int = 7) -> ShardSet:
    """Write ``docs`` (token lists, stored as BOS + doc + EOS) into several shards and open them."""
    entries = []
    for s, lo in enumerate(range(0, len(docs), docs_per_shard)):
        w = ShardWriter(directory, shard_stem(s), tokenizer.dtype)
        for doc in docs[lo:lo + docs_per_shard]:
            w.append(np.array([tokenizer.bos_id, *doc, tokenizer.eos_id]))
        entries.append(w.close())
    write_manifest(directory, entries, tokenizer, source="synthetic", split="train", source_files=[])
    return ShardSet.open(directory)


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    """corpus(n_docs=40, seed=0) -> (directory, texts): a fresh synthetic corpus under tmp_path.

    The directory is given relative to tmp_path (the working directory during the test): document
    ids start with the path as given, so an absolute tmp path would draw a different validation
    split in every run (and, now and then, none for a small corpus)."""
    monkeypatch.chdir(tmp_path)

    def make(n_docs: int = 40, seed: int = 0, name: str = "corpus"):
        return name, write_corpus(name, n_docs, seed)
    return make


@pytest.fixture
def tiny_tokenizer_cfg() -> TokenizerConfig:
    """A fresh copy of the tiny tokenizer settings (400 pieces, all sentences)."""
    return dataclasses.replace(TINY_TOKENIZER)


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory) -> Tokenizer:
    d = tmp_path_factory.mktemp("tok")
    texts = write_corpus(str(d / "corpus"), n_docs=60)
    return train_tokenizer(texts, TINY_TOKENIZER, str(d / "tiny.model"))


@pytest.fixture
def shards_from_docs(tmp_path, tiny_tokenizer):
    """shards_from_docs(name, docs) -> ShardSet of the given token lists under tmp_path/name."""
    return lambda name, docs: build_shardset(str(tmp_path / name), docs, tiny_tokenizer)


@pytest.fixture
def make_shards(tmp_path, tiny_tokenizer):
    """make_shards(n_docs, seed, name) -> ShardSet of documents with random lengths 1..60 whose
    token ids are 4 + (running counter mod 396): consecutive, so a stream is checkable."""
    counter = [0]

    def make(n_docs: int = 30, seed: int = 0, name: str = "s", max_len: int = 60) -> ShardSet:
        rng = np.random.default_rng(seed)
        docs = []
        for _ in range(n_docs):
            n = int(rng.integers(1, max_len + 1))
            docs.append([4 + (counter[0] + i) % 396 for i in range(n)])
            counter[0] += n
        return build_shardset(str(tmp_path / name), docs, tiny_tokenizer)

    return make
