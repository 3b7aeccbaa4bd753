"""Generalized delta rule (DPLR, the RWKV-7 op): chunk vs naive, varlen, resets, gradients,
strong decays, bf16, fla's torch reference, and fla's Triton kernels under the interpreter."""
from __future__ import annotations

import math

import pytest
import torch

from recurlm.kernels.dplr_delta_rule import chunk as chunk_module
from recurlm.kernels.dplr_delta_rule import dplr_delta_rule, flops
from recurlm.kernels.dplr_delta_rule.chunk import chunk_dplr_delta_rule
from recurlm.kernels.dplr_delta_rule.naive import naive_dplr_delta_rule
from recurlm.kernels.dplr_delta_rule.examples import make_inputs

from .harness import assert_close, outputs_and_grads

TOKEN_INPUTS = ("q", "k", "v", "a", "b", "gk")


@pytest.fixture(params=["factored", "blockwise"])
def decay_path(request, monkeypatch):
    """Run a test through both ways chunk.py forms its decayed products (see chunk.py)."""
    if request.param == "blockwise":
        monkeypatch.setattr(chunk_module, "FACTOR_SPAN_LIMIT", {})
    return request.param


@pytest.mark.parametrize("batch,seq_len,heads,dk,dv,chunk_size,sub,reset_prob", [
    (1, 1, 1, 8, 4, 16, 4, 0.0),      # T = 1
    (2, 37, 2, 8, 6, 16, 4, 0.0),     # T not a multiple of the chunk, several chunks
    (1, 32, 1, 4, 4, 32, 32, 0.0),    # one sub-block per chunk
    (3, 45, 2, 8, 5, 16, 8, 0.15),    # resets, several documents per row, inside chunks
])
@pytest.mark.parametrize("neg_eigval", [False, True])
def test_chunk_matches_naive_float64(batch, seq_len, heads, dk, dv, chunk_size, sub, reset_prob, decay_path, neg_eigval):
    inputs = make_inputs(batch, seq_len, heads, dk, dv, dtype=torch.float64, initial_state=True,
                         reset_prob=reset_prob, requires_grad=True, seed=seq_len, neg_eigval=neg_eigval)
    scale = dk ** -0.5
    expected = outputs_and_grads(naive_dplr_delta_rule, inputs, scale=scale)
    actual = outputs_and_grads(chunk_dplr_delta_rule, inputs, scale=scale, chunk_size=chunk_size, sub_chunk_size=sub)
    assert_close(actual, expected, atol=1e-10, rtol=1e-9)


def test_resets_at_chunk_edges_and_first_token(decay_path):
    """Resets on token 0 (drops initial_state: zero gradient), on a chunk's first and last token,
    and two in a row."""
    inputs = make_inputs(2, 24, 1, 4, 3, dtype=torch.float64, initial_state=True, requires_grad=True, seed=5)
    resets = torch.zeros(2, 24, dtype=torch.bool)
    resets[0, [0, 7, 8, 15]] = True
    resets[1, [3, 4, 16, 23]] = True
    inputs["resets"] = resets
    expected = outputs_and_grads(dplr_delta_rule, inputs, impl="naive")
    actual = outputs_and_grads(chunk_dplr_delta_rule, inputs, scale=0.5, chunk_size=8, sub_chunk_size=4)
    assert_close(actual, expected, atol=1e-10, rtol=1e-9)
    initial_state_grad = actual.grads["initial_state"]
    assert initial_state_grad[0].abs().max() == 0 and initial_state_grad[1].abs().max() > 0


