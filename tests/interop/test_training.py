"""An imported checkpoint is an export like any other: ``recipe.init_from=<it>`` starts training from
its weights, ``recurlm-eval checkpoint=<it>`` evaluates it; ``recipe.init_from=<a foreign dir>``
imports on the fly."""
import importlib.util
import json
import os

import torch
from safetensors.torch import load_file

from recurlm.configs import compose
from recurlm.train.convert import main as convert
from recurlm.train.trainer import Trainer

_spec = importlib.util.spec_from_file_location(
    "train_conftest", os.path.join(os.path.dirname(__file__), "..", "train", "conftest.py"))
_train_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_train_conftest)
TINY_DATA, TINY_TRAIN = _train_conftest.TINY_DATA, _train_conftest.TINY_TRAIN


def _hf_griffin(path):
    """A transformers RecurrentGemma with the 512-piece vocabulary of the tiny training data."""
    import transformers

    torch.manual_seed(0)
    config = transformers.RecurrentGemmaConfig(num_hidden_layers=3, vocab_size=512, hidden_size=48, intermediate_size=104,
                                               num_attention_heads=4, num_key_value_heads=1, lru_width=44,
                                               attention_window_size=8, tie_word_embeddings=True)
    transformers.RecurrentGemmaForCausalLM(config).save_pretrained(path)


def _assert_starts_from(trainer, weights):
    for name, p in trainer.model.named_parameters():
        torch.testing.assert_close(p.detach(), weights[name], rtol=0, atol=0)


def test_train_from_an_import_and_evaluate_it(tmp_path):
    _hf_griffin(tmp_path / "hf")
    assert convert(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "imported")]) == 0
    info = json.loads((tmp_path / "imported" / "export.json").read_text())
    assert info["format"] == "hf-recurrentgemma"
    assert "pass --tokenizer" in info["tokenizer"]
    weights = load_file(tmp_path / "imported" / "model.safetensors")

    def job(init_from, name):
        return compose([*TINY_DATA, f"data.cache_dir={tmp_path / 'cache'}", *TINY_TRAIN, "train.checkpoint_every=0",
                        "train.steps=2", f"recipe.init_from={init_from}", f"run_dir={tmp_path / name}"])

    trainer = Trainer(job(tmp_path / "imported", "run"))
    assert trainer.model_cfg.family == "griffin" and trainer.model_cfg.d_model == 48
    _assert_starts_from(trainer, weights)
    assert trainer.run().step == 2

    on_the_fly = Trainer(job(tmp_path / "hf", "run-hf"))  # the transformers directory itself
    _assert_starts_from(on_the_fly, weights)
    assert not [p for p in os.listdir(tmp_path) if "partial" in p]

    # the same import with the run's tokenizer, evaluated by recurlm-eval
    from recurlm.eval.cli import main as evaluate

    assert convert(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "with-tokenizer"),
                    "--tokenizer", trainer.data.tokenizer.path]) == 0
    out = tmp_path / "eval"
    assert evaluate([f"checkpoint={tmp_path / 'with-tokenizer'}", "tasks=[passkey]", "passkey_lengths=[64]",
                     "passkey_trials=1", "passkey_depths=[0.5]", f"out_dir={out}", "wandb_mode=disabled"]) == 0
    results = json.loads((out / "results.json").read_text())["results"]
    assert any(r["task"].startswith("passkey") for r in results)
