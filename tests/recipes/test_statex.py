"""StateX as published: which layers are expanded, reinitialisation vs inheritance, merging all
heads, the CLI, and (per family) whether inheritance preserves the old heads' dynamics."""
import json
import os

import pytest
import torch

from recurlm.models.expand_state import MIXER, expand_state, expandable_layers, select_layers
from recurlm.models.pretrained import INFO
from recurlm.models.registry import FAMILIES, build_model
from recurlm.train.convert import main as convert_main
from recurlm.train.trainer import Trainer, train


def tiny(family, **fields):
    torch.manual_seed(0)
    model = build_model({"family": family, "size": "tiny", "vocab_size": 97, **fields}).eval()
    with torch.no_grad():  # random weights everywhere: fresh inits zero some projections
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def state_numel(model):
    return [sum(t.numel() for k, t in (layer or {}).items() if t.is_floating_point())
            for layer in model.init_state(1).layers]


def test_every_k_counts_from_the_last_expandable_layer():
    model = tiny("hgrn2", n_layers=12)
    assert select_layers(model, "every:6") == [5, 11]
    assert select_layers(model, "every:4") == [3, 7, 11]
    assert select_layers(model, "all") == list(range(12))
    assert select_layers(model, "2,7") == [2, 7]
    griffin = tiny("griffin")  # blocks: recurrent, recurrent, attention
    assert expandable_layers(griffin) == [0, 1] and select_layers(griffin, "every:6") == [1]
    with pytest.raises(ValueError, match="cannot be expanded"):
        select_layers(griffin, "2")
    assert select_layers(tiny("xlstm"), "every:6") == [0]  # the sLSTM block (1) has no growable state


@pytest.mark.parametrize("method", ["reinit", "inherit"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every6_expands_the_last_layer_reinit_fresh_inherit_kept(family, method):
    model = tiny(family)
    big = expand_state(model, 2, seed=3, method=method)  # layers every:6 (the default)
    (layer,) = select_layers(model, "every:6")
    before, after = state_numel(model), state_numel(big)
    assert after[layer] > before[layer]
    assert [a for i, a in enumerate(after) if i != layer] == [b for i, b in enumerate(before) if i != layer]
    torch.manual_seed(3)
    fresh = build_model(big.config).state_dict()
    old = model.state_dict()
    prefix = f"blocks.{layer}.{MIXER[family]}."
    for name, tensor in big.state_dict().items():
        if (name.startswith(prefix) and method == "reinit") or name not in old:  # fresh (or a new parameter)
            torch.testing.assert_close(tensor, fresh[name], rtol=0, atol=0, msg=name)
        elif not name.startswith(prefix) or old[name].shape == tensor.shape:
            torch.testing.assert_close(tensor, old[name], rtol=0, atol=0, msg=name)
    ids = torch.randint(0, 97, (2, 12))
    logits, _ = big(ids)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("family", ["hgrn2", "rwkv6", "rwkv7", "xlstm"])
def test_merge_all_heads_into_one(family):
    model = tiny(family)
    big = expand_state(model, "all", layers="all", method="reinit")
    layer = expandable_layers(model)[0]
    key = "C" if family == "xlstm" else ("S" if family == "hgrn2" else "wkv")
    small_state, big_state = model.init_state(1).layers[layer][key], big.init_state(1).layers[layer][key]
    heads = small_state.shape[1]
    assert big_state.shape[1] == 1 and big_state.numel() == heads * small_state.numel()


def diagonal_block_error(family, **fields):
    """Relative difference between old head a's layer-0 state and block (a, a) of its merged head
    after inheritance (layer 0 sees the same input before and after)."""
    model = tiny(family, **fields)
    big = expand_state(model, 2, method="inherit", layers="all")
    key = {"hgrn2": "S", "rwkv6": "wkv", "rwkv7": "wkv", "xlstm": "C"}.get(family, "mem_w0")
    ids = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        small = model(ids, return_state=True)[1].layers[0][key]  # [B, H, K, V]
        merged = big(ids, return_state=True)[1].layers[0][key]  # [B, H / 2, 2K, 2V]
    k, v = small.shape[-2:]
    blocks = torch.stack([merged[:, h, a * k:(a + 1) * k, a * v:(a + 1) * v]
                          for h in range(merged.shape[1]) for a in range(2)], 1)
    return float((blocks - small).norm() / small.norm())


@pytest.mark.parametrize("family, fields, preserved", [
    ("hgrn2", {}, True), ("rwkv6", {}, True),
    ("rwkv7", {}, False),  # kk is L2-normalised over the merged head
    ("xlstm", {}, False),  # per-head gates averaged
    ("titans_mac", {"memory_depth": 1}, False),  # q, k L2-normalised over the merged head, gates averaged
])
def test_inheritance_preserves_old_heads_exactly_only_where_the_docstring_says(family, fields, preserved):
    error = diagonal_block_error(family, **fields)
    if preserved:
        assert error < 1e-5, error
    else:
        assert error > 0.05, error


def test_cli_reinit_every6_and_inherit(tiny_job, tmp_path, capsys):
    base = train(tiny_job("model=rwkv7", "train.steps=4", run_dir=str(tmp_path / "base")))
    for method in ("reinit", "inherit"):
        out = str(tmp_path / method)
        assert convert_main(["expand-state", base.run_dir, "--method", method, "--layers", "every:6",
                             "--out", out, "--seq-len", "32"]) == 0
        change = json.load(open(os.path.join(out, "expand_state.json")))
        info = json.load(open(os.path.join(out, INFO)))
        assert info["method"] == method and info["state_factor"] == "all"
        # 2 layers, the last expanded: its 4 heads of 16 merged into one of 64 (wkv 4x); the other layer kept
        assert change["state_bytes_after"] > 2 * change["state_bytes_before"]
        # the paper's schedule: a fraction of the base model's training tokens (here 0.5 x 4 steps)
        post = Trainer(tiny_job("recipe=state_expansion", f"recipe.init_from={out}", "recipe.post_train_ratio=0.5",
                                run_dir=str(tmp_path / f"post-{method}")))
        assert post.model_cfg.layer_overrides == {"1": {"head_dim": 64}}
        assert post.loop.steps == 2 and post.run().step == 2
    assert convert_main(["expand-state", base.run_dir, "--merge-heads", "all", "--factor", "2",
                         "--out", str(tmp_path / "bad")]) == 2
    assert "disagree" in capsys.readouterr().err
