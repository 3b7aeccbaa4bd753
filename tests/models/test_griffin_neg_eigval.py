"""Griffin / Hawk ``allow_neg_eigval``: the RG-LRU transition a' = 2 a - 1 reaches -1, the model's
parallel, step, packed and state-passing forms agree, and the option is off by default."""
import pytest
import torch

from recurlm.models.griffin import signed_transition
from recurlm.models.registry import build_model
from ..helpers.model_checks import run_all


def tiny(family, **fields):
    torch.manual_seed(0)
    return build_model({"family": family, "size": "tiny", "vocab_size": 97, "kernel_impl": "chunk", **fields}).eval()


def test_signed_transition_is_2a_minus_1_and_finite_everywhere():
    a = torch.tensor([1e-9, 0.1, 0.4999999, 0.5, 0.75, 1 - 1e-7], dtype=torch.float64)
    log_abs, sign = signed_transition(a.log())
    expected = 2 * a - 1
    assert torch.isfinite(log_abs).all()
    torch.testing.assert_close(sign * log_abs.exp(), torch.where(expected.abs() < 1e-6, sign * 1e-6, expected))


def test_transition_reaches_minus_one():
    """a -> 0 (a very negative Λ): one step maps a state perturbation d to about -d."""
    lru = tiny("hawk", allow_neg_eigval=True).blocks[0].mixer.rg_lru
    with torch.no_grad():
        lru.a_logit.fill_(-40.0)
        u = torch.randn(1, 1, lru.a_logit.numel())
        h0 = torch.randn(1, lru.a_logit.numel())
        start = torch.zeros(1, 1, dtype=torch.bool)
        h, _ = lru(u, start, h0, False)
        moved, _ = lru(u, start, h0 + 1.0, False)
    torch.testing.assert_close(moved - h, -torch.ones_like(h), atol=1e-4, rtol=0)
    assert not tiny("hawk").config.allow_neg_eigval


@pytest.mark.parametrize("family, fields", [("hawk", {}), ("griffin", {"state_expansion": 2})])
def test_modes_agree_with_the_option(family, fields):
    model = tiny(family, allow_neg_eigval=True, **fields)
    with torch.no_grad():  # decays spread over (0, 1): both signs occur
        for block in model.blocks:
            if block.kind == "recurrent":
                block.mixer.rg_lru.a_logit.uniform_(-3.0, 3.0)
    run_all(model)  # float64: parallel == step, packed == separate, state passing, finite backward
