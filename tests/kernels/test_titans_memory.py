"""Tests of the Titans memory op: naive vs chunk (float64, forward and backward), resets, varlen,
gradcheck, strong decays, bf16, peers (titans-pytorch NeuralMemory, fla's titans coefficients) and
the Triton kernel under the interpreter."""
import pytest
import torch

from recurlm.kernels.boundaries import resets_from_cu_seqlens
from recurlm.kernels.titans_memory import TitansMemoryState, flops, titans_memory
from recurlm.kernels.titans_memory.chunk import chunk_coefficients
from recurlm.kernels.titans_memory.common import memory_forward, memory_gradient
from recurlm.kernels.titans_memory.examples import make_inputs

from .harness import Results, assert_close, outputs_and_grads


def random_resets(B: int, T: int, seed: int = 1) -> torch.Tensor:
    """Several documents per row at arbitrary positions; row 0 continues a carried state."""
    g = torch.Generator().manual_seed(seed)
    resets = torch.rand(B, T, generator=g) < 0.2
    resets[0, 0] = False
    if B > 1:
        resets[1, 0] = True
    return resets


def random_state(B: int, weights, seed: int = 2) -> TitansMemoryState:
    g = torch.Generator().manual_seed(seed)
    make = lambda w: (0.3 * torch.randn(B, *w.shape, generator=g, dtype=torch.float64)).to(w.dtype).requires_grad_()
    return TitansMemoryState(tuple(make(w) for w in weights), tuple(make(w) for w in weights))


def flat_outputs(y, state):
    return [y, *state.weights, *state.momentum]


def run_with_grads(inputs: dict, state, impl: str, **kwargs) -> Results:
    """Outputs (y, final weights, final momentum) and gradients of a fixed random loss w.r.t. every
    input (init_weights: zero where no reset uses them)."""
    return outputs_and_grads(titans_memory, {**inputs, "initial_state": state}, allow_unused=True, impl=impl, **kwargs)


