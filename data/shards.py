"""Packed token shards: writing, memory-mapped reading, validation.

A split directory (``.../<source>/train``) holds:

- ``shard_00000.bin``: the flat token stream, ``uint16`` when the vocabulary fits, else ``uint32``;
  every document is stored as ``[BOS] + pieces + [EOS]``;
- ``shard_00000.idx``: ``int64`` document offsets into the ``.bin`` (``num_docs + 1`` entries,
  first 0, last = number of tokens);
- ``manifest.json``: format version, tokenizer sha256, vocab size, dtype, special ids, document and
  token counts, the source's input files, and per shard file its counts and sha256.

The manifest is written last, so its presence means the split is complete. Files are read through
``numpy.memmap``, never loaded whole. Opening checks sizes and the index (cheap, O(docs)) and the
sha256 of a sample of each file's bytes (:func:`sample_sha256`: all of a file up to 1 MiB, else 16
blocks of 64 KiB from head to tail), so bit rot or an overwrite is caught even when it kept the
files' size and mtime; every document read checks its token ids against the vocabulary.
:meth:`ShardSet.validate` verifies full checksums and token ranges (O(tokens)), and can record
what passed in ``verified.json`` so unchanged shards are not read again.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from recurlm.data.tokenizer import Tokenizer, file_sha256, token_dtype

FORMAT = "recurlm-shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VERIFIED = "verified.json"
"""Beside a manifest: the size and mtime of each shard's files when it last passed validation."""


class ShardError(ValueError):
    """A shard file or manifest is missing, truncated, corrupted or inconsistent."""


SAMPLE_BLOCKS = 16
SAMPLE_BLOCK_BYTES = 1 << 16


