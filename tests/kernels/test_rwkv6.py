"""recurlm.kernels.rwkv6: chunk vs naive (float64, fwd/bwd incl. u), documents, varlen, stability,
bf16, fla's references, and the Triton path."""
import pytest
import torch
from fla.ops.rwkv6.chunk_naive import naive_chunk_rwkv6
from fla.ops.rwkv6.recurrent_naive import naive_recurrent_rwkv6

from recurlm.kernels.gla import chunk as chunk_module
from recurlm.kernels.gla.chunk import chunk_gla
from recurlm.kernels.rwkv6 import flops, rwkv6
from recurlm.kernels.rwkv6.examples import make_inputs
from recurlm.kernels.rwkv6.naive import naive_rwkv6

from .harness import assert_close, outputs_and_grads

GRAD_NAMES = {"dr", "dk", "dv", "dw", "du", "dinitial_state"}


@pytest.mark.parametrize("batch,seq_len,heads,head_dim,value_dim,reset_prob", [
    (2, 1, 2, 8, 4, 0.0),
    (2, 1, 1, 4, 4, 0.5),
    (2, 45, 2, 8, 6, 0.1),
    (1, 64, 1, 16, 16, 0.0),
    (2, 140, 2, 8, 5, 0.06),
])
def test_chunk_matches_naive_float64(batch, seq_len, heads, head_dim, value_dim, reset_prob):
    inputs = make_inputs(batch, seq_len, heads, head_dim, value_dim, dtype=torch.float64, reset_prob=reset_prob,
                         initial_state=True, requires_grad=True, seed=0)
    expected = outputs_and_grads(rwkv6, inputs, impl="naive")
    actual = outputs_and_grads(rwkv6, inputs, impl="chunk")
    assert GRAD_NAMES <= actual.all().keys()
    assert_close(actual, expected, atol=1e-10, rtol=1e-9)


def test_reset_drops_state_for_the_resetting_token_itself():
    """The token at a reset reads only its own bonus term, not the state before it."""
    inputs = make_inputs(1, 6, 1, 4, 3, dtype=torch.float64, initial_state=True, seed=1)
    resets = torch.zeros(1, 6, dtype=torch.bool)
    resets[0, 3] = True
    o, _ = rwkv6(**inputs, resets=resets, impl="chunk")
    r, k, v, u = inputs["r"][0, 3, 0], inputs["k"][0, 3, 0], inputs["v"][0, 3, 0], inputs["u"][0]
    torch.testing.assert_close(o[0, 3, 0], 0.5 * (r * u * k).sum() * v)


@pytest.mark.parametrize("factorisable", [40.0, 0.0])
def test_gradcheck_chunk_several_chunks(factorisable, monkeypatch):
    """The hand-written backward by finite differences: factorised blocks, and (forced) every block
    recomputed by halves down to single tokens."""
    monkeypatch.setattr(chunk_module, "FACTORISABLE_LOG_DECAY", factorisable)
    inputs = make_inputs(2, 9, 1, 3, 2, dtype=torch.float64, initial_state=True, requires_grad=True, seed=2)
    resets = torch.zeros(2, 9, dtype=torch.bool)
    resets[0, [0, 5]] = True
    resets[1, 7] = True

    def fn(r, k, v, w, u, initial_state):  # three chunks of 4 tokens
        return chunk_gla(r, k, v, w, 0.6, initial_state, resets, bonus=u, chunk_size=4)

    names = ("r", "k", "v", "w", "u", "initial_state")
    assert torch.autograd.gradcheck(fn, tuple(inputs[n] for n in names), fast_mode=True)


def test_backward_matches_autograd_through_naive_strong_decays():
    """The hand-written backward (bonus included) vs autograd through the sequential loop, float64:
    strong decays (down to -20, a stretch of exactly -20), resets and an initial state."""
    inputs = make_inputs(2, 100, 2, 8, 5, dtype=torch.float64, decay_scale=8.0, initial_state=True,
                         requires_grad=True, seed=9)
    with torch.no_grad():
        inputs["w"][:, 20:45] = -20.0
    resets = torch.zeros(2, 100, dtype=torch.bool)
    resets[0, [32, 70]] = True
    resets[1, [0, 99]] = True
    inputs["resets"] = resets
    actual = outputs_and_grads(rwkv6, inputs, impl="chunk")
    assert_close(actual, outputs_and_grads(rwkv6, inputs, impl="naive"), atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("with_resets", [False, True])
def test_cu_seqlens_match_sequences_run_separately(with_resets):
    cu_seqlens = torch.tensor([0, 3, 40, 41, 77])
    inputs = make_inputs(1, 77, 2, 8, 4, dtype=torch.float64, requires_grad=True, seed=3)
    seeded = torch.Generator().manual_seed(4)
    inputs["initial_state"] = torch.randn(4, 2, 8, 4, dtype=torch.float64, generator=seeded).requires_grad_()
    resets = torch.zeros(1, 77, dtype=torch.bool)
    if with_resets:
        resets[0, [3, 20]] = True  # sequence 1 starts with a reset; another document inside it
        inputs["resets"] = resets
    actual = outputs_and_grads(rwkv6, inputs, cu_seqlens=cu_seqlens, impl="chunk")

    def per_sequence(r, k, v, w, u, initial_state, output_final_state, resets=None):
        outs, states = [], []
        for n, (start, end) in enumerate(zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist())):
            piece = [x[:, start:end] for x in (r, k, v, w)]
            o_n, s_n = naive_rwkv6(*piece, 8 ** -0.5, initial_state[n:n + 1],
                                   None if resets is None else resets[:, start:end], u=u)
            outs.append(o_n)
            states.append(s_n)
        return torch.cat(outs, dim=1), torch.cat(states, dim=0)

    assert_close(actual, outputs_and_grads(per_sequence, inputs), atol=1e-10, rtol=1e-9)


