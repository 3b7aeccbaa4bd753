"""RWKV-6 / RWKV-7: the model checks every family passes, optimizer groups, and equality with the
reference implementations (flash-linear-attention's models with their Triton ops swapped for fla's
torch references by ``tests/helpers/fla_cpu.py``; BlinkDL's ``rwkv`` package on an exported official checkpoint)."""
import importlib
import sys
import warnings

import pytest
import torch

from recurlm.models import build_model
from ..helpers import model_checks
from ..helpers.fla_cpu import fla_torch_references
from recurlm.models.rwkv6 import RWKV6Config
from recurlm.models.rwkv7 import RWKV7Config

VOCAB = 97


def perturbed(model, scale=0.1, seed=0):
    """The model with noise on every parameter: the official init zeroes the output projections,
    which would make the token mixers invisible to the checks."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return model


def assert_logits_close(ours, theirs, rtol=1e-4):
    err = (ours - theirs).abs().max() / theirs.abs().max()
    assert err < rtol, f"relative max error {err:.2e}"


@pytest.mark.parametrize("config", [RWKV6Config, RWKV7Config], ids=["rwkv6", "rwkv7"])
def test_modes_agree(config):
    torch.manual_seed(0)
    model_checks.run_all(perturbed(build_model(config(size="tiny", vocab_size=VOCAB))))


@pytest.mark.parametrize("config", [RWKV6Config, RWKV7Config], ids=["rwkv6", "rwkv7"])
def test_bfloat16_close_to_float32(config):
    torch.manual_seed(0)
    model = perturbed(build_model(config(size="tiny", vocab_size=VOCAB)))
    ids = torch.randint(0, VOCAB, (2, 40))
    with torch.no_grad():
        reference = model(ids)[0]
    model = model.to(torch.bfloat16)
    logits, state = model(ids, return_state=True)
    assert logits.dtype == torch.bfloat16 and state.layers[0]["wkv"].dtype == torch.float32
    assert_logits_close(logits.float(), reference, rtol=5e-2)  # bf16 matmuls, 2 layers
    loss, _ = model(ids, labels=ids)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_optimizer_groups_follow_official_training():
    groups = {}
    for config in (RWKV6Config, RWKV7Config):
        model = build_model(config(size="tiny", vocab_size=VOCAB))
        by_param = {id(p): (g["weight_decay"], g["lr_scale"]) for g in model.param_groups(0.1) for p in g["params"]}
        groups.update({f"{config.__name__}.{n}": by_param[id(p)] for n, p in model.named_parameters()})
    assert groups["RWKV7Config.blocks.1.att.w0"] == (0.0, 2.0)
    assert groups["RWKV6Config.blocks.1.att.time_decay"] == (0.0, 2.0)
    for name in ("RWKV7Config.blocks.1.att.w1", "RWKV7Config.blocks.1.att.g2", "RWKV7Config.blocks.1.att.r_k",
                 "RWKV6Config.blocks.1.att.time_maa_w2", "RWKV6Config.blocks.1.att.time_faaaa",
                 "RWKV7Config.blocks.1.att.k_k", "RWKV7Config.blocks.0.ln0.weight"):
        assert groups[name] == (0.0, 1.0), name
    for name in ("RWKV7Config.blocks.1.att.key.weight", "RWKV7Config.blocks.1.ffn.value.weight",
                 "RWKV6Config.blocks.0.att.gate.weight", "RWKV7Config.head.weight"):
        assert groups[name] == (0.1, 1.0), name


def test_rwkv7_value_residual_under_activation_checkpointing():
    torch.manual_seed(0)
    model = perturbed(build_model(RWKV7Config(size="tiny", vocab_size=VOCAB))).double()
    ids = torch.randint(0, VOCAB, (2, 6))
    grads = []
    for blocks in (frozenset(), frozenset({0, 1})):
        model.zero_grad()
        model.checkpoint_blocks = blocks
        model(ids, labels=ids)[0].backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # with block 0's time-mix output silenced, its value projection still gets gradient: through
    # v_first, the value residual of the later layers
    with torch.no_grad():
        model.blocks[0].att.output.weight.zero_()
    model.checkpoint_blocks = frozenset()
    model.zero_grad()
    model(ids, labels=ids)[0].backward()
    assert model.blocks[0].att.value.weight.grad.abs().max() > 0


# -- flash-linear-attention references ------------------------------------------------------------

@pytest.fixture
def fla_on_cpu():
    """fla's RWKV6/7 models with their Triton ops swapped for fla's torch references."""
    warnings.filterwarnings("ignore")
    import fla.models

    with fla_torch_references("rwkv6", "rwkv7"):
        yield fla.models


def _fla_logits(fla_model, ids):
    with torch.no_grad():
        return fla_model(input_ids=ids, use_cache=False).logits


def test_rwkv7_equals_fla(fla_on_cpu):
    from recurlm.models.convert.fla_rwkv import from_fla_rwkv7

    torch.manual_seed(0)
    config = fla_on_cpu.RWKV7Config(hidden_size=64, num_hidden_layers=3, head_dim=16, vocab_size=VOCAB,
                                    decay_low_rank_dim=8, a_low_rank_dim=8, v_low_rank_dim=8,
                                    gate_low_rank_dim=16, fuse_norm=False)
    fla_model = perturbed(fla_on_cpu.RWKV7ForCausalLM(config).eval(), seed=1)
    ids = torch.randint(0, VOCAB, (2, 11))
    cfg, sd = from_fla_rwkv7(config, fla_model.state_dict())
    model = build_model(cfg).eval()
    model.load_state_dict(sd)
    with torch.no_grad():
        assert_logits_close(model(ids)[0], _fla_logits(fla_model, ids))


def test_rwkv6_equals_fla(fla_on_cpu):
    from recurlm.models.convert.fla_rwkv import from_fla_rwkv6

    torch.manual_seed(0)
    config = fla_on_cpu.RWKV6Config(hidden_size=64, num_hidden_layers=2, num_heads=4, expand_k=1, expand_v=1,
                                    vocab_size=VOCAB, proj_low_rank_dim=8, gate_low_rank_dim=16,
                                    intermediate_size=224, fuse_norm=False)
    fla_model = perturbed(fla_on_cpu.RWKV6ForCausalLM(config).eval(), seed=1)
    with torch.no_grad():  # realistic decays: exp(w) in (0, 1) well away from 0
        for layer in fla_model.model.layers:
            layer.attn.w_proj.linear.lora[2].bias.uniform_(-3, 0)
    ids = torch.randint(0, VOCAB, (2, 11))
    cfg, sd = from_fla_rwkv6(config, fla_model.state_dict())
    model = build_model(cfg).eval()
    model.load_state_dict(sd)
    with torch.no_grad():
        assert_logits_close(model(ids)[0], _fla_logits(fla_model, ids))


# -- BlinkDL's official RWKV-6 / RWKV-7 ------------------------------------------------------------

def official_model_class(monkeypatch, family):
    """The ``rwkv`` package's model class for ``family`` (it reads RWKV_V7_ON when imported)."""
    if family == "rwkv7":
        monkeypatch.setenv("RWKV_V7_ON", "1")
    else:
        monkeypatch.delenv("RWKV_V7_ON", raising=False)
    monkeypatch.setenv("RWKV_CUDA_ON", "0")
    module = sys.modules.get("rwkv.model")
    module = importlib.reload(module) if module is not None else importlib.import_module("rwkv.model")
    return module.RWKV


