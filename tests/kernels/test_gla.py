"""recurlm.kernels.gla: chunk vs naive (float64, fwd/bwd), documents, varlen, stability, bf16,
the fla reference, and the Triton path."""
import pytest
import torch
from fla.ops.gla.naive import naive_recurrent_gla

from recurlm.kernels.gla import chunk as chunk_module
from recurlm.kernels.gla import flops, gla
from recurlm.kernels.gla.chunk import chunk_gla
from recurlm.kernels.gla.naive import naive_gla
from recurlm.kernels.gla.examples import make_inputs

from .harness import assert_close, outputs_and_grads


@pytest.mark.parametrize("batch,seq_len,heads,head_dim,value_dim", [
    (2, 1, 2, 8, 4),      # a single token
    (2, 37, 2, 8, 6),     # not a multiple of the sub-chunk size
    (1, 64, 1, 16, 16),   # exactly one chunk
    (2, 150, 2, 8, 5),    # several chunks, ragged end
])
@pytest.mark.parametrize("reset_prob", [0.0, 0.08])
def test_chunk_matches_naive_float64(batch, seq_len, heads, head_dim, value_dim, reset_prob):
    inputs = make_inputs(batch, seq_len, heads, head_dim, value_dim, dtype=torch.float64, reset_prob=reset_prob,
                         initial_state=True, requires_grad=True, seed=0)
    expected = outputs_and_grads(gla, inputs, impl="naive")
    actual = outputs_and_grads(gla, inputs, impl="chunk")
    assert {"dq", "dk", "dv", "dg", "dinitial_state"} <= actual.all().keys()
    assert_close(actual, expected, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("chunk_size,decays", [
    (8, "mild"), (8, "all_elementwise"), (8, "mixed"), (2, "mixed"), (4, "mild"), (16, "mixed")])
def test_chunk_geometries_match_naive(chunk_size, decays, monkeypatch):
    """Several chunks, with resets at chunk edges, mid-chunk and at the factorisation reference; A
    by the factorised matmul, by the elementwise form (forced), and by a mix of both (strong decays
    on a stretch)."""
    if decays == "all_elementwise":
        monkeypatch.setattr(chunk_module, "FACTORISABLE_LOG_DECAY", 0.0)
    inputs = make_inputs(2, 45, 2, 6, 3, dtype=torch.float64, initial_state=True, requires_grad=True, seed=1)
    if decays == "mixed":
        with torch.no_grad():
            inputs["g"][0, 10:22] = -15.0
    resets = torch.zeros(2, 45, dtype=torch.bool)
    resets[0, [0, 4, 5, 16, 30]] = True  # row 0 drops its initial state; documents of length 1 and more
    resets[1, [7, 8, 33, 44]] = True     # row 1 continues its initial state; a reset at the last token
    inputs["resets"] = resets

    def chunked(q, k, v, g, initial_state, resets, output_final_state):
        return chunk_gla(q, k, v, g, 0.4, initial_state, resets, chunk_size=chunk_size)

    def naive(q, k, v, g, initial_state, resets, output_final_state):
        return naive_gla(q, k, v, g, 0.4, initial_state, resets)

    assert_close(outputs_and_grads(chunked, inputs), outputs_and_grads(naive, inputs), atol=1e-10, rtol=1e-9)


def test_resets_equal_separate_documents():
    """A row with resets computes what the documents computed one by one compute."""
    inputs = make_inputs(1, 30, 2, 4, 3, dtype=torch.float64, initial_state=True, seed=2)
    starts = [0, 9, 10, 22]
    resets = torch.zeros(1, 30, dtype=torch.bool)
    resets[0, starts[1:]] = True  # the first document continues the initial state
    o, final_state = gla(**inputs, resets=resets, output_final_state=True, impl="chunk")
    for index, (start, end) in enumerate(zip(starts, starts[1:] + [30])):
        piece = {name: inputs[name][:, start:end] for name in ("q", "k", "v", "g")}
        state = inputs["initial_state"] if index == 0 else None
        o_doc, s_doc = naive_gla(**piece, scale=4 ** -0.5, initial_state=state)
        torch.testing.assert_close(o[:, start:end], o_doc)
    torch.testing.assert_close(final_state, s_doc)


@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_cu_seqlens_match_sequences_run_separately(impl):
    cu_seqlens = torch.tensor([0, 1, 21, 24, 90])
    n_seqs = len(cu_seqlens) - 1
    inputs = make_inputs(1, 90, 2, 8, 4, dtype=torch.float64, requires_grad=True, seed=3)
    seeded = torch.Generator().manual_seed(4)
    inputs["initial_state"] = torch.randn(n_seqs, 2, 8, 4, dtype=torch.float64, generator=seeded).requires_grad_()
    actual = outputs_and_grads(gla, inputs, cu_seqlens=cu_seqlens, impl=impl)

    def per_sequence(q, k, v, g, initial_state, output_final_state):
        outs, states = [], []
        for n, (start, end) in enumerate(zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist())):
            o_n, s_n = naive_gla(q[:, start:end], k[:, start:end], v[:, start:end], g[:, start:end],
                                 8 ** -0.5, initial_state[n:n + 1])
            outs.append(o_n)
            states.append(s_n)
        return torch.cat(outs, dim=1), torch.cat(states, dim=0)

    assert_close(actual, outputs_and_grads(per_sequence, inputs), atol=1e-10, rtol=1e-9)


