"""Known failures print one block naming the file or key and what to do, with the traceback in
<run_dir>/error.log; the tokenizer's vocabulary-too-large error names data.tokenizer.vocab_size."""
import os

import pytest

from recurlm.cli import train_main as main


def test_a_known_failure_prints_one_block_and_logs_the_traceback(tiny_overrides, data_cache, tmp_path, capsys):
    run_dir = tmp_path / "run"
    missing = tmp_path / "no-such-checkpoint"
    code = main([*tiny_overrides, f"data.cache_dir={data_cache}", f"run_dir={run_dir}", f"resume={missing}",
                 "logger.wandb.mode=disabled"])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err and "[rank0]" not in err
    assert f"refusing checkpoint {missing}: {missing} is not a directory" in err
    assert "resume=auto takes the newest checkpoint that verifies" in err  # what to do
    assert f"(traceback in {run_dir}/error.log)" in err
    assert "Traceback (most recent call last)" in (run_dir / "error.log").read_text()


def test_a_missing_data_file_is_one_block_naming_it(tiny_overrides, tmp_path, capsys):
    missing = tmp_path / "corpus" / "*.txt"
    code = main([*tiny_overrides, f"data.cache_dir={tmp_path / 'cache'}", f"run_dir={tmp_path / 'run'}",
                 "data.sources.0.kind=text", f"data.sources.0.paths=[{missing}]", "logger.wandb.mode=disabled"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert f"DataError\npreparing the data failed: source 'stdlib': '{missing}' matches no file" in err
    assert "Fix the data source" in err


def test_an_unexpected_failure_keeps_its_traceback(tiny_overrides, monkeypatch):
    import recurlm.train.trainer as trainer_module

    def bug(job):
        raise KeyError("a bug")

    monkeypatch.setattr(trainer_module, "train", bug)
    with pytest.raises(KeyError, match="a bug"):
        main([*tiny_overrides])


def test_vocabulary_too_large_for_the_corpus_names_the_key(tmp_path):
    from recurlm.data.config import TokenizerConfig
    from recurlm.data.tokenizer import TokenizerError, train_tokenizer

    cfg = TokenizerConfig(vocab_size=5000, input_sentence_size=1000)
    with pytest.raises(TokenizerError, match=r"data.tokenizer.vocab_size=5000 does not fit this corpus") as err:
        train_tokenizer(["def f(x):\n    return x\n"] * 20, cfg, os.path.join(str(tmp_path), "t.model"))
    assert "Lower data.tokenizer.vocab_size" in str(err.value)
