"""prepare(): tokenizer + shards built once, cached, deterministic, resumable; the validation split."""
from __future__ import annotations

import dataclasses
import glob
import importlib
import os

import numpy as np
import pytest

from recurlm.data import DataConfig, PackedLoader, ShardError, SourceConfig, prepare
from recurlm.data.build import build_shards, is_valid_doc
from recurlm.data.sources import iter_documents, source_files


def _cfg(tmp_path, corpus_dir, tok_cfg, **kw) -> DataConfig:
    return DataConfig(sources=[SourceConfig(name="tiny", kind="text", paths=[corpus_dir])],
                      tokenizer=tok_cfg, valid_fraction=0.2,
                      cache_dir=str(tmp_path / "cache"), num_workers=1, **kw)


def _bytes(directory: str) -> dict[str, bytes]:
    return {os.path.relpath(p, directory): open(p, "rb").read()
            for p in sorted(glob.glob(os.path.join(directory, "*", "shard_*.*")))}


def test_prepare_builds_then_reuses(tmp_path, capsys, corpus, tiny_tokenizer_cfg):
    corpus_dir, texts = corpus(30)
    cfg = _cfg(tmp_path, corpus_dir, tiny_tokenizer_cfg)
    data = prepare(cfg)
    assert "training a bpe tokenizer" in capsys.readouterr().err
    tok = data.tokenizer
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (1, 2, 3, 400)
    assert data.train.num_docs + data.valid.num_docs == len(texts)
    assert data.valid.num_docs > 0 and data.train.num_docs > data.valid.num_docs
    # every stored document is BOS + encode(text) + EOS of one corpus file
    encoded = {tuple([tok.bos_id, *tok.encode(t), tok.eos_id]) for t in texts}
    for shards in (data.train, data.valid):
        assert all(tuple(shards.document(i).tolist()) in encoded for i in range(shards.num_docs))
        assert isinstance(shards.shards[0].tokens, np.memmap) and shards.shards[0].tokens.dtype == np.uint16
        shards.validate()
    m = data.train.manifests[0]
    assert m["tokenizer_sha256"] == tok.sha256 and m["num_docs"] == data.train.num_docs
    assert m["source_files"] == [os.path.join(corpus_dir, f"doc_{i:03d}.py") for i in range(30)]

    again = prepare(cfg)
    err = capsys.readouterr().err
    assert "reusing cached tokenizer" in err and "reusing cached shards" in err
    assert again.tokenizer.sha256 == tok.sha256 and again.train.manifests[0]["directory"] == m["directory"]

    # a cached shard corrupted on disk is caught before training starts
    bin_path = again.train.shards[0].tokens_path
    original = open(bin_path, "rb").read()
    with open(bin_path, "r+b") as f:
        f.write(b"\x05\x00")
    with pytest.raises(ShardError, match="checksum mismatch"):
        prepare(cfg, progress=False)
    with open(bin_path, "wb") as f:
        f.write(original)

    # editing the corpus invalidates the cache
    with open(os.path.join(corpus_dir, "doc_000.py"), "a") as f:
        f.write("return changed\n")
    changed = prepare(cfg, progress=False)
    assert changed.train.manifests[0]["directory"] != m["directory"]

    loader = data.train_loader(seq_len=16, global_batch_size=2)
    assert isinstance(loader, PackedLoader) and next(loader).input_ids.shape == (2, 16)
    assert next(data.eval_batches(16, 2, max_batches=1)).input_ids.shape[1] == 16


def test_validation_split_is_a_reproducible_hash_of_the_document(tmp_path, corpus, tiny_tokenizer_cfg):
    data = prepare(_cfg(tmp_path, corpus(30)[0], tiny_tokenizer_cfg), progress=False)
    ids = [file_id for _, file_id in source_files(data.cfg.sources[0])]
    expected = sum(is_valid_doc(i, "tiny", 0.2, 0) for i in ids)
    assert data.valid.num_docs == expected
    assert is_valid_doc("a/b.py", "tiny", 0.2, 0) == is_valid_doc("a/b.py", "tiny", 0.2, 0)
    share = np.mean([is_valid_doc(f"doc{i}", "x", 0.1, 0) for i in range(20000)])
    assert abs(share - 0.1) < 0.01


def test_no_valid_document_is_an_error(tmp_path, corpus, tiny_tokenizer_cfg):
    cfg = _cfg(tmp_path, corpus(2)[0], tiny_tokenizer_cfg)
    with pytest.raises(ValueError, match="valid_fraction=1e-09 selected none"):
        prepare(dataclasses.replace(cfg, valid_fraction=1e-9), progress=False)


def test_output_independent_of_workers_and_resumable(tmp_path, corpus, tiny_tokenizer_cfg):
    cfg = _cfg(tmp_path, corpus(40)[0], tiny_tokenizer_cfg)
    tok = prepare(cfg, progress=False).tokenizer
    src = cfg.sources[0]
    kw = dict(valid_fraction=0.2, shard_tokens=2000, progress=False)
    one = str(tmp_path / "w1")
    build_shards(src, tok, one, num_workers=1, **kw)
    two = str(tmp_path / "w2")
    sets = build_shards(src, tok, two, num_workers=2, **kw)
    assert len(sets["train"].shards) >= 3
    assert _bytes(one) == _bytes(two)

    # interrupt: the last shard and the manifests are lost; earlier shards must be kept as they are
    markers = sorted(glob.glob(os.path.join(two, "progress", "*.json")))
    os.remove(markers[-1])
    for split in ("train", "valid"):
        os.remove(os.path.join(two, split, "manifest.json"))
        for p in glob.glob(os.path.join(two, split, os.path.basename(markers[-1])[:-5] + ".*")):
            os.remove(p)
    first = os.path.join(two, "train", "shard_00000.bin")
    mtime = os.stat(first).st_mtime_ns
    resumed = build_shards(src, tok, two, num_workers=2, **kw)
    assert os.stat(first).st_mtime_ns == mtime
    assert _bytes(one) == _bytes(two)
    assert resumed["train"].num_tokens == sets["train"].num_tokens


