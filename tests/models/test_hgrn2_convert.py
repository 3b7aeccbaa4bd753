"""HGRN2 against flash-linear-attention's ``HGRN2ForCausalLM`` (its Triton ops swapped for torch
references by ``tests/helpers/fla_cpu.py``), through ``recurlm.models.convert.fla_hgrn2``."""
import warnings

import pytest
import torch

from ..helpers.fla_cpu import fla_torch_references
from recurlm.models.convert.fla_hgrn2 import FLA_GATE_NORM_EPS, config_from_fla, from_fla, to_fla_state_dict

VOCAB = 97


@pytest.fixture
def fla_on_cpu():
    """fla's HGRN2 with its Triton ops (recurrence, fused norms, swish, SwiGLU) swapped for torch."""
    warnings.filterwarnings("ignore")
    import fla.models

    with fla_torch_references("hgrn2"):
        yield fla.models


def _randomised(fla_model, seed=1):
    """Noise on every parameter, unit-scale lower bounds (fla initialises them to zeros and the
    norms to ones, which would hide a wrong mapping of either)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in fla_model.named_parameters():
            scale = 1.0 if name.endswith("lower_bounds") else 0.1
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return fla_model


@pytest.mark.parametrize("options", [
    dict(),  # fla's defaults: fused norms and SwiGLU
    dict(fuse_norm=False, fuse_swiglu=False, tie_word_embeddings=True, elementwise_affine=False),
    dict(use_lower_bound=False, num_heads=8, expand_ratio=None, intermediate_size=80),
], ids=["fused", "unfused-tied-no-gnorm-weight", "no-lower-bound-heads"])
def test_logits_equal_fla(fla_on_cpu, options):
    torch.manual_seed(0)
    kwargs = dict(hidden_size=64, num_hidden_layers=3, expand_ratio=16, vocab_size=VOCAB, hidden_ratio=2,
                  norm_eps=1e-6, fuse_cross_entropy=False)
    config = fla_on_cpu.HGRN2Config(**{**kwargs, **options})
    fla_model = _randomised(fla_on_cpu.HGRN2ForCausalLM(config).eval())
    model = from_fla(fla_model).eval()
    cfg = model.config
    assert (cfg.expand_ratio, cfg.output_gate, cfg.gate_norm_eps) == (config.expand_ratio, False, FLA_GATE_NORM_EPS)
    assert model.blocks[0].mixer.n_heads == config.num_heads >= 4

    ids = torch.randint(0, VOCAB, (2, 21), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs = fla_model(input_ids=ids, use_cache=False).logits
        ours, _ = model(ids)
    err = (ours - theirs).abs().max() / theirs.abs().max()
    assert err < 1e-4, f"relative max error {err:.2e}"

    # every fla tensor is mapped (a missing g_norm weight comes back as ones)
    back, fla_state_dict = to_fla_state_dict(model), fla_model.state_dict()
    expected_keys = set(fla_state_dict) | ({f"model.layers.{i}.attn.g_norm.weight" for i in range(3)}
                                           if options.get("elementwise_affine") is False else set())
    assert set(back) == expected_keys
    assert all(torch.equal(back[k], v) for k, v in fla_state_dict.items())


def test_unsupported_fla_options_are_refused(fla_on_cpu):
    for options in (dict(use_short_conv=True), dict(hidden_act="powlu")):
        config = fla_on_cpu.HGRN2Config(hidden_size=64, num_hidden_layers=1, expand_ratio=16, **options)
        with pytest.raises(ValueError, match="no equivalent"):
            config_from_fla(config, mlp_hidden=128)