def test_cu_seqlens_with_resets():
    cu_seqlens = torch.tensor([0, 12, 40])
    inputs = make_inputs(1, 40, 1, 4, 4, dtype=torch.float64, requires_grad=True, seed=5)
    seeded = torch.Generator().manual_seed(6)
    inputs["initial_state"] = torch.randn(2, 1, 4, 4, dtype=torch.float64, generator=seeded).requires_grad_()
    resets = torch.zeros(1, 40, dtype=torch.bool)
    resets[0, [5, 12, 30]] = True  # a reset inside sequence 0, and sequence 1 drops its initial state
    inputs["resets"] = resets
    expected = outputs_and_grads(gla, inputs, cu_seqlens=cu_seqlens, impl="naive")
    actual = outputs_and_grads(gla, inputs, cu_seqlens=cu_seqlens, impl="chunk")
    assert_close(actual, expected, atol=1e-10, rtol=1e-9)
    assert actual.grads["initial_state"][1].abs().max() == 0  # discarded by the reset at its first token


@pytest.mark.parametrize("factorisable", [40.0, 0.0])
def test_gradcheck_chunk(factorisable, monkeypatch):
    """The hand-written backward by finite differences: factorised blocks, and (forced) every block
    recomputed by halves down to single tokens."""
    monkeypatch.setattr(chunk_module, "FACTORISABLE_LOG_DECAY", factorisable)
    inputs = make_inputs(2, 9, 1, 3, 2, dtype=torch.float64, initial_state=True, requires_grad=True, seed=7)
    resets = torch.zeros(2, 9, dtype=torch.bool)
    resets[0, 5] = True
    resets[1, 0] = True

    def fn(q, k, v, g, initial_state):  # three chunks
        return chunk_gla(q, k, v, g, 0.7, initial_state, resets, chunk_size=4)

    names = ("q", "k", "v", "g", "initial_state")
    assert torch.autograd.gradcheck(fn, tuple(inputs[n] for n in names), fast_mode=True)


def test_backward_matches_autograd_through_naive_strong_decays():
    """The hand-written backward vs autograd through the sequential loop, float64, default chunk
    size: strong decays (down to -20, a stretch of exactly -20, a stretch of 0), resets (one at a
    chunk edge, one mid-chunk, one at the last token) and an initial state on one row."""
    inputs = make_inputs(2, 150, 2, 8, 5, dtype=torch.float64, decay_scale=8.0, initial_state=True,
                         requires_grad=True, seed=16)
    with torch.no_grad():
        inputs["g"][:, 40:75] = -20.0
        inputs["g"][:, 75:90] = 0.0
    resets = torch.zeros(2, 150, dtype=torch.bool)
    resets[0, [0, 64, 77, 149]] = True
    resets[1, [50]] = True
    inputs["resets"] = resets
    actual = outputs_and_grads(gla, inputs, impl="chunk")
    assert_close(actual, outputs_and_grads(gla, inputs, impl="naive"), atol=1e-10, rtol=1e-9)
    # a reset token's decay multiplies a dropped state: its gradient cancels to rounding
    assert actual.grads["g"][0, 77].abs().max() < 1e-12


def test_mixed_input_dtypes_accumulate_in_the_queries_dtype():
    """float64 queries with float32 log decays (as a float64 model with float32 gates passes them):
    everything is converted before any arithmetic, so the result is float64-exact."""
    inputs = make_inputs(2, 13, 2, 8, 4, dtype=torch.float64, seed=18)
    inputs["g"] = inputs["g"].float()
    o, _ = chunk_gla(**inputs, scale=0.3)
    torch.testing.assert_close(o, naive_gla(**inputs, scale=0.3)[0], atol=1e-13, rtol=1e-12)


def test_chunk_size_must_be_a_power_of_two():
    inputs = make_inputs(1, 8, 1, 4, 4, seed=17)
    with pytest.raises(ValueError, match="power of two"):
        chunk_gla(**inputs, scale=1.0, chunk_size=12)


