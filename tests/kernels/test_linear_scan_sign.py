"""linear_scan with transition signs (transitions in (-1, 1)): chunk and Triton (parity transform
in log space) against the naive step-by-step reference, with resets, initial states, cu_seqlens
and gradients."""
from __future__ import annotations

import pytest
import torch

from recurlm.kernels.linear_scan import linear_scan
from recurlm.kernels.linear_scan.examples import make_inputs

from .harness import assert_close, outputs_and_grads


def with_sign(inputs: dict, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    x = inputs["x"]
    sign = torch.where(torch.rand(x.shape, generator=gen) < 0.5, -1.0, 1.0).to(x.dtype)
    return {**inputs, "sign": sign}


@pytest.mark.parametrize("seq_len,reset_prob,initial_state", [(1, 0.0, True), (37, 0.0, False), (70, 0.2, True)])
def test_chunk_matches_naive_with_negative_transitions_float64(seq_len, reset_prob, initial_state):
    inputs = with_sign(make_inputs(2, seq_len, 5, torch.float64, seed=seq_len, reset_prob=reset_prob,
                                   initial_state=initial_state, requires_grad=True), seq_len)
    expected = outputs_and_grads(linear_scan, inputs, impl="naive")
    assert_close(outputs_and_grads(linear_scan, inputs, impl="chunk"), expected, rtol=1e-10, atol=1e-10)
    # the signs matter: the same scan without them differs
    plain, _ = linear_scan(inputs["x"], inputs["g"], inputs["initial_state"], True, inputs["resets"], impl="naive")
    assert not torch.allclose(plain, expected.outputs["o"])


def test_sign_minus_one_alternates_a_constant_state():
    x = torch.zeros(1, 6, 1, dtype=torch.float64)
    g = torch.zeros_like(x)  # |transition| = 1
    sign = -torch.ones_like(x)
    h0 = torch.ones(1, 1, dtype=torch.float64)
    for impl in ("naive", "chunk"):
        h, final = linear_scan(x, g, h0, True, impl=impl, sign=sign)
        assert h.flatten().tolist() == [-1.0, 1.0, -1.0, 1.0, -1.0, 1.0] and final.item() == 1.0


def test_cu_seqlens_restart_the_parity_per_sequence():
    cu_seqlens = torch.tensor([0, 3, 4, 12])
    inputs = with_sign(make_inputs(1, 12, 4, torch.float64, seed=11), 11)
    h0 = torch.randn(3, 4, dtype=torch.float64)
    ref = linear_scan(inputs["x"], inputs["g"], h0, True, cu_seqlens=cu_seqlens, impl="naive", sign=inputs["sign"])
    out = linear_scan(inputs["x"], inputs["g"], h0, True, cu_seqlens=cu_seqlens, impl="chunk", sign=inputs["sign"])
    for a, e in zip(out, ref):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize("reset_prob,initial_state", [(0.0, False), (0.25, True)])
def test_triton_matches_naive_with_negative_transitions_interpreted(reset_prob, initial_state):
    inputs = with_sign(make_inputs(2, 20, 5, torch.float32, seed=3, reset_prob=reset_prob,
                                   initial_state=initial_state, requires_grad=True), 3)
    expected = outputs_and_grads(linear_scan, inputs, impl="naive")
    actual = outputs_and_grads(linear_scan, inputs, impl="triton")
    assert_close(actual, expected, rtol=1e-5, atol=1e-5)