def test_strong_decays_long_sequence_float32():
    inputs = make_inputs(1, 500, 2, 16, 8, decay_scale=8.0, initial_state=True, requires_grad=True, seed=5)
    with torch.no_grad():
        inputs["w"][:, 60:140] = -20.0
    reference = {n: x.double().detach().requires_grad_() for n, x in inputs.items()}
    expected = outputs_and_grads(rwkv6, reference, impl="naive")
    actual = outputs_and_grads(rwkv6, inputs, impl="chunk")
    assert_close(actual, expected, atol=1e-4, rtol=1e-4, check_dtype=False)  # float32 run vs float64 reference


def test_bfloat16_within_tolerance():
    inputs = make_inputs(2, 90, 2, 16, 16, initial_state=True, reset_prob=0.05, seed=6)
    reference = {n: x.double() if x.is_floating_point() else x for n, x in inputs.items()}
    o_ref, s_ref = rwkv6(**reference, output_final_state=True, impl="naive")
    low = {n: x.bfloat16().requires_grad_() if n in ("r", "k", "v", "w", "u") else x for n, x in inputs.items()}
    o, final_state = rwkv6(**low, output_final_state=True, impl="chunk")
    assert o.dtype == torch.bfloat16 and final_state.dtype == torch.float32
    (o.float().sum() + final_state.sum()).backward()
    assert all(torch.isfinite(low[n].grad).all() for n in ("r", "k", "v", "w", "u"))
    assert (o.double() - o_ref).abs().max() / o_ref.abs().max() < 3e-2
    assert (final_state.double() - s_ref).abs().max() / s_ref.abs().max() < 3e-2


def test_matches_fla_references():
    """Naive vs fla's recurrent reference ([B, H, T, K] layout), chunk vs fla's chunk reference."""
    inputs = make_inputs(2, 64, 3, 8, 6, initial_state=True, seed=7)
    to_fla = {n: inputs[n].transpose(1, 2) for n in ("r", "k", "v", "w")}
    o, final_state = rwkv6(**inputs, output_final_state=True, impl="naive")
    o_fla, s_fla = naive_recurrent_rwkv6(to_fla["r"], to_fla["k"], to_fla["v"], to_fla["w"], inputs["u"],
                                         initial_state=inputs["initial_state"], output_final_state=True)
    torch.testing.assert_close(o, o_fla.transpose(1, 2), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(final_state, s_fla, atol=1e-5, rtol=1e-5)
    # fla's torch chunk reference applies no scale and takes no initial state
    o_chunk, _ = rwkv6(*(inputs[n] for n in ("r", "k", "v", "w", "u")), scale=1.0, impl="chunk")
    o_fla_chunk = naive_chunk_rwkv6(to_fla["r"], to_fla["k"], to_fla["v"], to_fla["w"], inputs["u"])
    torch.testing.assert_close(o_chunk, o_fla_chunk.transpose(1, 2), atol=1e-4, rtol=1e-4)


def test_bad_u_raises():
    inputs = make_inputs(1, 4, 2, 4, 4, seed=8)
    inputs["u"] = inputs["u"][:1]
    with pytest.raises(ValueError, match="u must be"):
        rwkv6(**inputs)


def test_flops_adds_bonus_term():
    assert flops(1, 64, 1, 16, 8, chunk_size=64) == 64 * (2 * 64 * 24 + 4 * 16 * 8 + 3 * 16 + 2 * 8)


def test_triton_matches_naive_under_interpreter(fla_interpreter):
    """fla's chunk_rwkv6 (the CUDA path) run by the Triton interpreter, tiny fp32, through the resets
    adapter: outputs, final states and gradients of every input."""
    inputs = make_inputs(2, 20, 1, 16, 16, initial_state=True, reset_prob=0.1, requires_grad=True, seed=13)
    inputs["resets"][0, 0] = True  # row 0 drops its initial state
    expected = outputs_and_grads(rwkv6, inputs, impl="naive")
    assert_close(outputs_and_grads(rwkv6, inputs, impl="triton"), expected, atol=1e-4, rtol=1e-4)
