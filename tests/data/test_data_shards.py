"""Shard files: memmap reading and every way a shard can be broken (each a clear ShardError)."""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from recurlm.data.shards import ShardError, ShardSet, check_tokenizer, sample_sha256
from recurlm.data.tokenizer import Tokenizer, file_sha256, token_dtype, train_tokenizer

DOCS = [[5, 6, 7], [8] * 10, [9, 10], [11] * 4, [12]]


def _manifest(directory):
    with open(os.path.join(directory, "manifest.json")) as f:
        return json.load(f)


def _rewrite_manifest(directory, **changes):
    m = _manifest(directory)
    m.update(changes)
    with open(os.path.join(directory, "manifest.json"), "w") as f:
        json.dump(m, f)


def test_memmap_reading(shards_from_docs, tiny_tokenizer):
    shards = shards_from_docs("ok", DOCS * 3)  # 15 documents over 3 shard files
    assert len(shards.shards) == 3 and shards.num_docs == 15
    assert shards.doc_lengths.tolist() == [len(d) + 2 for d in DOCS] * 3
    for i, doc in enumerate(DOCS * 3):
        got = shards.document(i)
        assert isinstance(got, np.memmap) and got.dtype == np.uint16  # a view, never a copy of the file
        assert got.tolist() == [tiny_tokenizer.bos_id, *doc, tiny_tokenizer.eos_id]
    with pytest.raises(IndexError, match="out of range"):
        shards.document(15)
    shards.validate()
    check_tokenizer(shards, tiny_tokenizer)
    both = ShardSet.concat([shards, shards])
    assert both.num_docs == 30 and both.document(17).tolist() == shards.document(2).tolist()


def test_truncated_shard(shards_from_docs):
    d = shards_from_docs("trunc", DOCS).manifests[0]["directory"]
    path = os.path.join(d, "shard_00000.bin")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 2)
    with pytest.raises(ShardError, match=r"shard_00000\.bin: .* bytes, the manifest implies .*truncated"):
        ShardSet.open(d)


def flip_bit_keeping_mtime(path, offset):
    """Bit rot: one flipped bit, with the file's size and modification time unchanged."""
    stat = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x04]))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_bit_rot_with_the_mtime_kept_is_caught_on_open(shards_from_docs):
    d = shards_from_docs("corrupt", DOCS).manifests[0]["directory"]
    ShardSet.open(d).validate(reuse_stamps=True)  # passed once: size and mtime are recorded
    flip_bit_keeping_mtime(os.path.join(d, "shard_00000.bin"), 4)
    with pytest.raises(ShardError, match=r"shard_00000\.bin: checksum mismatch in a sampled block"):
        ShardSet.open(d)


def test_sampled_checksum_covers_head_and_tail_of_a_large_file(tmp_path):
    path = str(tmp_path / "big.bin")
    with open(path, "wb") as f:
        f.write(bytes(range(256)) * 20_000)  # 5 MB: sampled, not read whole
    clean = sample_sha256(path)
    for offset in (0, os.path.getsize(path) - 1):  # the head and the tail (written last)
        flip_bit_keeping_mtime(path, offset)
        assert sample_sha256(path) != clean
        flip_bit_keeping_mtime(path, offset)
    assert sample_sha256(path) == clean


def test_corrupted_tokens_fail_the_full_checksum(shards_from_docs):
    d = shards_from_docs("corrupt-full", DOCS).manifests[0]["directory"]
    path = os.path.join(d, "shard_00000.bin")
    with open(path, "r+b") as f:
        f.seek(4)
        f.write(b"\x07\x00")
    m = _manifest(d)
    del m["shards"][0]["tokens_sample_sha256"]  # a manifest written before sampled checksums
    with open(os.path.join(d, "manifest.json"), "w") as f:
        json.dump(m, f)
    shards = ShardSet.open(d)  # sizes still agree: only the full validation sees it
    with pytest.raises(ShardError, match=r"shard_00000\.bin: checksum mismatch"):
        shards.validate()


def test_index_out_of_range(shards_from_docs):
    d = shards_from_docs("index", DOCS).manifests[0]["directory"]
    path = os.path.join(d, "shard_00000.idx")
    offsets = np.fromfile(path, dtype=np.int64)
    offsets[-1] += 100
    offsets.tofile(path)
    with pytest.raises(ShardError, match=r"shard_00000\.idx: document index out of range"):
        ShardSet.open(d)
    offsets[-1] -= 100
    offsets[2], offsets[3] = offsets[3], offsets[2]
    offsets.tofile(path)
    with pytest.raises(ShardError, match="not strictly increasing"):
        ShardSet.open(d)


