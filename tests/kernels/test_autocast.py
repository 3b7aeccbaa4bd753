"""Every op under ``torch.autocast``: the kernels keep their own precisions (float32 state and
accumulation), so an op called inside an autocast region gives exactly the outputs and gradients
it gives outside one. Without the guard, autocast turns the chunk paths' float32 matmuls into bf16
ones (mlstm drifted by ~1%) or mixes dtypes inside an op (gla raised)."""
from __future__ import annotations

import pytest
import torch

from recurlm.kernels.dplr_delta_rule import dplr_delta_rule, dplr_step, testing as dplr_t
from recurlm.kernels.gla import gla, testing as gla_t
from recurlm.kernels.linear_scan import linear_scan, testing as scan_t
from recurlm.kernels.local_attention import local_attention, testing as la_t
from recurlm.kernels.mlstm import mlstm, testing as mlstm_t
from recurlm.kernels.rwkv6 import rwkv6, testing as rwkv6_t
from recurlm.kernels.slstm import slstm, testing as slstm_t
from recurlm.kernels.testing import grad_leaves
from recurlm.kernels.titans_memory import titans_memory, testing as titans_t

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


def output_and_grads(op, inputs: dict, impl: str, autocast: bool) -> list[torch.Tensor]:
    """Forward inside an autocast region (or not), backward outside, as PyTorch's AMP recipe does."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out, _ = op(**inputs, impl=impl)
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    return [out, *torch.autograd.grad(out, grad_leaves(inputs), cotangent)]


@pytest.mark.parametrize("impl", ["chunk", "naive"])
@pytest.mark.parametrize("name", list(OPS))
def test_op_ignores_autocast(name, impl):
    op, make = OPS[name]
    inputs = make()
    expected = output_and_grads(op, inputs, impl, autocast=False)
    got = output_and_grads(op, inputs, impl, autocast=True)
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype
        torch.testing.assert_close(g, e, rtol=0, atol=0)


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