@pytest.mark.parametrize("config", [RWKV6Config, RWKV7Config], ids=["rwkv6", "rwkv7"])
def test_equals_official_package(config, monkeypatch, tmp_path):
    from recurlm.models.convert.rwkv_official import from_official, to_official

    torch.manual_seed(0)
    model = perturbed(build_model(config(size="tiny", vocab_size=VOCAB, n_layers=3))).eval()
    official = to_official(model)
    torch.save(official, tmp_path / "model.pth")
    reference = official_model_class(monkeypatch, model.config.family)(str(tmp_path / "model"), "cpu fp32")
    ids = torch.randint(0, VOCAB, (1, 12))
    # two calls: the package's state carries the document on
    theirs, state = reference.forward(ids[0, :7].tolist(), None, full_output=True)
    theirs_rest, _ = reference.forward(ids[0, 7:].tolist(), state, full_output=True)
    with torch.no_grad():
        ours = model(ids)[0][0]
    assert_logits_close(ours, torch.cat([theirs, theirs_rest]))

    # official → recurlm gives the same model back
    cfg, sd = from_official(official)
    assert cfg.family == model.config.family
    imported = build_model(cfg).eval()
    imported.load_state_dict(sd)
    with torch.no_grad():
        torch.testing.assert_close(imported(ids)[0], model(ids)[0], rtol=0, atol=0)
    assert to_official(imported).keys() == official.keys()
