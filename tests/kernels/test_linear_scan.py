"""linear_scan: chunk and Triton paths against the sequential float64 reference (and fla's)."""
from __future__ import annotations

import pytest
import torch

from recurlm.kernels.linear_scan import flops, linear_scan
from recurlm.kernels.linear_scan.chunk import chunk_linear_scan
from recurlm.kernels.linear_scan.naive import naive_linear_scan
from recurlm.kernels.linear_scan.examples import make_inputs

from .harness import assert_close, outputs_and_grads

def naive(**kw):
    return linear_scan(**kw, output_final_state=True, impl="naive")


@pytest.mark.parametrize("batch,seq_len,dim,chunk_size", [
    (2, 1, 3, 4), (2, 7, 3, 4), (3, 37, 5, 8), (2, 64, 4, 8), (1, 130, 6, 8), (2, 300, 3, 16)])
@pytest.mark.parametrize("reset_prob", [0.0, 0.15])
@pytest.mark.parametrize("initial_state", [False, True])
def test_chunk_matches_naive_float64(batch, seq_len, dim, chunk_size, reset_prob, initial_state):
    inputs = make_inputs(batch, seq_len, dim, torch.float64, seed=seq_len, reset_prob=reset_prob,
                         initial_state=initial_state, requires_grad=True)
    expected = outputs_and_grads(linear_scan, inputs, impl="naive")
    actual = outputs_and_grads(chunk_linear_scan, inputs, chunk_size=chunk_size)
    assert_close(actual, expected, rtol=1e-10, atol=1e-10)


def test_public_chunk_path_with_head_dims():
    """[B, T, H, D] inputs are scanned per channel, like [B, T, H*D]."""
    inputs = make_inputs(2, 70, 6, torch.float64, reset_prob=0.1, initial_state=True)
    four_d = {"x": inputs["x"].view(2, 70, 2, 3), "g": inputs["g"].view(2, 70, 2, 3),
              "initial_state": inputs["initial_state"].view(2, 2, 3), "resets": inputs["resets"]}
    h, final_state = linear_scan(**four_d, output_final_state=True, impl="chunk")
    h_ref, final_ref = naive(**inputs)
    assert h.shape == (2, 70, 2, 3) and final_state.shape == (2, 2, 3)
    torch.testing.assert_close(h.reshape(2, 70, 6), h_ref)
    torch.testing.assert_close(final_state.reshape(2, 6), final_ref)


def test_resets_start_documents():
    """A reset equals a log decay of -inf, and a reset at token 0 discards the initial state."""
    inputs = make_inputs(3, 40, 4, torch.float64, reset_prob=0.2, initial_state=True)
    resets = inputs["resets"].clone()
    resets[:, 0] = True
    h, _ = linear_scan(**{**inputs, "resets": resets}, impl="chunk")
    g_inf = inputs["g"].masked_fill(resets[..., None], float("-inf"))
    h_inf, _ = linear_scan(inputs["x"], g_inf, impl="naive")
    torch.testing.assert_close(h, h_inf, rtol=1e-12, atol=1e-12)


def test_state_passing_equals_whole_sequence():
    inputs = make_inputs(2, 90, 5, torch.float64, reset_prob=0.05, initial_state=True)
    whole, final_whole = linear_scan(**inputs, output_final_state=True, impl="chunk")
    split = 41
    first, mid = linear_scan(inputs["x"][:, :split], inputs["g"][:, :split], inputs["initial_state"], True,
                             inputs["resets"][:, :split], impl="chunk")
    second, final = linear_scan(inputs["x"][:, split:], inputs["g"][:, split:], mid, True,
                                inputs["resets"][:, split:], impl="chunk")
    torch.testing.assert_close(torch.cat([first, second], 1), whole)
    torch.testing.assert_close(final, final_whole)


@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_cu_seqlens_equals_separate_sequences(impl):
    lengths = [5, 1, 70, 23]
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    inputs = make_inputs(1, sum(lengths), 4, torch.float64, seed=3, requires_grad=True)
    h0 = torch.randn(len(lengths), 4, dtype=torch.float64, requires_grad=True)
    packed = lambda x, g, initial_state, resets, output_final_state: linear_scan(  # noqa: E731
        x, g, initial_state, output_final_state, cu_seqlens=cu_seqlens, impl=impl)

    def separate(x, g, initial_state, resets, output_final_state):
        outs, finals = [], []
        for n, (start, end) in enumerate(zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist())):
            h, f = naive_linear_scan(x[:, start:end], g[:, start:end], initial_state[n:n + 1], True)
            outs.append(h)
            finals.append(f)
        return torch.cat(outs, 1), torch.cat(finals, 0)

    inputs["initial_state"] = h0
    assert_close(outputs_and_grads(packed, inputs), outputs_and_grads(separate, inputs), rtol=1e-10, atol=1e-10)


def test_gradcheck_chunk():
    inputs = make_inputs(2, 11, 3, torch.float64, seed=5, reset_prob=0.2, initial_state=True, requires_grad=True)
    resets = inputs["resets"]

    def fn(x, g, h0):
        return chunk_linear_scan(x, g, h0, True, resets, chunk_size=4)

    assert torch.autograd.gradcheck(fn, (inputs["x"], inputs["g"], inputs["initial_state"]))


def test_gradcheck_naive():
    inputs = make_inputs(1, 5, 2, torch.float64, seed=6, reset_prob=0.3, initial_state=True, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, g, h0: naive_linear_scan(x, g, h0, True, inputs["resets"]),
                                    (inputs["x"], inputs["g"], inputs["initial_state"]))


