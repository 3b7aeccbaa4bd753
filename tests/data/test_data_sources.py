"""Reading sources: every input format, and bad text input (counted skips, clear errors)."""
from __future__ import annotations

import json
import logging

import pytest

from recurlm.data.build import build_shards
from recurlm.data.config import SourceConfig
from recurlm.data.sources import SkipStats, iter_documents


def _docs(src, stats=None):
    return [(d.doc_id, d.text) for d in iter_documents(src, stats)]


def test_text_files_and_bad_text(tmp_path, caplog):
    (tmp_path / "a.py").write_text("print('a')\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.py").write_text("x = 'é'\n")
    (tmp_path / "empty.py").write_text("  \n\n")
    (tmp_path / "latin1.py").write_bytes("s = 'caf\xe9'\n".encode("latin-1"))
    (tmp_path / "ignored.txt").write_text("not collected")
    stats = SkipStats()
    with caplog.at_level(logging.WARNING):
        docs = _docs(SourceConfig(name="t", kind="text", paths=[str(tmp_path)]), stats)
    root = str(tmp_path)
    assert docs == [(f"{root}/a.py", "print('a')\n"), (f"{root}/sub/b.py", "x = 'é'\n")]
    assert stats.counts == {"empty document": 1, "non-UTF-8 bytes": 1}
    assert "latin1.py (byte 8)" in caplog.text and "empty.py" in caplog.text


def test_caps(tmp_path):
    for i in range(5):
        (tmp_path / f"{i}.py").write_text("y" * 100)
    src = SourceConfig(name="t", kind="text", paths=[str(tmp_path / "*.py")], max_bytes=250)
    assert len(_docs(src)) == 3  # the document crossing the cap is the last one
    src = SourceConfig(name="t", kind="text", paths=[str(tmp_path)], max_docs=2)
    assert len(_docs(src)) == 2


def test_jsonl_and_zstd(tmp_path):
    import zstandard

    lines = [json.dumps({"content": "first doc"}), "{broken", json.dumps({"other": 1}), "",
             json.dumps({"content": ""}), json.dumps({"content": "second doc"})]
    raw = ("\n".join(lines) + "\n").encode() + b'{"content": "bad \xff byte"}\n'
    (tmp_path / "a.jsonl").write_bytes(raw)
    (tmp_path / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    stats = SkipStats()
    docs = _docs(SourceConfig(name="j", kind="jsonl", paths=[str(tmp_path)], text_field="content"), stats)
    assert [t for _, t in docs] == ["first doc", "second doc"] * 2
    assert docs[0][0] == f"{tmp_path}/a.jsonl:1" and docs[3][0] == f"{tmp_path}/b.jsonl.zst:6"
    assert stats.counts == {"malformed JSON": 2, "text field missing or not a string": 2,
                            "empty document": 2, "non-UTF-8 bytes": 2}


def test_parquet_and_hf_disk(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["one", None, "three"]}), str(tmp_path / "p.parquet"))
    docs = _docs(SourceConfig(name="p", kind="parquet", paths=[str(tmp_path / "p.parquet")]))
    assert docs == [(f"{tmp_path}/p.parquet:0", "one"), (f"{tmp_path}/p.parquet:2", "three")]
    with pytest.raises(KeyError, match="p.parquet: parquet file has no column 'body'"):
        _docs(SourceConfig(name="p", kind="parquet", paths=[str(tmp_path / "p.parquet")], text_field="body"))

    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["hf one", "hf two"]})}).save_to_disk(
        str(tmp_path / "hf"))
    docs = _docs(SourceConfig(name="h", kind="hf_disk", paths=[str(tmp_path / "hf")]))
    assert [t for _, t in docs] == ["hf one", "hf two"]


def test_missing_paths_and_empty_corpus(tmp_path):
    with pytest.raises(FileNotFoundError, match="'nowhere/\\*.py' matches no file"):
        _docs(SourceConfig(name="m", kind="text", paths=["nowhere/*.py"]))
    (tmp_path / "e.py").write_text("\n")
    with pytest.raises(ValueError, match="source 'm': empty corpus.*1 empty document"):
        _docs(SourceConfig(name="m", kind="text", paths=[str(tmp_path)]))
    with pytest.raises(FileNotFoundError, match="holds no file ending in"):
        _docs(SourceConfig(name="m", kind="jsonl", paths=[str(tmp_path)]))


@pytest.mark.parametrize("workers", [1, 2])
def test_empty_corpus_stops_the_shard_build(tmp_path, tiny_tokenizer, workers):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.py").write_bytes(b"\xff\xfe")
    src = SourceConfig(name="e", kind="text", paths=[str(tmp_path / "c")])
    with pytest.raises(ValueError, match="source 'e': empty corpus.*1 non-UTF-8 bytes"):
        build_shards(src, tiny_tokenizer, str(tmp_path / "out"), num_workers=workers, progress=False)
