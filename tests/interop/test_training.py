"""An imported checkpoint is an export like any other: ``recipe.init_from=<it>`` starts training from
its weights, ``recurlm-eval checkpoint=<it>`` evaluates it; ``recipe.init_from=<a foreign dir>``
imports on the fly."""
import json
import os

import torch
from safetensors.torch import load_file

from recurlm.configs import compose
from recurlm.train.convert import main as convert
from recurlm.train.trainer import Trainer

from ..helpers.tiny_job import TINY_DATA, TINY_TRAIN


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


def test_train_from_an_import_and_evaluate_it(tmp_path, data_cache):
    _hf_griffin(tmp_path / "hf")
    assert convert(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "imported")]) == 0
    info = json.loads((tmp_path / "imported" / "export.json").read_text())
    assert info["format"] == "hf-recurrentgemma"
    assert "pass --tokenizer" in info["tokenizer"]
    weights = load_file(tmp_path / "imported" / "model.safetensors")

    def job(init_from, name):
        return compose([*TINY_DATA, f"data.cache_dir={data_cache}", *TINY_TRAIN, "train.checkpoint_every=0",
                        "train.steps=2", f"recipe.init_from={init_from}", f"run_dir={tmp_path / name}"])

    trainer = Trainer(job(tmp_path / "imported", "run"))
    assert trainer.model_cfg.family == "griffin" and trainer.model_cfg.d_model == 48
    _assert_starts_from(trainer, weights)
    assert trainer.run().step == 2

    on_the_fly = Trainer(job(tmp_path / "hf", "run-hf"))  # the transformers directory itself
    _assert_starts_from(on_the_fly, weights)
    assert not [p for p in os.listdir(tmp_path) if "partial" in p]

    # the same import with the run's tokenizer, evaluated by recurlm-eval
    from recurlm.cli import eval_main as evaluate

    assert convert(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "with-tokenizer"),
                    "--tokenizer", trainer.data.tokenizer.path]) == 0
    out = tmp_path / "eval"
    assert evaluate([f"checkpoint={tmp_path / 'with-tokenizer'}", "tasks=[passkey]", "passkey_lengths=[64]",
                     "passkey_trials=1", "passkey_depths=[0.5]", f"out_dir={out}", "wandb_mode=disabled"]) == 0
    results = json.loads((out / "results.json").read_text())["results"]
    assert any(r["task"].startswith("passkey") for r in results)


def test_statex_post_training_of_an_imported_rwkv7_then_export_hf(tmp_path, helpers, data_cache):
    """docs/interop.md's second example on a tiny model: fla RWKV-7 -> import -> expand-state ->
    recipe=state_expansion -> export-hf -> fla's loader gives the post-trained model's logits."""
    from recurlm.models.pretrained import load_pretrained
    from recurlm.train.convert import build_parser

    with helpers.fla_context("rwkv7"):
        import fla.models

        torch.manual_seed(0)
        config = fla.models.RWKV7Config(hidden_size=48, num_hidden_layers=2, head_dim=8, vocab_size=512,
                                        decay_low_rank_dim=8, a_low_rank_dim=8, v_low_rank_dim=8, gate_low_rank_dim=16,
                                        intermediate_size=136, fuse_cross_entropy=False)
        helpers.perturb_(fla.models.RWKV7ForCausalLM(config)).save_pretrained(tmp_path / "fla")
    assert convert(["import", str(tmp_path / "fla"), "--out", str(tmp_path / "imported")]) == 0
    every_layer = ["--layers", "all"] if "--layers" in build_parser().format_help() else []  # StateX's per-layer choice
    assert convert(["expand-state", str(tmp_path / "imported"), "--factor", "2", "--out", str(tmp_path / "x2"),
                    "--batch-size", "1", "--seq-len", "16", *every_layer]) == 0
    config_path = tmp_path / "x2" / "config.json"
    expanded = json.loads(config_path.read_text())
    assert expanded["head_dim"] == 16
    # fla's ln_x epsilon is head_dim x norm_eps: give the wider heads that epsilon before post-training
    config_path.write_text(json.dumps({**expanded, "group_norm_eps": expanded["head_dim"] * expanded["norm_eps"]}))

    job = compose([*TINY_DATA, f"data.cache_dir={data_cache}", *TINY_TRAIN, "train.checkpoint_every=1",
                   "train.steps=1", "recipe=state_expansion", "recipe.post_train_ratio=0",
                   f"recipe.init_from={tmp_path / 'x2'}",
                   f"run_dir={tmp_path / 'run'}"])
    assert Trainer(job).run().step == 1
    assert convert(["export", str(tmp_path / "run"), "--out", str(tmp_path / "post")]) == 0
    assert convert(["export-hf", str(tmp_path / "post"), "--out", str(tmp_path / "hf")]) == 0
    ids = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, _ = load_pretrained(str(tmp_path / "post"))(ids)
    theirs = helpers.load_in_fresh_process(helpers.fla_loader.replace("FAMILY", "'rwkv7'"), tmp_path / "hf", ids, tmp_path)
    assert float((ours - theirs).abs().max() / theirs.abs().max()) <= 1e-4
