"""The SentencePiece wrapper and trainer; the DataConfig schema and the default yaml."""
from __future__ import annotations

import dataclasses
import os

import pytest
from omegaconf import OmegaConf

from recurlm.data.config import DataConfig
from recurlm.data.tokenizer import Tokenizer, line_chunks, mixture_sample, train_tokenizer


def test_round_trip_keeps_whitespace_and_unseen_characters(tiny_tokenizer):
    text = "def f(x):\n\tif x:\n        return  'ünïcødé ✓ 日本'\n\n\n  # trailing   \n"
    ids = tiny_tokenizer.encode(text)
    assert tiny_tokenizer.decode(ids) == text
    assert all(0 <= i < tiny_tokenizer.vocab_size for i in ids)
    assert tiny_tokenizer.unk_id not in ids  # byte fallback instead of <unk>
    assert {tiny_tokenizer.bos_id, tiny_tokenizer.eos_id, tiny_tokenizer.pad_id}.isdisjoint(ids)
    assert tiny_tokenizer.decode([tiny_tokenizer.bos_id, *ids, tiny_tokenizer.eos_id]) == text
    assert tiny_tokenizer.encode_batch([text, "x"]) == [ids, tiny_tokenizer.encode("x")]
    assert any("\n" in tiny_tokenizer.id_to_piece(i) and len(tiny_tokenizer.id_to_piece(i)) > 1
               for i in range(tiny_tokenizer.vocab_size))  # pieces span line ends (code indentation)


def test_unigram_special_symbols_and_determinism(tmp_path, corpus, tiny_tokenizer_cfg):
    _, texts = corpus(30)
    cfg = dataclasses.replace(tiny_tokenizer_cfg, model_type="unigram", vocab_size=340,
                              user_defined_symbols=["<|sep|>"])
    a = train_tokenizer(texts, cfg, str(tmp_path / "a.model"))
    b = train_tokenizer(texts, cfg, str(tmp_path / "b.model"))
    assert a.sha256 == b.sha256 and a.vocab_size == 340
    sep = a.sp.piece_to_id("<|sep|>")
    assert a.encode("x<|sep|>y").count(sep) == 1


def test_bad_tokenizer_settings_and_files(tmp_path, tiny_tokenizer_cfg):
    with pytest.raises(ValueError, match="vocab_size 200 is too small"):
        train_tokenizer(["a b c"], dataclasses.replace(tiny_tokenizer_cfg, vocab_size=200), str(tmp_path / "x.model"))
    with pytest.raises(ValueError, match="does not fit in uint32"):
        train_tokenizer(["a b c"], dataclasses.replace(tiny_tokenizer_cfg, vocab_size=1 << 33), str(tmp_path / "x.model"))
    with pytest.raises(ValueError, match="x.model failed after 1 sentences"):
        train_tokenizer(["a b c"], dataclasses.replace(tiny_tokenizer_cfg, vocab_size=5000), str(tmp_path / "x.model"))
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.model: not a SentencePiece model"):
        Tokenizer(str(tmp_path / "junk.model"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Tokenizer(str(tmp_path / "none.model"))


def test_line_chunks_respect_the_byte_limit():
    text = "short\n" * 10 + "x" * 50 + "\nend"
    chunks = list(line_chunks(text, 16))
    assert "".join(chunks) == text
    assert all(len(c.encode()) <= 16 for c in chunks)


CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "data")


def test_default_yaml_matches_the_dataclass():
    node = OmegaConf.load(os.path.join(CONFIG_DIR, "stdlib.yaml"))
    assert list(node.pop("defaults")) == ["data_schema", "_self_"]
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), node))
    assert cfg == DataConfig()
    cfg.validate()
    with pytest.raises(ValueError, match="model_type"):
        dataclasses.replace(cfg, tokenizer=dataclasses.replace(cfg.tokenizer, model_type="wordpiece")).validate()


def test_jsonl_yaml_fits_the_schema():
    node = OmegaConf.load(os.path.join(CONFIG_DIR, "jsonl.yaml"))
    node.pop("defaults")
    merged = OmegaConf.merge(OmegaConf.structured(DataConfig), node)  # unknown keys / bad types raise
    merged.sources[0].paths = ["corpus/*.jsonl.zst"]
    cfg = OmegaConf.to_object(merged)
    cfg.validate()
    assert cfg.sources[0].kind == "jsonl" and cfg.tokenizer.vocab_size == 32768


def test_mixture_sample_follows_the_weights_not_the_source_sizes():
    big = [f"big {i}\n" for i in range(5000)]
    small = [f"small {i}\n" for i in range(300)]
    sample, counts = mixture_sample({"big": big, "small": small}, {"big": 0.5, "small": 0.5}, total=400,
                                    max_bytes=64, seed=0)
    assert counts == {"big": (200, 5000), "small": (200, 300)}
    assert sum(s.startswith("small") for s in sample) == 200 and len(set(sample)) == 400
    # uniform within a source: the reservoir reaches the end of the big one
    assert max(int(s.split()[1]) for s in sample if s.startswith("big")) > 4000
    # a quota larger than the source takes all of it; the sample is reproducible and order-free
    _, counts = mixture_sample({"big": big, "small": small}, {"big": 0.1, "small": 0.9}, total=1000,
                               max_bytes=64, seed=0)
    assert counts == {"big": (100, 5000), "small": (300, 300)}
    again, _ = mixture_sample({"small": small, "big": big}, {"big": 0.5, "small": 0.5}, total=400,
                              max_bytes=64, seed=0)
    assert sorted(again) == sorted(sample)
