"""Bad input to ``recurlm-convert import`` / ``export-hf``: the error names the file and what is wrong
with it, and nothing is left in (or next to) ``--out``."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from recurlm.models import build_model
from recurlm.models.pretrained import save_pretrained
from recurlm.train.convert import main as convert


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A transformers RecurrentGemma directory (one safetensors file)."""
    import transformers

    config = transformers.RecurrentGemmaConfig(num_hidden_layers=2, vocab_size=53, hidden_size=24, intermediate_size=40,
                                               num_attention_heads=2, num_key_value_heads=1, lru_width=24,
                                               attention_window_size=4, block_types=["recurrent", "attention"])
    path = tmp_path_factory.mktemp("source") / "gemma"
    transformers.RecurrentGemmaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture
def source(hf_dir, tmp_path):
    path = tmp_path / "source"
    shutil.copytree(hf_dir, path)
    return path


def rewrite_weights(path, change):
    weights = load_file(path / "model.safetensors")
    change(weights)
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})


def fails(argv, capsys, *expected):
    """Runs the command, checks it failed with a message holding every ``expected`` piece and that
    ``--out`` and any staging directory next to it are absent."""
    out = argv[argv.index("--out") + 1]
    assert convert(argv) == 2
    err = capsys.readouterr().err
    for piece in expected:
        assert piece in err, f"{piece!r} not in {err!r}"
    out = Path(out)
    assert not out.exists()
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.partial-")], "staging left"


def test_unknown_format_name(source, tmp_path):
    with pytest.raises(SystemExit):  # argparse lists the choices
        convert(["import", str(source), "--out", str(tmp_path / "out"), "--format", "gguf"])
    from recurlm.models.convert.formats import get_format
    from recurlm.models.convert.io import ConversionError

    with pytest.raises(ConversionError, match="unknown format 'gguf'"):
        get_format("gguf")


def test_unknown_model_type(source, tmp_path, capsys):
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "model_type": "mamba2"}))
    fails(["import", str(source), "--out", str(tmp_path / "out")], capsys,
          str(source / "config.json"), "model_type 'mamba2' is not a format recurlm reads")


def test_missing_config(source, tmp_path, capsys):
    (source / "config.json").unlink()
    fails(["import", str(source), "--out", str(tmp_path / "out")], capsys, str(source), "cannot tell the format",
          "no config.json")
    fails(["import", str(source), "--out", str(tmp_path / "out"), "--format", "hf-recurrentgemma"], capsys,
          str(source / "config.json"), "missing")


def test_unsupported_config(source, tmp_path, capsys):
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "hidden_activation": "relu"}))
    fails(["import", str(source), "--out", str(tmp_path / "out")], capsys, str(source / "config.json"), "tanh GeLU")


def test_shape_that_does_not_match_the_config(source, tmp_path, capsys):
    rewrite_weights(source, lambda w: w.update({"model.final_norm.weight": torch.zeros(23)}))
    fails(["import", str(source), "--out", str(tmp_path / "out")], capsys,
          "model.final_norm.weight (23,)", str(source / "model.safetensors"), "the config implies (24,)")


def test_missing_and_unexpected_tensors_are_listed(source, tmp_path, capsys):
    def change(weights):
        del weights["model.layers.0.temporal_block.linear_x.bias"]
        weights["model.layers.0.extra.weight"] = torch.zeros(2)

    rewrite_weights(source, change)
    fails(["import", str(source), "--out", str(tmp_path / "out")], capsys, str(source),
          "missing tensors ['model.layers.0.temporal_block.linear_x.bias']",
          "unexpected tensors ['model.layers.0.extra.weight']")


def test_bad_dtype(source, tmp_path, capsys):
    rewrite_weights(source, lambda w: w.update({"model.final_norm.weight": w["model.final_norm.weight"].double()}))
    fails(["import", str(source), "--out", str(tmp_path / "out")], capsys,
          str(source / "model.safetensors"), "'model.final_norm.weight' has dtype torch.float64",
          "float32, bfloat16, float16")


def test_bfloat16_source_is_accepted(source, tmp_path):
    rewrite_weights(source, lambda w: w.update({k: v.bfloat16() for k, v in w.items()}))
    assert convert(["import", str(source), "--out", str(tmp_path / "out")]) == 0
    assert all(t.dtype == torch.float32 for t in load_file(tmp_path / "out" / "model.safetensors").values())


def test_output_must_be_new(source, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert convert(["import", str(source), "--out", str(tmp_path / "out")]) == 2
    assert "output exists and is not an empty directory" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_export_of_a_family_without_a_shared_format(tmp_path, capsys):
    from recurlm.models.titans import TitansMACConfig

    model = build_model(TitansMACConfig(size="tiny", vocab_size=53))
    save_pretrained(str(tmp_path / "titans"), model.config, model.state_dict())
    fails(["export-hf", str(tmp_path / "titans"), "--out", str(tmp_path / "out")], capsys,
          "'titans_mac' has no format shared with another project")
    fails(["export-hf", str(tmp_path / "titans"), "--out", str(tmp_path / "out"), "--format", "fla-rwkv7"], capsys,
          str(tmp_path / "titans" / "config.json"), "cannot be written as fla-rwkv7")


def test_export_of_weights_the_target_has_no_place_for(tmp_path, capsys):
    from recurlm.models.griffin import GriffinConfig

    model = build_model(GriffinConfig(size="tiny", vocab_size=53, state_expansion=2))
    save_pretrained(str(tmp_path / "expanded"), model.config, model.state_dict())
    fails(["export-hf", str(tmp_path / "expanded"), "--out", str(tmp_path / "out")], capsys, "state_expansion == 1")


def test_export_of_a_group_norm_epsilon_fla_cannot_express(tmp_path, capsys):
    from recurlm.models.rwkv7 import RWKV7Config

    model = build_model(RWKV7Config(size="tiny", vocab_size=53, head_dim=32, norm_eps=1e-5, group_norm_eps=64e-5))
    save_pretrained(str(tmp_path / "rwkv7"), model.config, model.state_dict())
    fails(["export-hf", str(tmp_path / "rwkv7"), "--out", str(tmp_path / "out")], capsys,
          str(tmp_path / "rwkv7" / "config.json"), "head_dim x norm_eps = 0.00032", "group_norm_eps=0.00064")
