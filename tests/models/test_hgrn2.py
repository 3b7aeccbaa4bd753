import pytest
import torch

from recurlm.models import build_model
from recurlm.models.hgrn2 import HGRN2Config
from ..helpers import model_checks


@pytest.mark.parametrize("output_gate", [True, False])
def test_hgrn2_modes_agree(output_gate):
    torch.manual_seed(0)
    model = build_model(HGRN2Config(size="tiny", vocab_size=97, output_gate=output_gate))
    model_checks.run_all(model)


def test_hgrn2_lower_bounds_increase_with_depth():
    model = build_model(HGRN2Config(size="tiny", vocab_size=11, n_layers=4))
    with torch.no_grad():
        model.lower_bounds.normal_()
    bounds = [e.get("lower_bound") for e in model.block_extras()]
    assert bounds[0] is None
    means = [b.mean().item() for b in bounds[1:]]
    assert means == sorted(means) and all(0 <= m < 1 for m in means)
