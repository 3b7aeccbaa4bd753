"""Every op under ``torch.autocast``: the kernels keep their own precisions (float32 state and
accumulation), so an op called inside an autocast region gives exactly the outputs and gradients
it gives outside one. Without the guard, autocast turns the chunk paths' float32 matmuls into bf16
ones (mlstm drifted by ~1%) or mixes dtypes inside an op (gla raised)."""
from __future__ import annotations

import pytest
import torch

from recurlm.kernels.dplr_delta_rule import dplr_delta_rule, dplr_step, examples as dplr_t
from recurlm.kernels.gla import examples as gla_t, gla
from recurlm.kernels.linear_scan import examples as scan_t, linear_scan
from recurlm.kernels.local_attention import examples as la_t, local_attention
from recurlm.kernels.mlstm import examples as mlstm_t, mlstm
from recurlm.kernels.rwkv6 import examples as rwkv6_t, rwkv6
from recurlm.kernels.slstm import examples as slstm_t, slstm
from recurlm.kernels.titans_memory import examples as titans_t, titans_memory

from .harness import assert_close, outputs_and_grads

OPS = {  # name: (op, inputs with float32 leaves)
    "linear_scan": (linear_scan, lambda: scan_t.make_inputs(2, 37, 8, requires_grad=True)),
    "gla": (gla, lambda: gla_t.make_inputs(2, 37, 2, 8, requires_grad=True)),
    "rwkv6": (rwkv6, lambda: rwkv6_t.make_inputs(2, 37, 2, 8, requires_grad=True)),
    "dplr_delta_rule": (dplr_delta_rule, lambda: dplr_t.make_inputs(2, 37, 2, 8, 8, requires_grad=True)),
    "mlstm": (mlstm, lambda: mlstm_t.make_inputs(2, 37, 2, 8, requires_grad=True)),
    "slstm": (slstm, lambda: slstm_t.make_inputs(2, 37, 2, 8, requires_grad=True)),
    "titans_memory": (titans_memory, lambda: titans_t.make_inputs(2, 37, 2, 8, depth=2, requires_grad=True)),
    "local_attention": (local_attention, lambda: la_t.make_inputs(2, 37, 2, 1, 8, 5, requires_grad=True)),
}


def in_autocast(op, enabled: bool):
    """``op`` run inside a bf16 autocast region (or not); its backward runs outside, as PyTorch's
    AMP recipe does."""
    def run(**kwargs):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            return op(**kwargs)

    return run


@pytest.mark.parametrize("impl", ["chunk", "naive"])
@pytest.mark.parametrize("name", list(OPS))
def test_op_ignores_autocast(name, impl):
    op, make = OPS[name]
    inputs = make()
    expected = outputs_and_grads(in_autocast(op, False), inputs, impl=impl)
    got = outputs_and_grads(in_autocast(op, True), inputs, impl=impl)
    assert {k: x.dtype for k, x in got.all().items()} == {k: x.dtype for k, x in expected.all().items()}
    assert_close(got, expected, atol=0.0, rtol=0.0)


def test_dplr_decode_step_ignores_autocast():
    """``dplr_step`` (RWKV-7's decoding step) is public too: float32 state updates under autocast."""
    gen = torch.Generator().manual_seed(3)
    q, k, a, b = (torch.randn(2, 2, 8, generator=gen) for _ in range(4))
    v, gk = torch.randn(2, 2, 8, generator=gen), -torch.rand(2, 2, 8, generator=gen)
    state = torch.randn(2, 2, 8, 8, generator=gen)
    expected = dplr_step(q, k, v, a, b, gk, 0.5, state)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = dplr_step(q, k, v, a, b, gk, 0.5, state)
    for g, e in zip(got, expected):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, e, rtol=0, atol=0)