@pytest.mark.parametrize("depth,activation", [(1, "gelu"), (2, "gelu"), (2, "silu")])
def test_memory_gradient_matches_autograd(depth, activation):
    x = make_inputs(B=1, T=5, H=2, D=4, depth=depth, dtype=torch.float64)
    weights = [w.expand(1, *w.shape).clone().requires_grad_() for w in x["init_weights"]]
    k, v = x["k"].transpose(1, 2), x["v"].transpose(1, 2)
    for t in range(5):
        loss = (memory_forward(weights, k[:, :, t:t + 1], activation) - v[:, :, t:t + 1]).pow(2).sum()
        expected = torch.autograd.grad(loss, weights)
        factors = memory_gradient(weights, k[:, :, t:t + 1], v[:, :, t:t + 1], activation)
        assert_close([a.transpose(-1, -2) @ d for a, d in factors], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("depth,activation", [(1, "gelu"), (2, "gelu"), (2, "silu")])
@pytest.mark.parametrize("T,chunk_size", [(1, 1), (9, 1), (11, 4), (7, 16), (13, 5)])
@pytest.mark.parametrize("with_resets", [False, True])
def test_chunk_matches_naive(depth, activation, T, chunk_size, with_resets):
    """Forward, final state and gradients of every input (incl. initial state and init weights)."""
    B = 2
    results = []
    for impl in ("naive", "chunk"):
        x = make_inputs(B=B, T=T, H=2, D=4, depth=depth, hidden=6, dtype=torch.float64, requires_grad=True)
        state = random_state(B, x["init_weights"])
        resets = random_resets(B, T) if with_resets else None
        results.append(run_with_grads(x, state, impl, resets=resets, chunk_size=chunk_size, activation=activation))
    naive, chunk = results
    assert_close(chunk.outputs, naive.outputs, rtol=1e-10, atol=1e-10)
    assert_close(chunk.grads, naive.grads, rtol=1e-9, atol=1e-9)


def test_chunk_size_one_is_the_per_token_recurrence():
    """chunk_size=1: gradient at M_{t-1} every token (checked against a hand-unrolled linear memory)."""
    x = make_inputs(B=1, T=6, H=1, D=3, dtype=torch.float64)
    y, final = titans_memory(**x, impl="chunk", chunk_size=1, output_final_state=True)
    W, S = x["init_weights"][0][0], torch.zeros(3, 3, dtype=torch.float64)
    for t in range(6):
        k, v, q = (x[n][0, t, 0][None] for n in ("k", "v", "q"))
        th, et, al = (x[n][0, t, 0] for n in ("theta", "eta", "alpha"))
        S = et * S - th * 2 * k.T @ (k @ W - v)
        W = (1 - al) * W + S
        torch.testing.assert_close(y[0, t, 0], (q @ W)[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final.weights[0][0, 0], W, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("depth", [1, 2])
def test_resets_restore_init_weights(depth):
    """A document after a reset equals the same document run alone from init_weights when it
    starts on the mini-batch grid; the row before the reset is unaffected by what follows."""
    C, T, p = 4, 14, 8
    x = make_inputs(B=2, T=T, H=2, D=4, depth=depth, dtype=torch.float64)
    resets = torch.zeros(2, T, dtype=torch.bool)
    resets[1, p] = True
    state = random_state(2, x["init_weights"])
    y, final = titans_memory(**x, initial_state=state, resets=resets, chunk_size=C, output_final_state=True)
    tail = {n: (t[1:, p:] if torch.is_tensor(t) else t) for n, t in x.items()}
    y_tail, final_tail = titans_memory(**tail, chunk_size=C, output_final_state=True)
    torch.testing.assert_close(y[1:, p:], y_tail, rtol=1e-12, atol=1e-12)
    assert_close([w[1:] for w in final.weights + final.momentum], final_tail.weights + final_tail.momentum,
                     rtol=1e-12, atol=1e-12)
    y_plain = titans_memory(**x, initial_state=state, chunk_size=C)[0]
    torch.testing.assert_close(y[:, :p], y_plain[:, :p], rtol=0, atol=0)
    torch.testing.assert_close(y[0], y_plain[0], rtol=0, atol=0)


@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_cu_seqlens(impl):
    """Each sequence runs as its own row (own grid), with per-sequence initial/final states; with
    chunk_size 1 it equals the resets form."""
    cu = torch.tensor([0, 5, 6, 15])
    x = make_inputs(B=1, T=15, H=2, D=4, depth=2, dtype=torch.float64, requires_grad=True)
    state = random_state(3, x["init_weights"])
    y, final = titans_memory(**x, initial_state=state, cu_seqlens=cu, chunk_size=4, output_final_state=True, impl=impl)
    assert final.weights[0].shape[0] == 3
    for n, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        part = {name: (t[:, s:e] if torch.is_tensor(t) else t) for name, t in x.items()}
        row = TitansMemoryState(tuple(w[n:n + 1] for w in state.weights), tuple(m[n:n + 1] for m in state.momentum))
        y_n, final_n = titans_memory(**part, initial_state=row, chunk_size=4, output_final_state=True, impl="naive")
        torch.testing.assert_close(y[:, s:e], y_n, rtol=1e-10, atol=1e-10)
        assert_close([w[n:n + 1] for w in final.weights + final.momentum], final_n.weights + final_n.momentum,
                         rtol=1e-10, atol=1e-10)
    y.sum().backward()
    assert all(torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0 for t in (x["q"], *state.weights, *state.momentum))
    y1 = titans_memory(**x, cu_seqlens=cu, chunk_size=1, impl=impl)[0]
    y2 = titans_memory(**x, resets=resets_from_cu_seqlens(cu, 15), chunk_size=1, impl=impl)[0]
    torch.testing.assert_close(y1, y2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("depth", [1, 2])
def test_gradcheck(depth):
    x = make_inputs(B=2, T=5, H=1, D=2, depth=depth, hidden=3, dtype=torch.float64, requires_grad=True)
    state = random_state(2, x["init_weights"])
    resets = torch.tensor([[False, False, True, False, False], [True, False, False, True, True]])

    def fn(q, k, v, theta, eta, alpha, *weights_and_state):
        L = depth
        init, w, m = weights_and_state[:L], weights_and_state[L:2 * L], weights_and_state[2 * L:]
        y, final = titans_memory(q, k, v, theta, eta, alpha, init_weights=init, initial_state=TitansMemoryState(w, m),
                                 resets=resets, chunk_size=2, output_final_state=True, impl="chunk")
        return (y, *final.weights, *final.momentum)

    args = (*(x[n] for n in ("q", "k", "v", "theta", "eta", "alpha")), *x["init_weights"], *state.weights,
            *state.momentum)
    assert torch.autograd.gradcheck(fn, args, fast_mode=True)


@pytest.mark.parametrize("depth", [1, 2])
def test_strong_decay_long_sequence(depth):
    """log eta and log(1 - alpha) down to -20, T = 384: finite and equal to the naive form."""
    x = make_inputs(B=1, T=384, H=1, D=8, depth=depth, dtype=torch.float64, log_eta_min=-20, log_keep_min=-20)
    resets = random_resets(1, 384)
    y_n, s_n = titans_memory(**x, resets=resets, chunk_size=32, impl="naive", output_final_state=True)
    y_c, s_c = titans_memory(**x, resets=resets, chunk_size=32, impl="chunk", output_final_state=True)
    assert torch.isfinite(y_c).all()
    assert_close(flat_outputs(y_c, s_c), flat_outputs(y_n, s_n), rtol=1e-9, atol=1e-9)
    x32 = {n: (t.float() if torch.is_tensor(t) else tuple(w.float() for w in t)) for n, t in x.items()}
    x32 = {n: (t.requires_grad_() if torch.is_tensor(t) else t) for n, t in x32.items()}
    y32 = titans_memory(**x32, resets=resets, chunk_size=32, impl="chunk")[0]
    y32.sum().backward()
    assert torch.isfinite(y32).all() and all(torch.isfinite(x32[n].grad).all() for n in ("theta", "eta", "alpha"))
    torch.testing.assert_close(y32.double(), y_n, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("depth", [1, 2])
def test_bf16_within_tolerance(depth):
    x = make_inputs(B=2, T=40, H=2, D=16, depth=depth, dtype=torch.float64)
    resets = random_resets(2, 40)
    y_ref, s_ref = titans_memory(**x, resets=resets, chunk_size=16, impl="naive", output_final_state=True)
    xb = {n: (t.bfloat16() if torch.is_tensor(t) else t) for n, t in x.items()}
    y, state = titans_memory(**xb, resets=resets, chunk_size=16, impl="chunk", output_final_state=True)
    assert y.dtype == torch.bfloat16 and state.weights[0].dtype == torch.float32
    scale = y_ref.abs().max()
    assert (y.double() - y_ref).abs().max() < 3e-2 * scale
    assert (state.weights[-1].double() - s_ref.weights[-1]).abs().max() < 3e-2 * s_ref.weights[-1].abs().max()


def test_bad_inputs_raise():
    x = make_inputs(B=2, T=4, H=2, D=4)
    with pytest.raises(ValueError, match="theta"):
        titans_memory(**{**x, "theta": x["theta"][..., :1]})
    with pytest.raises(ValueError, match="init_weights"):
        titans_memory(**{**x, "init_weights": None})
    with pytest.raises(ValueError, match="cu_seqlens"):
        titans_memory(**x, cu_seqlens=torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="chunk_size"):
        titans_memory(**x, chunk_size=0)
    with pytest.raises(NotImplementedError):
        titans_memory(**make_inputs(B=1, T=4, H=1, D=4, depth=2), impl="triton")


def test_flops_counts_chunks():
    assert flops(1, 32, 1, 16, chunk_size=16) == 2 * flops(1, 16, 1, 16, chunk_size=16)
    assert flops(1, 16, 1, 16, depth=2) > flops(1, 16, 1, 16, depth=1)


# ----------------------------------------------------------------------------- peers

@pytest.mark.parametrize("mini_batch,T", [(1, 6), (4, 10), (None, 7)])
def test_matches_titans_pytorch_neural_memory(mini_batch, T):
    """titans-pytorch NeuralMemory with a plain 2-layer GELU MemoryMLP (no residual/LayerNorm),
    store chunk_size 1 (per-token gates) and TTT batch_size = our chunk_size (None: one mini-batch
    for the whole sequence, gradients all at the initial weights).

    Its loss is mean((M(k) - v)^2) over D weighted by the adaptive step, so our theta = lr / D.
    Its store chunk_size > 1 (gates averaged per chunk, one summed step per chunk, retrieval from
    the weights after the previous complete chunk) is a different recurrence and cannot match;
    nor can the default ResidualNorm memory, whose LayerNorm gain is itself a memory weight.
    """
    from titans_pytorch import NeuralMemory
    from titans_pytorch.memory_models import MemoryMLP
    torch.manual_seed(0)
    D, H = 4, 2
    mem = NeuralMemory(dim=D * H, dim_head=D, heads=H, chunk_size=1, batch_size=mini_batch,
                       model=MemoryMLP(D, depth=2, expansion_factor=2.0), mem_model_norm_add_residual=False,
                       pre_rmsnorm=False, default_step_transform_max_lr=1.0).double()
    x = torch.randn(2, T, D * H, dtype=torch.float64)
    with torch.no_grad():
        retrieved, tp_state = mem(x)
        heads = lambda t: t.view(2, T, H, D)
        q, k, v = heads(mem.to_queries(x)), heads(mem.to_keys(x)), heads(mem.to_values(x))
        theta = mem.to_adaptive_step[0](x).sigmoid() / D
        eta, alpha = mem.to_momentum[0](x).sigmoid(), mem.to_decay_factor[0](x).sigmoid()
        y, state = titans_memory(q, k, v, theta, eta, alpha, init_weights=tuple(mem.memory_model_parameters),
                                 chunk_size=mini_batch or T, impl="chunk", output_final_state=True)
        gated = y * mem.retrieve_gate(x).squeeze(-1).transpose(1, 2)[..., None]
        ours = mem.combine_heads(gated.reshape(2, T, H * D))
    torch.testing.assert_close(ours, retrieved, rtol=1e-10, atol=1e-10)
    last_weights, last_momentum = tp_state.states
    for n, name in enumerate(("weights.0", "weights.1")):
        torch.testing.assert_close(state.weights[n].reshape(2 * H, *state.weights[n].shape[2:]), last_weights[name])
        torch.testing.assert_close(state.momentum[n].reshape(2 * H, *state.momentum[n].shape[2:]),
                                   last_momentum[name][0])


def test_coefficients_match_fla_titans():
    """The intra-chunk momentum/forgetting coefficients equal fla's titans `combine_params`.

    fla's titans ops themselves cannot be matched end to end: their memory is always
    x + LN(x W) * w + b (LayerNorm with fixed affine, target v - k), their LayerNorm backward
    misses a parenthesis (`D * grad - grad.sum(-1) / (rstd * D)`; the commented-out line next to it
    is the correct formula), so the update is not the gradient of their stated loss, and the read
    adds q W instead of q as the residual. The scan algebra (the part the two share) is compared here.
    """
    from fla.ops.titans.naive import combine_params
    x = make_inputs(B=2, T=8, H=3, D=4, dtype=torch.float64, log_eta_min=-3, log_keep_min=-3)
    coeffs = chunk_coefficients(x["theta"], x["eta"], x["alpha"], None, chunk_size=8)
    fla_in = [x[n].transpose(1, 2)[..., None] for n in ("theta", "alpha", "eta")]
    beta, beta_T, f, f_T, g, G, m_T, n_T = combine_params(*fla_in, seq_len=8)
    torch.testing.assert_close(coeffs.read_mem[:, :, 0], beta)
    torch.testing.assert_close(coeffs.read_mom[:, :, 0], f)
    torch.testing.assert_close(coeffs.read_grad[:, :, 0], torch.tril(G))
    torch.testing.assert_close(coeffs.mem_grad[:, :, 0], g)
    torch.testing.assert_close(coeffs.mom_grad[:, :, 0], n_T)
    torch.testing.assert_close(coeffs.mom_mom[:, :, 0], m_T)
    torch.testing.assert_close(coeffs.mem_mem[:, :, 0], beta_T)


# ----------------------------------------------------------------------------- triton (interpreter)

@pytest.mark.parametrize("T,chunk_size,with_resets,D", [(13, 4, True, 5), (1, 16, False, 5), (20, 16, True, 5),
                                                        (9, 4, True, 40)])
def test_triton_matches_naive(T, chunk_size, with_resets, D):
    """fp32 Triton kernel (forward and backward) vs the float64 naive form, all gradients. D = 40 pads
    to 64: two column blocks per head (COLUMN_BLOCK), whose partial gradients are summed."""
    B = 2
    results = []
    for impl, dtype in (("naive", torch.float64), ("triton", torch.float32)):
        x = make_inputs(B=B, T=T, H=2, D=D, dtype=dtype, requires_grad=True)
        state = random_state(B, x["init_weights"])
        resets = random_resets(B, T) if with_resets else None
        results.append(run_with_grads(x, state, impl, resets=resets, chunk_size=chunk_size))
    assert_close(results[1], results[0], rtol=1e-4, atol=1e-4, check_dtype=False)  # float32 vs float64