@pytest.mark.parametrize("impl", ["chunk", "naive"])
def test_strong_decays_long_sequence_float32(impl):
    """Log decays down to -20 (and exactly -20 on whole stretches) stay finite and match float64."""
    inputs = make_inputs(1, 600 if impl == "chunk" else 200, 2, 16, 8, decay_scale=8.0, initial_state=True,
                         requires_grad=True, seed=8)
    with torch.no_grad():
        inputs["g"][:, 100:180] = -20.0
        inputs["g"][:, 190:200] = 0.0
    reference = {name: x.double().detach().requires_grad_() for name, x in inputs.items()}
    expected = outputs_and_grads(gla, reference, impl="naive")
    actual = outputs_and_grads(gla, inputs, impl=impl)
    assert inputs["g"].min() == -20.0
    assert_close(actual, expected, atol=1e-4, rtol=1e-4, check_dtype=False)  # float32 run vs float64 reference


def test_bfloat16_within_tolerance():
    inputs = make_inputs(2, 100, 2, 16, 16, initial_state=True, reset_prob=0.05, seed=9)
    reference = {n: x.double() if x.is_floating_point() else x for n, x in inputs.items()}
    o_ref, s_ref = gla(**reference, output_final_state=True, impl="naive")
    low = {n: x.bfloat16() if n in ("q", "k", "v", "g") else x for n, x in inputs.items()}
    leaves = {n: x.requires_grad_() if x.is_floating_point() else x for n, x in low.items()}
    o, final_state = gla(**leaves, output_final_state=True, impl="chunk")
    assert o.dtype == torch.bfloat16 and final_state.dtype == torch.float32
    (o.float().sum() + final_state.sum()).backward()
    assert all(torch.isfinite(leaves[n].grad).all() for n in ("q", "k", "v", "g", "initial_state"))
    scale = o_ref.abs().max()
    assert (o.double() - o_ref).abs().max() / scale < 3e-2
    assert (final_state.double() - s_ref).abs().max() / s_ref.abs().max() < 3e-2


def test_naive_matches_fla_reference():
    inputs = make_inputs(2, 40, 3, 8, 6, initial_state=True, seed=10)
    o, final_state = gla(**inputs, output_final_state=True, impl="naive")
    o_fla, s_fla = naive_recurrent_gla(inputs["q"], inputs["k"], inputs["v"], inputs["g"],
                                       initial_state=inputs["initial_state"], output_final_state=True)
    torch.testing.assert_close(o, o_fla, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(final_state, s_fla, atol=1e-5, rtol=1e-5)


def test_auto_uses_chunk_on_cpu_and_scale_default():
    inputs = make_inputs(1, 20, 1, 9, 3, dtype=torch.float64, seed=11)
    o_auto, _ = gla(**inputs)
    o_chunk, _ = gla(**inputs, scale=9 ** -0.5, impl="chunk")
    assert torch.equal(o_auto, o_chunk)
    assert gla(**inputs)[1] is None


def test_bad_inputs_raise():
    inputs = make_inputs(2, 10, 2, 4, 3, seed=12)
    with pytest.raises(ValueError, match="share a shape"):
        gla(inputs["q"], inputs["k"][:, :, :, :3], inputs["v"], inputs["g"])
    with pytest.raises(ValueError, match="values"):
        gla(inputs["q"], inputs["k"], inputs["v"][:, :5], inputs["g"])
    with pytest.raises(ValueError, match="resets"):
        gla(**inputs, resets=torch.zeros(2, 10))
    with pytest.raises(ValueError, match="batch size must be 1"):
        gla(**inputs, cu_seqlens=torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="initial_state"):
        gla(**inputs, initial_state=torch.zeros(1, 2, 4, 3))
    with pytest.raises(ValueError, match="impl"):
        gla(**inputs, impl="fast")


def test_flops_counts_chunk_matmuls():
    assert flops(1, 64, 1, 16, 8, chunk_size=64) == 64 * (2 * 64 * 24 + 4 * 16 * 8)


def test_triton_matches_naive_under_interpreter(fla_interpreter):
    """fla's chunk_gla (the CUDA path) run by the Triton interpreter, tiny fp32, through the resets
    adapter: outputs, final states and gradients of every input."""
    inputs = make_inputs(2, 20, 1, 16, 16, initial_state=True, reset_prob=0.1, requires_grad=True, seed=13)
    inputs["resets"][0, 0] = True  # row 0 drops its initial state
    expected = outputs_and_grads(gla, inputs, impl="naive")
    assert_close(outputs_and_grads(gla, inputs, impl="triton"), expected, atol=1e-4, rtol=1e-4)


def test_triton_cu_seqlens_under_interpreter(fla_interpreter):
    """fla's native varlen path (no resets: cu_seqlens go to fla unchanged)."""
    cu_seqlens = torch.tensor([0, 7, 20])
    inputs = make_inputs(1, 20, 1, 16, 16, seed=14)
    inputs["initial_state"] = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(15))
    expected = gla(**inputs, output_final_state=True, cu_seqlens=cu_seqlens, impl="naive")
    actual = gla(**inputs, output_final_state=True, cu_seqlens=cu_seqlens, impl="triton")
    assert_close(dict(zip("os", actual)), dict(zip("os", expected)), atol=1e-4, rtol=1e-4)