def test_token_id_out_of_vocabulary(shards_from_docs):
    d = shards_from_docs("oov", DOCS).manifests[0]["directory"]
    path = os.path.join(d, "shard_00000.bin")
    tokens = np.fromfile(path, dtype=np.uint16)
    tokens[3] = 60000
    tokens.tofile(path)
    m = _manifest(d)
    m["shards"][0]["tokens_sha256"] = file_sha256(path)  # a consistent file with a bad id
    m["shards"][0]["tokens_sample_sha256"] = sample_sha256(path)
    with open(os.path.join(d, "manifest.json"), "w") as f:
        json.dump(m, f)
    with pytest.raises(ShardError, match=r"token id 60000 out of range \(vocab size 400\) at token offset 3"):
        ShardSet.open(d).validate()
    # reading the document names the shard and the offset (an embedding lookup would only say IndexError)
    with pytest.raises(ShardError, match=r"shard_00000\.bin: token id 60000 at token offset 3 \(document 0\)"):
        ShardSet.open(d).document(0)


def test_missing_or_broken_manifest(tmp_path, shards_from_docs):
    with pytest.raises(ShardError, match="no manifest"):
        ShardSet.open(str(tmp_path))
    d = shards_from_docs("broken", DOCS).manifests[0]["directory"]
    with open(os.path.join(d, "manifest.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(ShardError, match="corrupted manifest"):
        ShardSet.open(d)


def test_missing_shard_file(shards_from_docs):
    d = shards_from_docs("missing", DOCS).manifests[0]["directory"]
    os.remove(os.path.join(d, "shard_00000.idx"))
    with pytest.raises(ShardError, match=r"shard_00000\.idx: shard file listed in the manifest is missing"):
        ShardSet.open(d)


def test_vocab_larger_than_token_dtype(shards_from_docs):
    d = shards_from_docs("dtype", DOCS).manifests[0]["directory"]
    _rewrite_manifest(d, vocab_size=70_000)
    with pytest.raises(ShardError, match="vocab size 70000 does not fit token dtype uint16"):
        ShardSet.open(d)
    assert token_dtype(70_000) == np.uint32 and token_dtype(65_536) == np.uint16
    with pytest.raises(ValueError, match="does not fit"):
        token_dtype(1 << 33)


def test_tokenizer_mismatch(tmp_path, shards_from_docs, tiny_tokenizer_cfg):
    shards = shards_from_docs("mismatch", DOCS)
    other = train_tokenizer(["alpha beta gamma delta\n" * 50, "x = 1\n" * 30],
                            dataclasses.replace(tiny_tokenizer_cfg, vocab_size=300), str(tmp_path / "other.model"))
    assert other.sha256 != shards.tokenizer_sha256
    with pytest.raises(ShardError, match=r"tokenized with tokenizer sha256 .* but the model uses .*other\.model"):
        check_tokenizer(shards, other)
    assert isinstance(other, Tokenizer)


def test_validation_stamps_skip_unchanged_shards_only(shards_from_docs, monkeypatch):
    import recurlm.data.shards as shards_module

    shards = shards_from_docs("stamped", DOCS * 3)  # 3 shard files
    hashed: list[str] = []
    monkeypatch.setattr(shards_module, "file_sha256", lambda p: hashed.append(p) or file_sha256(p))
    shards.validate(reuse_stamps=True)
    assert len(hashed) == 6  # token and index file of every shard, then recorded
    directory = os.path.dirname(shards.shards[0].tokens_path)
    assert set(json.load(open(os.path.join(directory, "verified.json")))) == {
        os.path.basename(s.tokens_path) for s in shards.shards}
    hashed.clear()
    shards.validate(reuse_stamps=True)
    assert hashed == []  # nothing changed: nothing read
    shards.validate()
    assert len(hashed) == 6  # without stamps everything is read
    # a shard rewritten in place (same size, new mtime) is read again, and its corruption caught
    hashed.clear()
    path = shards.shards[1].tokens_path
    with open(path, "r+b") as f:
        f.write(b"\x07\x00")
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 1_000_000))
    entry = next(e for e in _manifest(directory)["shards"] if e["tokens"] == os.path.basename(path))
    entry["tokens_sample_sha256"] = sample_sha256(path)  # past the sampled check: the stamps must catch it
    _rewrite_manifest(directory, shards=[entry if e["tokens"] == entry["tokens"] else e
                                         for e in _manifest(directory)["shards"]])
    with pytest.raises(ShardError, match="checksum mismatch"):
        ShardSet.open(directory).validate(reuse_stamps=True)
    assert hashed == [path]