def test_public_op_default_chunking_matches_naive():
    """The dispatcher with its default chunk size, T spanning several chunks plus a remainder."""
    inputs = make_inputs(1, 150, 2, 16, 8, dtype=torch.float64, initial_state=True, reset_prob=0.02,
                         requires_grad=True, seed=2)
    expected = outputs_and_grads(dplr_delta_rule, inputs, impl="naive")
    actual = outputs_and_grads(dplr_delta_rule, inputs, impl="chunk")
    assert_close(actual, expected, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("with_resets", [False, True])
def test_cu_seqlens(with_resets):
    """Varlen: chunk matches naive, and each sequence equals that sequence run on its own."""
    cu_seqlens = torch.tensor([0, 5, 23, 40])
    inputs = make_inputs(1, 40, 2, 8, 4, dtype=torch.float64, requires_grad=True, seed=7,
                         reset_prob=0.1 if with_resets else 0.0)
    inputs["initial_state"] = torch.randn(3, 2, 8, 4, dtype=torch.float64, requires_grad=True)
    expected = outputs_and_grads(dplr_delta_rule, inputs, impl="naive", cu_seqlens=cu_seqlens)
    actual = outputs_and_grads(dplr_delta_rule, inputs, impl="chunk", cu_seqlens=cu_seqlens)
    assert_close(actual, expected, atol=1e-10, rtol=1e-9)

    o, states = actual.outputs["o"], actual.outputs["final_state"]
    for n, (start, end) in enumerate(zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist())):
        piece = {name: inputs[name][:, start:end] for name in TOKEN_INPUTS}
        if with_resets:
            piece["resets"] = inputs["resets"][:, start:end]
        o_n, state_n = naive_dplr_delta_rule(**piece, scale=8 ** -0.5, initial_state=inputs["initial_state"][n:n + 1],
                                  output_final_state=True)
        torch.testing.assert_close(o[:, start:end], o_n)
        torch.testing.assert_close(states[n:n + 1], state_n)


@pytest.mark.parametrize("neg_eigval", [False, True])
def test_gradcheck_chunk(decay_path, neg_eigval):
    """Two chunks of two sub-blocks, resets inside the second chunk and on its last token."""
    inputs = make_inputs(1, 7, 1, 3, 2, dtype=torch.float64, initial_state=True, requires_grad=True, seed=11,
                         neg_eigval=neg_eigval)
    resets = torch.tensor([[False, False, False, False, True, False, True]])
    names = list(inputs)

    def fn(*tensors):
        return chunk_dplr_delta_rule(**dict(zip(names, tensors)), scale=0.7, output_final_state=True, resets=resets,
                          chunk_size=4, sub_chunk_size=2)

    assert torch.autograd.gradcheck(fn, tuple(inputs.values()), fast_mode=True)


def test_gradcheck_naive():
    inputs = make_inputs(1, 4, 1, 3, 2, dtype=torch.float64, initial_state=True, requires_grad=True, seed=12)
    resets = torch.tensor([[False, False, True, False]])
    names = list(inputs)
    assert torch.autograd.gradcheck(
        lambda *t: naive_dplr_delta_rule(**dict(zip(names, t)), scale=0.7, output_final_state=True, resets=resets),
        tuple(inputs.values()), fast_mode=True)


