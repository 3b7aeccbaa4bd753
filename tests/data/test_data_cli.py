"""recurlm-data tokenizer / tokenize / inspect / validate, run in-process."""
from __future__ import annotations

import json
import os

import zstandard

from recurlm.data.cli import main


def test_cli_round_trip(tmp_path, corpus, capsys):
    corpus_dir, texts = corpus(24)
    jsonl = tmp_path / "corpus.jsonl.zst"
    jsonl.write_bytes(zstandard.ZstdCompressor().compress(
        "".join(json.dumps({"body": t}) + "\n" for t in texts).encode()))
    tok = str(tmp_path / "tok.model")
    assert main(["tokenizer", str(jsonl), "--format", "jsonl", "--text-field", "body", "--vocab-size", "360",
                 "--input-sentence-size", "0", "--special-token", "<|sep|>", "-o", tok]) == 0
    out = capsys.readouterr().out
    assert "vocab_size=360" in out and "user_defined=1" in out and "byte=256" in out and "chars_per_token=" in out

    out_dir = str(tmp_path / "shards")
    args = ["tokenize", str(jsonl), "--format", "jsonl", "--text-field", "body", "--tokenizer", tok,
            "-o", out_dir, "--valid-fraction", "0.25", "--shard-tokens", "800", "--quiet"]
    assert main(args + ["--workers", "2"]) == 0
    assert "train: " in capsys.readouterr().out
    assert main(args) == 0  # already complete: reuses the shards
    assert os.path.isfile(os.path.join(out_dir, "valid", "manifest.json"))

    png = str(tmp_path / "lengths.png")
    assert main(["inspect", os.path.join(out_dir, "train"), "--samples", "2", "--png", png]) == 0
    out = capsys.readouterr().out
    assert "split=train" in out and "document tokens: mean" in out and "--- document" in out
    assert os.path.getsize(png) > 1000

    assert main(["validate", out_dir, "--tokenizer", tok, "--quiet"]) == 0
    assert capsys.readouterr().out.count("ok ") == 2

    other = str(tmp_path / "other.model")
    assert main(["tokenizer", corpus_dir, "--vocab-size", "330", "--input-sentence-size", "0", "-o", other]) == 0
    assert main(["validate", out_dir, "--tokenizer", other, "--quiet"]) == 1
    assert "tokenized with tokenizer sha256" in capsys.readouterr().err

    with open(os.path.join(out_dir, "train", "shard_00000.bin"), "r+b") as f:
        f.write(b"\x09\x00")
    assert main(["validate", out_dir, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "FAIL" in err and "shard_00000.bin: checksum mismatch" in err


def test_cli_reports_bad_input(tmp_path, capsys):
    (tmp_path / "empty.py").write_text("")
    assert main(["tokenizer", str(tmp_path), "-o", str(tmp_path / "t.model")]) == 2
    assert "empty corpus" in capsys.readouterr().err