def sample_sha256(path: str) -> str:
    """sha256 of ``SAMPLE_BLOCKS`` blocks of ``SAMPLE_BLOCK_BYTES`` spread evenly over the file,
    the first and the last (the tail, written last) included; of the whole file if it is smaller."""
    size = os.path.getsize(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= SAMPLE_BLOCKS * SAMPLE_BLOCK_BYTES:
            digest.update(f.read())
        else:
            last = size - SAMPLE_BLOCK_BYTES
            for i in range(SAMPLE_BLOCKS):
                f.seek(last * i // (SAMPLE_BLOCKS - 1))
                digest.update(f.read(SAMPLE_BLOCK_BYTES))
    return digest.hexdigest()


def shard_stem(index: int) -> str:
    return f"shard_{index:05d}"


class ShardWriter:
    """Appends documents to one shard (``<stem>.bin`` + ``<stem>.idx``) through ``.tmp`` files;
    :meth:`close` renames them into place and returns the shard's manifest entry."""

    def __init__(self, directory: str, stem: str, dtype: np.dtype):
        os.makedirs(directory, exist_ok=True)
        self.directory, self.stem, self.dtype = directory, stem, np.dtype(dtype)
        self._bin = open(os.path.join(directory, stem + ".bin.tmp"), "wb")
        self.offsets = [0]

    @property
    def num_tokens(self) -> int:
        return self.offsets[-1]

    @property
    def num_docs(self) -> int:
        return len(self.offsets) - 1

    def append(self, tokens: np.ndarray) -> None:
        """Append one document's tokens (already wrapped in BOS/EOS)."""
        self._bin.write(np.asarray(tokens, dtype=self.dtype).tobytes())
        self.offsets.append(self.offsets[-1] + len(tokens))

    def discard(self) -> None:
        """Close and delete an unfinished shard (returns None, the manifest entry of no shard)."""
        self._bin.close()
        os.remove(self._bin.name)

    def close(self) -> dict:
        """Flush, rename into place, return ``{"tokens", "index", "num_docs", "num_tokens", sha256s}``."""
        self._bin.flush()
        os.fsync(self._bin.fileno())
        self._bin.close()
        base = os.path.join(self.directory, self.stem)
        with open(base + ".idx.tmp", "wb") as f:
            f.write(np.asarray(self.offsets, dtype=np.int64).tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(base + ".bin.tmp", base + ".bin")
        os.replace(base + ".idx.tmp", base + ".idx")
        return {"tokens": self.stem + ".bin", "index": self.stem + ".idx", "num_docs": self.num_docs,
                "num_tokens": self.num_tokens, "tokens_sha256": file_sha256(base + ".bin"),
                "index_sha256": file_sha256(base + ".idx"), "tokens_sample_sha256": sample_sha256(base + ".bin"),
                "index_sample_sha256": sample_sha256(base + ".idx")}


def write_manifest(directory: str, shards: list[dict], tokenizer: Tokenizer, source: str,
                   split: str, source_files: list[str], extra: dict | None = None) -> None:
    """Write ``manifest.json`` of a finished split (atomically)."""
    manifest = {
        "format": FORMAT, "version": FORMAT_VERSION, "source": source, "split": split,
        "document_layout": "BOS + pieces + EOS",
        "tokenizer_sha256": tokenizer.sha256, "tokenizer_path": tokenizer.path,
        "vocab_size": tokenizer.vocab_size, "dtype": tokenizer.dtype.name,
        "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id, "pad_id": tokenizer.pad_id,
        "num_docs": sum(s["num_docs"] for s in shards), "num_tokens": sum(s["num_tokens"] for s in shards),
        "shards": shards, "source_files": source_files, **(extra or {}),
    }
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, os.path.join(directory, MANIFEST))


@dataclass
class Shard:
    """One memory-mapped shard: ``tokens`` [num_tokens] and ``offsets`` [num_docs + 1]."""

    tokens_path: str
    index_path: str
    tokens: np.ndarray
    offsets: np.ndarray
    entry: dict

    @classmethod
    def open(cls, directory: str, entry: dict, dtype: np.dtype) -> "Shard":
        """Memory-map a shard and check it against its manifest entry (sizes and index)."""
        tokens_path = os.path.join(directory, entry["tokens"])
        index_path = os.path.join(directory, entry["index"])
        for path in (tokens_path, index_path):
            if not os.path.isfile(path):
                raise ShardError(f"{path}: shard file listed in the manifest is missing")
        n_tok, n_doc = int(entry["num_tokens"]), int(entry["num_docs"])
        for path, want in ((tokens_path, n_tok * dtype.itemsize), (index_path, (n_doc + 1) * 8)):
            got = os.path.getsize(path)
            if got != want:
                raise ShardError(f"{path}: {got} bytes, the manifest implies {want} "
                                 f"(truncated or corrupted shard)")
        tokens = np.memmap(tokens_path, dtype=dtype, mode="r", shape=(n_tok,)) if n_tok else np.zeros(0, dtype)
        offsets = np.memmap(index_path, dtype=np.int64, mode="r", shape=(n_doc + 1,))
        if offsets[0] != 0 or offsets[-1] != n_tok:
            raise ShardError(f"{index_path}: document index out of range: starts at {int(offsets[0])} and ends at "
                             f"{int(offsets[-1])}, expected 0 and {n_tok} (the token count)")
        if n_doc and np.any(np.diff(offsets) <= 0):
            bad = int(np.argmax(np.diff(offsets) <= 0))
            raise ShardError(f"{index_path}: document {bad} has offsets {int(offsets[bad])}..{int(offsets[bad + 1])} "
                             "(index not strictly increasing: corrupted or empty document)")
        for path, key in ((tokens_path, "tokens_sample_sha256"), (index_path, "index_sample_sha256")):
            if key in entry and sample_sha256(path) != entry[key]:  # manifests before this check have no sample
                raise ShardError(f"{path}: checksum mismatch in a sampled block, its content differs from the "
                                 "manifest (bit rot, or the file was overwritten): remove this split directory so it "
                                 "is built again")
        return cls(tokens_path, index_path, tokens, offsets, entry)


class ShardSet:
    """Documents of one or more split directories, addressed by a global document number.

    ``doc_lengths`` [num_docs] int64, ``document(i)`` the tokens of document i (a memmap view)."""

    def __init__(self, shards: Sequence[Shard], manifests: Sequence[dict]):
        if not manifests:
            raise ShardError("a ShardSet needs at least one manifest")
        shas = {m["tokenizer_sha256"] for m in manifests}
        if len(shas) != 1:
            raise ShardError(f"shard directories were tokenized with different tokenizers: {sorted(shas)}")
        self.shards = list(shards)
        self.manifests = list(manifests)
        m = manifests[0]
        self.tokenizer_sha256: str = m["tokenizer_sha256"]
        self.vocab_size: int = int(m["vocab_size"])
        self.bos_id, self.eos_id, self.pad_id = int(m["bos_id"]), int(m["eos_id"]), int(m["pad_id"])
        lengths = [np.diff(np.asarray(s.offsets)) for s in self.shards]
        self.doc_lengths: np.ndarray = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        counts = np.array([s.offsets.shape[0] - 1 for s in self.shards], dtype=np.int64)
        self._first_doc = np.concatenate([[0], np.cumsum(counts)])  # global number of each shard's doc 0

    @classmethod
    def open(cls, directories: str | Sequence[str]) -> "ShardSet":
        """Open split directories (each with a ``manifest.json``) as one ShardSet."""
        directories = [directories] if isinstance(directories, str) else list(directories)
        shards, manifests = [], []
        for d in directories:
            path = os.path.join(d, MANIFEST)
            if not os.path.isfile(path):
                raise ShardError(f"{path}: no manifest (not a shard directory, or tokenization did not finish)")
            try:
                with open(path) as f:
                    m = json.load(f)
            except json.JSONDecodeError as e:
                raise ShardError(f"{path}: corrupted manifest ({e})") from e
            if m.get("format") != FORMAT or m.get("version") != FORMAT_VERSION:
                raise ShardError(f"{path}: format {m.get('format')!r} v{m.get('version')}, "
                                 f"expected {FORMAT!r} v{FORMAT_VERSION}")
            dtype = np.dtype(m["dtype"])
            if token_dtype(int(m["vocab_size"])).itemsize > dtype.itemsize:
                raise ShardError(f"{path}: vocab size {m['vocab_size']} does not fit token dtype {dtype.name}")
            m["directory"] = os.path.abspath(d)
            manifests.append(m)
            shards.extend(Shard.open(d, e, dtype) for e in m["shards"])
        return cls(shards, manifests)

    @classmethod
    def concat(cls, sets: Sequence["ShardSet"]) -> "ShardSet":
        """Several ShardSets (same tokenizer) as one, documents in the given order."""
        return cls([s for ss in sets for s in ss.shards], [m for ss in sets for m in ss.manifests])

    @property
    def num_docs(self) -> int:
        return int(self.doc_lengths.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.doc_lengths.sum())

    def locate(self, doc: int) -> tuple[Shard, int, int]:
        """Global document number -> (shard, start, end) token offsets inside that shard."""
        if not 0 <= doc < self.num_docs:
            raise IndexError(f"document {doc} out of range (ShardSet has {self.num_docs})")
        s = int(np.searchsorted(self._first_doc, doc, side="right")) - 1
        shard = self.shards[s]
        local = doc - int(self._first_doc[s])
        return shard, int(shard.offsets[local]), int(shard.offsets[local + 1])

    def document(self, doc: int) -> np.ndarray:
        """Tokens of document ``doc`` (BOS ... EOS) as a read-only memmap view."""
        shard, start, end = self.locate(doc)
        tokens = shard.tokens[start:end]
        if tokens.size and int(tokens.max()) >= self.vocab_size:
            bad = int(np.argmax(tokens >= self.vocab_size))
            raise ShardError(f"{shard.tokens_path}: token id {int(tokens[bad])} at token offset {start + bad} "
                             f"(document {doc}) is out of range for vocab size {self.vocab_size}: the shard is "
                             "corrupted; remove its split directory so it is built again")
        return tokens

    def validate(self, progress: bool = False, reuse_stamps: bool = False) -> None:
        """Full check: checksums of every file and every token id below the vocab size.
        Raises :class:`ShardError` naming the file and the problem.

        With ``reuse_stamps``, a shard whose two files still have the size and modification time
        they had when it last passed (recorded in ``verified.json`` beside its manifest) is not
        read again, and shards that pass are recorded (where the directory is writable): a cached
        corpus is hashed once, not at every job start. Without it every shard is read."""
        from tqdm import tqdm

        shards = tqdm(self.shards, desc="validate shards", disable=not progress)
        if not reuse_stamps:
            for shard in shards:
                self._validate_shard(shard)
            return
        directories = {os.path.dirname(shard.tokens_path) for shard in self.shards}
        stamps = {directory: _read_stamps(directory) for directory in directories}
        updated = set()
        for shard in shards:
            directory, name = os.path.split(shard.tokens_path)
            stamp = _file_stamp(shard)
            if stamps[directory].get(name) != stamp:
                self._validate_shard(shard)
                stamps[directory][name] = stamp
                updated.add(directory)
        for directory in updated:
            _write_stamps(directory, stamps[directory])

    def _validate_shard(self, shard: Shard) -> None:
        for path, key in ((shard.tokens_path, "tokens_sha256"), (shard.index_path, "index_sha256")):
            got = file_sha256(path)
            if got != shard.entry[key]:
                raise ShardError(f"{path}: checksum mismatch (sha256 {got[:16]}..., "
                                 f"manifest says {shard.entry[key][:16]}...)")
        step = 1 << 24
        for start in range(0, shard.tokens.shape[0], step):
            block = shard.tokens[start:start + step]
            if int(block.max()) >= self.vocab_size:
                bad = int(np.argmax(block >= self.vocab_size))
                raise ShardError(f"{shard.tokens_path}: token id {int(block[bad])} out of range "
                                 f"(vocab size {self.vocab_size}) at token offset {start + bad}")

    def __repr__(self) -> str:
        dirs = [m["directory"] for m in self.manifests]
        return f"ShardSet({dirs}, docs={self.num_docs}, tokens={self.num_tokens})"


def _file_stamp(shard: Shard) -> list:
    """(size, mtime in ns) of a shard's token and index files, and the token checksum its manifest
    expects (so a rebuilt shard of the same name does not inherit the stamp)."""
    stats = [os.stat(p) for p in (shard.tokens_path, shard.index_path)]
    return [[st.st_size, st.st_mtime_ns] for st in stats] + [shard.entry["tokens_sha256"]]


def _read_stamps(directory: str) -> dict:
    try:
        with open(os.path.join(directory, VERIFIED)) as f:
            return json.load(f)
    except (OSError, ValueError):  # none yet, or unreadable: verify everything again
        return {}


def _write_stamps(directory: str, stamps: dict) -> None:
    path = os.path.join(directory, VERIFIED)
    tmp = f"{path}.{os.getpid()}.tmp"  # ranks may validate the same cache at once
    try:
        with open(tmp, "w") as f:
            json.dump(stamps, f)
        os.replace(tmp, path)
    except OSError:  # a read-only corpus is verified at every start instead
        pass


def check_tokenizer(shards: ShardSet, tokenizer: Tokenizer) -> None:
    """Raise ShardError if ``shards`` were not tokenized with ``tokenizer`` (sha256 of the model)."""
    if shards.tokenizer_sha256 != tokenizer.sha256:
        where = ", ".join(m["directory"] for m in shards.manifests)
        raise ShardError(f"{where}: tokenized with tokenizer sha256 {shards.tokenizer_sha256[:16]}..., but the "
                         f"model uses {tokenizer.path} (sha256 {tokenizer.sha256[:16]}...): re-tokenize the data "
                         "or load the matching tokenizer")
    if shards.vocab_size != tokenizer.vocab_size:
        raise ShardError(f"shards have vocab size {shards.vocab_size}, tokenizer {tokenizer.vocab_size}")