def test_stdlib_source_is_sorted_and_capped(tmp_path, tiny_tokenizer_cfg):
    src = SourceConfig(name="stdlib", kind="stdlib", max_bytes=200_000)
    files = source_files(src)
    assert files == sorted(files) and len(files) > 100
    assert not any("site-packages" in p for p, _ in files)
    cfg = DataConfig(sources=[src], tokenizer=dataclasses.replace(tiny_tokenizer_cfg, vocab_size=512),
                     cache_dir=str(tmp_path / "cache"), valid_fraction=0.1, num_workers=1)
    sizes = [len(doc.text.encode("utf-8")) for doc in iter_documents(src)]
    assert sum(sizes[:-1]) < 200_000 <= sum(sizes)  # the document crossing the cap is the last one
    data = prepare(cfg, progress=False)
    assert data.train.num_docs + data.valid.num_docs == len(sizes)
    first = data.tokenizer.decode(data.train.document(0))
    assert first == open(files[0][0], encoding="utf-8").read() or data.valid.num_docs


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RECURLM_CACHE", str(tmp_path / "env-cache"))
    assert DataConfig().resolved_cache_dir() == str(tmp_path / "env-cache")
    monkeypatch.delenv("RECURLM_CACHE")
    assert DataConfig().resolved_cache_dir().endswith(os.path.join(".cache", "recurlm", "data"))


@pytest.mark.slow
def test_default_stdlib_config_prepares_quickly(tmp_path):
    import time

    t0 = time.perf_counter()
    data = prepare(DataConfig(cache_dir=str(tmp_path)), progress=False)
    assert time.perf_counter() - t0 < 60
    assert data.tokenizer.vocab_size == 4096 and data.train.num_tokens > 1_000_000
    t0 = time.perf_counter()
    prepare(DataConfig(cache_dir=str(tmp_path)), progress=False)
    assert time.perf_counter() - t0 < 10


def test_mixture_of_sources_and_a_given_tokenizer(tmp_path, corpus, tiny_tokenizer, tiny_tokenizer_cfg):
    a_dir, _ = corpus(20, seed=1, name="a")
    b_dir, _ = corpus(20, seed=2, name="b")
    cfg = DataConfig(sources=[SourceConfig(name="a", kind="text", paths=[a_dir], weight=3.0),
                              SourceConfig(name="b", kind="text", paths=[b_dir], weight=1.0)],
                     tokenizer_path=tiny_tokenizer.path, valid_fraction=0.2,
                     cache_dir=str(tmp_path / "cache"), num_workers=1)
    data = prepare(cfg, progress=False)
    assert data.tokenizer.sha256 == tiny_tokenizer.sha256
    assert set(data.train) == {"a", "b"} and data.mixture_weights == {"a": 0.75, "b": 0.25}
    assert len(data.valid.manifests) == 2  # both sources' validation documents
    batch = next(data.train_loader(seq_len=8, global_batch_size=8))
    assert batch.input_ids.shape == (8, 8)
    with pytest.raises(ValueError, match="source names must be unique"):
        prepare(dataclasses.replace(cfg, sources=[cfg.sources[0], cfg.sources[0]]))


def test_tokenizer_of_a_mixture_samples_by_weight(tmp_path, capfd, corpus, tiny_tokenizer_cfg):
    a_dir, _ = corpus(60, seed=1, name="a")
    b_dir, _ = corpus(20, seed=2, name="b")
    sources = [SourceConfig(name="a", kind="text", paths=[a_dir], weight=1.0),
               SourceConfig(name="b", kind="text", paths=[b_dir], weight=1.0)]
    sampled = dataclasses.replace(tiny_tokenizer_cfg, input_sentence_size=120, max_sentence_bytes=256)
    cfg = DataConfig(sources=sources, tokenizer=sampled,
                     valid_fraction=0.2, cache_dir=str(tmp_path / "cache"), num_workers=1)
    first = prepare(cfg)
    assert "tokenizer sample by mixture weight: a 60 of " in capfd.readouterr().err
    # other weights are another tokenizer (the cache key holds them)
    reweighted = dataclasses.replace(cfg, sources=[sources[0], dataclasses.replace(sources[1], weight=3.0)])
    second = prepare(reweighted)
    assert "a 30 of " in capfd.readouterr().err and second.tokenizer.path != first.tokenizer.path


def test_tokenizer_never_sees_validation_documents(tmp_path, monkeypatch, corpus, tiny_tokenizer_cfg):
    prepare_module = importlib.import_module("recurlm.data.prepare")  # the package exports a function of that name
    directory, texts = corpus(30, seed=3)
    src = SourceConfig(name="c", kind="text", paths=[directory])
    cfg = DataConfig(sources=[src], tokenizer=tiny_tokenizer_cfg, valid_fraction=0.3,
                     cache_dir=str(tmp_path / "cache"), num_workers=1)
    # the tokenizer trains in a child process on exactly these texts (prepare._train_tokenizer_job)
    texts_for_tokenizer, _ = prepare_module._tokenizer_texts(cfg, progress=False)
    seen = list(texts_for_tokenizer)
    data = prepare(cfg, progress=False)
    valid_texts = {doc.text for doc in iter_documents(src) if is_valid_doc(doc.doc_id, "c", 0.3, 0)}
    assert valid_texts and data.valid.num_docs == len(valid_texts)
    assert not valid_texts & set(seen) and len(seen) == len(texts) - len(valid_texts)
