"""Models under ``torch.autocast``: linear layers and the output head in bf16, the recurrences in
their own float32 precision (``recurlm.kernels.dispatch.autocast_off``)."""
from __future__ import annotations

import pytest
import torch

from recurlm.models import build_model
from recurlm.models.registry import FAMILIES


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_model_trains_under_autocast(family):
    """A tiny model's loss and gradients under CPU bf16 autocast stay within bf16 rounding of float32."""
    torch.manual_seed(0)
    model = build_model({"family": family, "size": "tiny", "vocab_size": 97})
    ids = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(1))

    def loss_and_grad_norm(autocast: bool) -> tuple[float, float]:
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):  # the forward and the loss
            loss = model(ids, labels=ids)[0]
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).norm().item()

    expected = loss_and_grad_norm(autocast=False)
    got = loss_and_grad_norm(autocast=True)
    assert got == pytest.approx(expected, rel=3e-2)
    assert got[0] != expected[0]  # and autocast did act: the linear layers and the head ran in bf16
