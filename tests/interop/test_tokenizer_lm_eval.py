"""The exported tokenizer encodes as recurlm's SentencePiece tokenizer (BPE and unigram, with a
user-defined symbol), and lm-evaluation-harness's own ``hf`` model on an exported RecurrentGemma /
xLSTM directory scores a local offline task exactly as recurlm-eval's lm_eval adapter does."""
import json
import os
import sysconfig

import pytest
import torch

from recurlm.data.config import TokenizerConfig
from recurlm.data.tokenizer import Tokenizer, train_tokenizer
from recurlm.models import build_model
from recurlm.models.pretrained import save_pretrained
from recurlm.train.convert import main as convert

TEXTS = ["mqar: ab=123 cd=456 | cd=", "  leading spaces", "a  b   c\n", "def f(x):\n\treturn x  # ünïcödé 漢字 🙂",
         "<sep>x<sep> 42", "trailing  "]


def _stdlib_text(name, size=20000):
    with open(os.path.join(sysconfig.get_paths()["stdlib"], name), encoding="utf-8") as f:
        return f.read()[:size]


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_exported_tokenizer_encodes_as_recurlm(model_type, tmp_path):
    from transformers import AutoTokenizer

    from recurlm.models.convert.hf_tokenizer import write_hf_tokenizer

    corpus = [_stdlib_text("argparse.py"), _stdlib_text("typing.py")]
    cfg = TokenizerConfig(vocab_size=700, model_type=model_type, input_sentence_size=0, num_threads=1,
                          user_defined_symbols=["<sep>"])
    ours = train_tokenizer(corpus, cfg, str(tmp_path / "sp.model"))
    write_hf_tokenizer(ours.path, str(tmp_path / "hf"))
    theirs = AutoTokenizer.from_pretrained(tmp_path / "hf")
    samples = TEXTS + [_stdlib_text("inspect.py")[i:i + 1500] for i in range(0, 15000, 3000)]
    for text in samples:
        assert theirs.encode(text, add_special_tokens=False) == ours.encode(text), text[:40]
        assert theirs.decode(ours.encode(text)) == text
    assert theirs.encode("ab") == [ours.bos_id] + ours.encode("ab")  # documents start with <s>
    assert (theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id) == (ours.bos_id, ours.eos_id, ours.pad_id)


@pytest.fixture
def local_task(tmp_path):
    """The offline multiple-choice task of tests/eval/test_lm_eval.py."""
    rows = [{"q": f"mqar: ab={i}{i}{i} cd=7{i}7 | ab=", "choices": [f"{i}{i}{i}", f"7{i}7", "000"], "gold": i % 3}
            for i in range(1, 7)]
    data = tmp_path / "recall.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "tiny_recall.yaml").write_text(
        "task: tiny_recall\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: '{{q}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: gold\n"
        "metric_list:\n  - metric: acc\n")
    return str(tmp_path)


def _scores(model, local_task):
    """(per-request log-likelihoods, acc) of lm-eval on ``model`` (an LM instance or the "hf" name + args)."""
    import lm_eval.models  # noqa: F401  registers "hf" (lm-eval only does so when its registry is empty)
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    kind, args = model if isinstance(model, tuple) else (model, None)
    result = simple_evaluate(model=kind, model_args=args, tasks=["tiny_recall"], log_samples=True, bootstrap_iters=0,
                             task_manager=TaskManager(include_path=local_task, include_defaults=False), device="cpu")
    loglikelihoods = [float(r[0][0]) for s in result["samples"]["tiny_recall"] for r in s["resps"]]
    return loglikelihoods, result["results"]["tiny_recall"]["acc,none"]


@pytest.mark.parametrize("family", ["griffin", "xlstm"])
def test_lm_eval_hf_model_on_an_export_equals_the_recurlm_adapter(family, local_task, tmp_path, monkeypatch):
    from recurlm.eval.lm_eval_adapter import RecurLMHarness

    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    tokenizer = train_tokenizer([_stdlib_text("argparse.py")], TokenizerConfig(vocab_size=400, input_sentence_size=0,
                                                                               num_threads=1),
                                str(tmp_path / "sp.model"))
    sizes = {"griffin": dict(d_model=48, n_layers=3, n_heads=4, lru_heads=4, lru_width=44, mlp_hidden=52,
                            attention_window=8),
             # transformers' xLSTMCache (made on every forward) rounds qk / v widths up to multiples of 64
             "xlstm": dict(architecture="xlstm7b", d_model=128, n_layers=2, n_heads=2, round_to=16)}[family]
    torch.manual_seed(0)
    model = build_model({"family": family, "size": "custom", "vocab_size": tokenizer.vocab_size, **sizes}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    save_pretrained(str(tmp_path / "export"), model.config, model.state_dict(), tokenizer.path)
    assert convert(["export-hf", str(tmp_path / "export"), "--out", str(tmp_path / "hf")]) == 0
    if family == "xlstm":  # transformers' default kernel dtype is bfloat16: compare in float32
        config = json.loads((tmp_path / "hf" / "config.json").read_text())
        (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "autocast_kernel_dtype": "float32"}))

    ours, our_acc = _scores(RecurLMHarness(model=model, tokenizer=Tokenizer(tokenizer.path), batch_size=4), local_task)
    theirs, their_acc = _scores(("hf", f"pretrained={tmp_path / 'hf'},add_bos_token=True,dtype=float32,batch_size=1"),
                                local_task)
    assert their_acc == our_acc
    assert len(theirs) == len(ours) == 18
    torch.testing.assert_close(torch.tensor(theirs), torch.tensor(ours), rtol=1e-4, atol=1e-4)


def test_a_sentencepiece_model_it_cannot_mirror_gives_a_warning_not_a_failure(tmp_path, caplog):
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(sentence_iterator=iter(_stdlib_text("argparse.py").splitlines()),
                                   model_prefix=str(tmp_path / "llama"),
                                   vocab_size=400, add_dummy_prefix=True, byte_fallback=True, minloglevel=2,
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=3)  # Llama-style: a dummy prefix
    torch.manual_seed(0)
    model = build_model({"family": "griffin", "size": "tiny", "vocab_size": 400})
    save_pretrained(str(tmp_path / "export"), model.config, model.state_dict(), str(tmp_path / "llama.model"))
    assert convert(["export-hf", str(tmp_path / "export"), "--out", str(tmp_path / "hf")]) == 0
    assert "no tokenizer.json written" in caplog.text and "add_dummy_prefix" in caplog.text
    assert (tmp_path / "hf" / "model.safetensors").is_file() and not (tmp_path / "hf" / "tokenizer.json").exists()
