"""State expansion: the transforms (state grows, parameters don't, what is preserved), the
``recurlm-convert expand-state`` command, continued training from its output, and the summary."""
import json
import os

import pytest
import torch

from recurlm.models.expand_state import expand_state, logit_change
from recurlm.models.registry import build_model
from recurlm.models.summary import summarize
from recurlm.train.convert import main as convert_main
from recurlm.train.trainer import Trainer, train


def tiny(family, **fields):
    torch.manual_seed(0)
    return build_model({"family": family, "size": "tiny", "vocab_size": 97, **fields}).eval()


def inherit(model, factor):
    """The pre-StateX transform: every expandable layer, trained weights kept (the paper's ablation)."""
    return expand_state(model, factor, method="inherit", layers="all")


def perturbed(model):
    """Random weights everywhere (fresh inits zero some output projections, hiding any change)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.parametrize("family", ["hgrn2", "rwkv6", "rwkv7", "xlstm"])
def test_head_merge_doubles_the_state_and_keeps_the_parameters(family):
    model = perturbed(tiny(family))
    big = inherit(model, 2)
    assert big.state_bytes() > 1.8 * model.state_bytes()
    # no new parameters (xLSTM loses the merged heads' gate rows: ~1% of a tiny model)
    assert 0.98 * model.num_params() <= big.num_params() <= model.num_params()
    ids = torch.randint(0, 97, (2, 24))
    change = logit_change(model, big, ids)
    assert 0 < change["kl"] < 1 and change["max_abs_logit_diff"] > 0  # moved, but not destroyed


def test_xlstm_mlstm_state_doubles_and_gates_are_averaged():
    model = perturbed(tiny("xlstm"))
    big = inherit(model, 2)
    small_state, big_state = model.init_state(1), big.init_state(1)
    layer = next(i for i, s in enumerate(small_state.layers) if "C" in s)
    assert big_state.layers[layer]["C"].numel() == 2 * small_state.layers[layer]["C"].numel()
    name = next(n for n, _ in model.named_parameters() if n.endswith("igate.weight"))
    old, new = dict(model.named_parameters())[name], dict(big.named_parameters())[name]
    torch.testing.assert_close(new, old.view(new.shape[0], 2, -1).mean(1))


def test_hgrn2_merged_heads_keep_the_old_heads_as_diagonal_blocks():
    """Per-key decays and rank-1 writes act blockwise: block (a, a) of a merged head's state is
    exactly old head a's state; the off-diagonal blocks are the new cross-head memory."""
    model = perturbed(tiny("hgrn2"))
    big = inherit(model, 2)
    ids = torch.randint(0, 97, (2, 24))
    with torch.no_grad():
        _, small_state = model(ids, return_state=True)
        _, big_state = big(ids, return_state=True)
    # only layer 0 sees identical inputs (later layers read outputs that changed)
    s, b = small_state.layers[0]["S"], big_state.layers[0]["S"]  # [B, H, E, E], [B, H/2, 2E, 2E]
    e = s.shape[-1]
    for h in range(b.shape[1]):
        for a in range(2):
            torch.testing.assert_close(b[:, h, a * e:(a + 1) * e, a * e:(a + 1) * e], s[:, 2 * h + a])
    assert b[:, :, :e, e:].abs().max() > 0


@pytest.mark.parametrize("family", ["griffin", "hawk"])
def test_rglru_sub_states_preserve_the_function_exactly_within_1pct_parameters(family):
    model = perturbed(tiny(family))
    big = inherit(model, 2)
    assert big.config.state_expansion == 2 and big.config.lru_width == model.config.lru_width
    h_small = [s["h"].numel() for s in model.init_state(1).layers if "h" in s]
    h_big = [s["h"].numel() for s in big.init_state(1).layers if "h" in s]
    assert h_big == [2 * n for n in h_small]
    # (2 f - 1) R new parameters per recurrent layer: well under 1% even of a tiny model
    assert big.num_params() - model.num_params() == 3 * model.config.lru_width * len(h_small)
    assert big.num_params() < 1.005 * model.num_params()
    ids = torch.randint(0, 97, (2, 24))
    assert logit_change(model, big, ids)["max_abs_logit_diff"] < 1e-6
    # the new sub-states are live: a gradient reaches their mixing weights
    big.train()
    loss, _ = big(ids, labels=ids)
    loss.backward()
    lru = big.blocks[0].mixer.rg_lru
    assert lru.state_mix.grad[:, 1].abs().min() > 0