def test_strong_decays_stay_finite_and_match(decay_path):
    """Log decays down to -20 per token agree with the float64 reference in float64 (fwd + bwd, both
    paths: float64 factors chunks of 32 here) and in float32 (fwd, where only the blockwise path fits)."""
    inputs = make_inputs(2, 300, 2, 16, 8, dtype=torch.float64, initial_state=True, reset_prob=0.01, seed=3)
    gen = torch.Generator().manual_seed(4)
    inputs["gk"] = -20 * torch.rand(inputs["gk"].shape, generator=gen, dtype=torch.float64)
    for name in (*TOKEN_INPUTS, "initial_state"):
        inputs[name].requires_grad_(True)
    expected = outputs_and_grads(dplr_delta_rule, inputs, impl="naive")
    actual = outputs_and_grads(dplr_delta_rule, inputs, impl="chunk")
    assert all(torch.isfinite(t).all() for t in actual.all().values())
    assert_close(actual, expected, atol=1e-9, rtol=1e-8)

    as_float32 = {n: (x.detach().float() if x.is_floating_point() else x) for n, x in inputs.items()}
    assert chunk_module._choose_chunking(as_float32["gk"], 64, 4, 60.0) == (64, False)
    o32, state32 = dplr_delta_rule(**as_float32, output_final_state=True, impl="chunk")
    assert torch.isfinite(o32).all() and state32.dtype == torch.float32
    torch.testing.assert_close(o32.double(), expected.outputs["o"], atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(state32.double(), expected.outputs["final_state"], atol=2e-4, rtol=2e-4)


def test_moderate_decays_use_shorter_factored_chunks_float32():
    """Log decays down to -3.5 do not fit a factored 64-token chunk in float32 but fit 16 tokens."""
    inputs = make_inputs(2, 100, 2, 16, 8, dtype=torch.float64, initial_state=True, reset_prob=0.02,
                         log_decay_floor=-3.5, seed=10)
    as_float32 = {n: (x.float() if x.is_floating_point() else x) for n, x in inputs.items()}
    assert chunk_module._choose_chunking(as_float32["gk"], 64, 4, 60.0) == (16, True)
    o_ref, state_ref = dplr_delta_rule(**inputs, output_final_state=True, impl="naive")
    o, state = dplr_delta_rule(**as_float32, output_final_state=True, impl="chunk")
    torch.testing.assert_close(o.double(), o_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(state.double(), state_ref, atol=1e-4, rtol=1e-4)


def test_long_sequence_float32_matches_reference():
    inputs = make_inputs(1, 1000, 2, 16, 16, dtype=torch.float64, initial_state=True, seed=9)
    o_ref, state_ref = dplr_delta_rule(**inputs, output_final_state=True, impl="naive")
    o, state = dplr_delta_rule(**{n: x.float() for n, x in inputs.items()}, output_final_state=True, impl="chunk")
    assert o.dtype == torch.float32
    torch.testing.assert_close(o.double(), o_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(state.double(), state_ref, atol=1e-4, rtol=1e-4)


def test_bf16_within_tolerance_of_float64():
    inputs = make_inputs(2, 100, 2, 16, 16, dtype=torch.float64, initial_state=True, reset_prob=0.02,
                         requires_grad=True, seed=6)
    expected = outputs_and_grads(dplr_delta_rule, inputs, impl="naive")
    bf16 = {n: (x.detach().to(torch.bfloat16).requires_grad_(True) if x.is_floating_point() else x)
            for n, x in inputs.items()}
    actual = outputs_and_grads(dplr_delta_rule, bf16, impl="chunk")
    assert actual.outputs["o"].dtype == torch.bfloat16 and actual.outputs["final_state"].dtype == torch.float32
    actual, expected = actual.all(), expected.all()
    assert actual.keys() == expected.keys()
    for name, y in expected.items():
        x = actual[name]
        error = (x.double() - y).norm() / y.norm()
        assert error < 2e-2, f"{name}: relative error {error:.3g} in bf16"


def test_naive_matches_fla_dplr_recurrence():
    """fla's torch reference ([B, H, T, K], q scaled by K^-0.5 inside, float32 state)."""
    from fla.ops.generalized_delta_rule.dplr.naive import dplr_recurrence

    inputs = make_inputs(2, 40, 2, 16, 8, dtype=torch.float32, initial_state=True, seed=8)
    o, state = dplr_delta_rule(**inputs, output_final_state=True, impl="naive")
    heads_first = [inputs[n].transpose(1, 2) for n in TOKEN_INPUTS]
    o_fla, state_fla = dplr_recurrence(*heads_first, initial_state=inputs["initial_state"], output_final_state=True)
    torch.testing.assert_close(o, o_fla.transpose(1, 2), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state, state_fla, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("neg_eigval", [False, True])
def test_triton_matches_naive_under_interpreter(fla_interpreter, neg_eigval):
    """fla's chunk_dplr_delta_rule (the CUDA path) in the Triton interpreter, tiny fp32, through
    the resets adapter: outputs, final states and gradients of every input (also with RWKV-7's
    allow_neg_eigval removal rate, eigenvalues down to -1)."""
    inputs = make_inputs(2, 10, 1, 16, 16, initial_state=True, requires_grad=True, seed=13, neg_eigval=neg_eigval)
    inputs["resets"] = torch.tensor([[False] * 4 + [True] + [False] * 5, [True] + [False] * 6 + [True] * 2 + [False]])
    expected = outputs_and_grads(dplr_delta_rule, inputs, impl="naive")
    actual = outputs_and_grads(dplr_delta_rule, inputs, impl="triton")
    assert_close(actual, expected, atol=1e-4, rtol=1e-4)


def test_triton_with_rwkv7_decay_bound_under_interpreter(fla_interpreter):
    """RWKV-7's bound on gk sends fla down its safe-gate path (chunks of 64, exp(g_i - g_j) factored
    around the middle of each chunk): equal to naive within ~1e-4 of each tensor's largest entry in
    float32 (the unbounded path: ~1e-6 at these inputs), far inside bf16 training's precision."""
    inputs = make_inputs(1, 70, 1, 16, 16, initial_state=True, requires_grad=True, seed=15)
    inputs["resets"] = torch.zeros(1, 70, dtype=torch.bool)
    inputs["resets"][0, 33] = True
    bound = -math.exp(-0.5)
    expected = outputs_and_grads(dplr_delta_rule, inputs, impl="naive")
    actual = outputs_and_grads(dplr_delta_rule, inputs, impl="triton", gk_lower_bound=bound)
    actual, expected = actual.all(), expected.all()
    assert actual.keys() == expected.keys()
    for name, y in expected.items():
        assert (actual[name] - y).abs().max() <= 5e-4 * y.abs().max(), name


def test_decay_bound_is_checked_on_cpu():
    inputs = make_inputs(1, 5, 1, 4, 4, log_decay_floor=-2.0, seed=16)
    with pytest.raises(ValueError, match="gk goes below gk_lower_bound"):
        dplr_delta_rule(**inputs, gk_lower_bound=-math.exp(-0.5))
    with pytest.raises(ValueError, match="must be negative"):
        dplr_delta_rule(**inputs, gk_lower_bound=0.5)


def test_triton_cu_seqlens_under_interpreter(fla_interpreter):
    cu_seqlens = torch.tensor([0, 7, 20])
    inputs = make_inputs(1, 20, 1, 16, 16, seed=14)
    inputs["initial_state"] = torch.randn(2, 1, 16, 16)
    expected = dplr_delta_rule(**inputs, output_final_state=True, cu_seqlens=cu_seqlens, impl="naive")
    actual = dplr_delta_rule(**inputs, output_final_state=True, cu_seqlens=cu_seqlens, impl="triton")
    names = ("o", "final_state")
    assert_close(dict(zip(names, actual)), dict(zip(names, expected)), atol=1e-4, rtol=1e-4)


def test_scale_default_and_output_dtypes():
    inputs = make_inputs(1, 9, 1, 16, 4, seed=15)
    o_default, _ = dplr_delta_rule(**inputs, impl="chunk")
    o_explicit, none_state = dplr_delta_rule(**inputs, scale=0.25, impl="chunk")
    torch.testing.assert_close(o_default, o_explicit)
    assert none_state is None and o_default.dtype == torch.float32


def test_bad_inputs_raise():
    inputs = make_inputs(2, 8, 1, 4, 4, seed=16)
    with pytest.raises(ValueError, match="gk must have q's shape"):
        dplr_delta_rule(**{**inputs, "gk": inputs["gk"][:, :4]})
    with pytest.raises(ValueError, match="v must be"):
        dplr_delta_rule(**{**inputs, "v": inputs["v"][:, :, :, None]})
    with pytest.raises(ValueError, match="resets must be a bool"):
        dplr_delta_rule(**inputs, resets=torch.zeros(2, 8))
    with pytest.raises(ValueError, match="batch size must be 1"):
        dplr_delta_rule(**inputs, cu_seqlens=torch.tensor([0, 8]))
    with pytest.raises(ValueError, match="initial_state must be"):
        dplr_delta_rule(**inputs, initial_state=torch.zeros(1, 1, 4, 4))
    single = {n: x[:1] for n, x in inputs.items()}
    with pytest.raises(ValueError, match="cu_seqlens must increase"):
        dplr_delta_rule(**single, cu_seqlens=torch.tensor([0, 5, 5, 8]))
    with pytest.raises(ValueError, match="impl"):
        dplr_delta_rule(**inputs, impl="fast")
    for chunk_size in (24, 48):
        with pytest.raises(ValueError, match="times a power of two"):
            chunk_dplr_delta_rule(**inputs, scale=1.0, chunk_size=chunk_size, sub_chunk_size=16)


def test_flops_count():
    per_chunk = flops(1, 64, 1, 16, 8)
    assert flops(3, 64 * 5, 2, 16, 8) == 3 * 5 * 2 * per_chunk
    # T = 10 runs as one 16-token chunk (leaf 4 doubled twice)
    c, k, v = 16, 16, 8
    expected = (8 * c * c * k + 2 * c * c * v + c * c * (v + k) + 4 * c * c * v + 2 * c * c * k
                + 2 * c * k * v + 2 * c * k * k + 4 * c * k * v + 2 * k * k * v)
    assert flops(1, 10, 1, k, v) == expected


def test_neg_eigval_inputs_reach_eigenvalue_minus_one():
    """The transition diag(e^gk) + a b^T of make_inputs(neg_eigval=True) has eigenvalues below
    e^gk - 1 >= -0.46 (unreachable without the option) and none outside the unit disc."""
    for neg_eigval in (False, True):
        x = make_inputs(1, 64, 1, 8, 4, dtype=torch.float64, neg_eigval=neg_eigval, seed=3)
        transition = torch.diag_embed(x["gk"].exp()) + x["a"][..., :, None] * x["b"][..., None, :]
        eig = torch.linalg.eigvals(transition[0, :, 0])
        assert eig.abs().max() <= 1 + 1e-9
        assert (eig.real.min() < -0.5) == neg_eigval