@pytest.mark.parametrize("log_decay_range", [(-20.0, -20.0), (-20.0, 0.0)])
def test_strong_decays_long_sequence_float32(log_decay_range):
    """Log decays down to -20 per token and 4096 tokens: finite, and float32 matches float64."""
    inputs = make_inputs(2, 4096, 8, torch.float32, seed=7, log_decay_range=log_decay_range,
                         reset_prob=0.01, initial_state=True, requires_grad=True)
    reference = {k: (v.detach().double().requires_grad_(v.requires_grad) if v is not None and v.is_floating_point()
                     else v) for k, v in inputs.items()}
    expected = outputs_and_grads(linear_scan, reference, impl="chunk")
    actual = outputs_and_grads(linear_scan, inputs, impl="chunk")
    assert all(torch.isfinite(t).all() for t in actual.all().values())
    assert_close(actual, expected, rtol=1e-4, atol=1e-4, check_dtype=False)  # float32 run vs float64 reference


def test_long_sequence_slow_decay_matches_naive():
    """Decays close to 1 (log decay in [-1e-3, 0]) accumulate over 3000 tokens without drift."""
    inputs = make_inputs(1, 3000, 4, torch.float64, seed=8, log_decay_range=(-1e-3, 0.0))
    h, final_state = linear_scan(**inputs, output_final_state=True, impl="chunk")
    h_ref, final_ref = naive(**inputs)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(final_state, final_ref, rtol=1e-10, atol=1e-9)


def test_bfloat16_within_tolerance_of_float64():
    inputs = make_inputs(2, 200, 16, torch.bfloat16, seed=9, reset_prob=0.05, initial_state=True, requires_grad=True)
    h, final_state = linear_scan(**inputs, output_final_state=True, impl="chunk")
    assert h.dtype == torch.bfloat16 and final_state.dtype == torch.float32
    grads = torch.autograd.grad((h.float() ** 2).sum(), [inputs["x"], inputs["g"], inputs["initial_state"]])
    assert [g.dtype for g in grads] == [torch.bfloat16, torch.bfloat16, torch.float32]
    reference = {k: (v.detach().double() if v is not None and v.is_floating_point() else v) for k, v in inputs.items()}
    h_ref, final_ref = naive(**reference)
    torch.testing.assert_close(h.double(), h_ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(final_state.double(), final_ref, rtol=2e-2, atol=2e-2)


def test_naive_matches_fla_reference():
    from fla.ops.hgrn.naive import naive_recurrent_hgrn

    inputs = make_inputs(2, 50, 6, torch.float32, seed=10, log_decay_range=(-3.0, 0.0), initial_state=True)
    h, final_state = linear_scan(**inputs, output_final_state=True, impl="naive")
    h_fla, final_fla = naive_recurrent_hgrn(inputs["x"], inputs["g"], inputs["initial_state"], True)
    torch.testing.assert_close(h, h_fla)
    torch.testing.assert_close(final_state, final_fla)


@pytest.mark.parametrize("seq_len,dim", [(1, 3), (9, 5), (20, 130)])
@pytest.mark.parametrize("reset_prob,initial_state", [(0.0, False), (0.25, True)])
def test_triton_matches_naive_interpreted(seq_len, dim, reset_prob, initial_state):
    """Forward and backward of the Triton kernels (TRITON_INTERPRET=1, float32); dim 130 spans two
    channel blocks with a masked tail."""
    inputs = make_inputs(2, seq_len, dim, torch.float32, seed=seq_len, reset_prob=reset_prob,
                         initial_state=initial_state, requires_grad=True)
    expected = outputs_and_grads(linear_scan, inputs, impl="naive")
    actual = outputs_and_grads(linear_scan, inputs, impl="triton")
    assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_triton_cu_seqlens_interpreted():
    cu_seqlens = torch.tensor([0, 3, 4, 12])
    inputs = make_inputs(1, 12, 4, torch.float32, seed=11)
    h0 = torch.randn(3, 4)
    h, final_state = linear_scan(inputs["x"], inputs["g"], h0, True, cu_seqlens=cu_seqlens, impl="triton")
    h_ref, final_ref = linear_scan(inputs["x"], inputs["g"], h0, True, cu_seqlens=cu_seqlens, impl="naive")
    torch.testing.assert_close(h, h_ref)
    torch.testing.assert_close(final_state, final_ref)


def test_bad_inputs_raise():
    inputs = make_inputs(2, 8, 3)
    with pytest.raises(ValueError, match="g must have the shape"):
        linear_scan(inputs["x"], inputs["g"][:, :4])
    with pytest.raises(ValueError, match="resets must be bool"):
        linear_scan(inputs["x"], inputs["g"], resets=torch.zeros(2, 8))
    with pytest.raises(ValueError, match="initial_state must be"):
        linear_scan(inputs["x"], inputs["g"], initial_state=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="batch size must be 1"):
        linear_scan(inputs["x"], inputs["g"], cu_seqlens=torch.tensor([0, 8]))
    with pytest.raises(ValueError, match="impl must be one of"):
        linear_scan(inputs["x"], inputs["g"], impl="cuda")
    with pytest.raises(TypeError, match="float64"):
        linear_scan(inputs["x"].double(), inputs["g"].double(), impl="triton")


def test_flops_counts_elements():
    assert flops(2, 10, 4) == 3 * 2 * 10 * 4