def test_rglru_sub_states_expand_again_after_training():
    """f = 2 -> 4 with trained mixing weights and decays: the old sub-states keep their decays and
    weights, the new ones read out with weight 0, so the function is still unchanged."""
    model = perturbed(inherit(perturbed(tiny("hawk")), 2))
    big = inherit(model, 2)
    assert big.config.state_expansion == 4
    old, new = model.blocks[0].mixer.rg_lru, big.blocks[0].mixer.rg_lru
    torch.testing.assert_close(new.extra_a_logit[:, :1], old.extra_a_logit, rtol=0, atol=0)
    torch.testing.assert_close(new.state_mix[:, :2], old.state_mix, rtol=0, atol=0)
    assert not new.state_mix[:, 2:].any()
    assert logit_change(model, big, torch.randint(0, 97, (2, 24)))["max_abs_logit_diff"] < 1e-5


def memory_state_numel(model):
    """Entries of the memory weights and momentum (the state that grows; buffers and convs do not)."""
    return sum(t.numel() for layer in model.init_state(1).layers for k, t in layer.items()
               if k.startswith(("mem_w", "mem_s")))


@pytest.mark.parametrize("family", ["titans_mac", "titans_mag", "titans_mal"])
def test_titans_deep_memory_gets_new_hidden_units_with_zero_read_out(family):
    model = perturbed(tiny(family))
    big = inherit(model, 2)
    assert big.config.memory_expansion == 2 * model.config.memory_expansion
    assert memory_state_numel(big) == 2 * memory_state_numel(model)
    (w1, w2), (w1_big, w2_big) = model.blocks[0].memory.init_weights, big.blocks[0].memory.init_weights
    e = w1.shape[-1]  # [H, Dh, E] and [H, E, Dh]
    torch.testing.assert_close(w1_big[..., :e], w1, rtol=0, atol=0)
    torch.testing.assert_close(w2_big[:, :e], w2, rtol=0, atol=0)
    assert not w2_big[:, e:].any() and w1_big[..., e:].abs().min() > 0  # live units, read out by 0
    # the initial memory is the same function; the inner descent then writes into the new units
    change = logit_change(model, big, torch.randint(0, 97, (2, 24)))
    assert 0 < change["max_abs_logit_diff"] < 1 and change["kl"] < 1e-2


def test_titans_linear_memory_merges_heads_block_diagonally():
    model = perturbed(tiny("titans_mac", memory_depth=1))
    big = inherit(model, 2)
    assert big.config.memory_heads == model.config.memory_heads // 2
    assert memory_state_numel(big) == 2 * memory_state_numel(model)
    old, new = model.blocks[0].memory, big.blocks[0].memory
    (w,), (w_big,) = old.init_weights, new.init_weights  # [H, Dh, Dh], [H / 2, 2 Dh, 2 Dh]
    dh = w.shape[-1]
    torch.testing.assert_close(w_big[0, :dh, :dh], w[0], rtol=0, atol=0)
    torch.testing.assert_close(w_big[0, dh:, dh:], w[1], rtol=0, atol=0)
    assert not w_big[0, :dh, dh:].any() and not w_big[0, dh:, :dh].any()
    h = old.n_heads  # gate rows [theta | eta | alpha] of the merged heads are averaged
    torch.testing.assert_close(new.gate_proj.weight, old.gate_proj.weight.view(3 * h // 2, 2, -1).mean(1))
    change = logit_change(model, big, torch.randint(0, 97, (2, 24)))
    assert 0 < change["kl"] < 1e-2


def test_summary_reports_the_state_knob():
    base = summarize({"family": "hgrn2", "size": "tiny"}, 256)
    wide = summarize({"family": "hgrn2", "size": "tiny", "expand_ratio": 32}, 256)
    assert wide["state_bytes"] == 2 * base["state_bytes"] == 2 * 2 * 64 * 16 * 4
    assert wide["params"] == base["params"] and wide["non_embedding_params"] < wide["params"]
    big = summarize({"family": "griffin", "size": "14b"}, 4096)  # meta device: no memory
    assert 10e9 < big["params"] < 20e9 and big["layers"][0]["shapes"]["h"] == [8192]
    sub = summarize({"family": "griffin", "size": "14b", "state_expansion": 4}, 4096)
    assert sub["layers"][0]["shapes"]["h"] == [4 * 8192] and sub["params"] < 1.001 * big["params"]


def test_convert_expand_state_then_continue_training(tiny_job, tmp_path, capsys):
    base = train(tiny_job("train.steps=3", run_dir=str(tmp_path / "base")))
    out = str(tmp_path / "x2")
    assert convert_main(["expand-state", base.run_dir, "--factor", "2", "--out", out, "--seq-len", "32",
                         "--method", "inherit", "--layers", "all"]) == 0
    printed = capsys.readouterr().out
    assert "logit change" in printed and "KL" in printed
    change = json.load(open(os.path.join(out, "expand_state.json")))
    assert change["state_bytes_after"] == 2 * change["state_bytes_before"]
    assert change["params_after"] == change["params_before"] and change["kl"] > 0

    post = Trainer(tiny_job("recipe=state_expansion", f"recipe.init_from={out}", "train.steps=2", "recipe.post_train_ratio=0",
                            run_dir=str(tmp_path / "post")))
    assert post.model_cfg.expand_ratio == 2 * base_expand_ratio(base.run_dir)
    assert post.model.state_bytes() == change["state_bytes_after"]
    from safetensors.torch import load_file

    weights = load_file(os.path.join(out, "model.safetensors"))
    for name, p in post.model.named_parameters():
        torch.testing.assert_close(p.detach(), weights[name], rtol=0, atol=0)
    assert post.run().step == 2


def test_convert_expand_state_griffin_then_continue_training(tiny_job, tmp_path, capsys):
    base = train(tiny_job("model=griffin", "train.steps=2", run_dir=str(tmp_path / "base")))
    out = str(tmp_path / "x2")
    assert convert_main(["expand-state", base.run_dir, "--factor", "2", "--out", out, "--seq-len", "32",
                         "--method", "inherit", "--layers", "all"]) == 0
    change = json.load(open(os.path.join(out, "expand_state.json")))
    assert change["max_abs_logit_diff"] < 1e-5 and change["params_after"] < 1.01 * change["params_before"]
    post = Trainer(tiny_job("recipe=state_expansion", f"recipe.init_from={out}", "train.steps=1", "recipe.post_train_ratio=0",
                            run_dir=str(tmp_path / "post")))
    assert post.model_cfg.state_expansion == 2 and post.model.state_bytes() == change["state_bytes_after"]
    assert post.run().step == 1


def base_expand_ratio(run_dir):
    from recurlm.configs import load_yaml

    return load_yaml(os.path.join(run_dir, "config.yaml")).model.expand_ratio


def test_expand_state_refuses_an_impossible_factor(tiny_job, tmp_path, capsys):
    base = train(tiny_job("train.steps=1", run_dir=str(tmp_path / "base")))
    assert convert_main(["expand-state", base.run_dir, "--factor", "3", "--out", str(tmp_path / "x3")]) == 2
    assert "not a multiple" in capsys.readouterr().err
