"""local_attention: chunk path against the sequential reference, the reference against SDPA, state passing."""
from __future__ import annotations

import pytest
import torch

from recurlm.kernels.local_attention import LocalAttentionState, flops, local_attention
from recurlm.kernels.local_attention.chunk import chunk_local_attention
from recurlm.kernels.local_attention.examples import make_inputs
from recurlm.kernels.local_attention.naive import banded_sdpa_reference

from .harness import assert_close, outputs_and_grads


def with_impl(impl: str, **extra):
    return lambda **kw: local_attention(**kw, impl=impl, **extra)


SHAPES = [  # batch, seq_len, heads, kv_heads, head_dim, window
    (2, 1, 2, 1, 4, 4), (2, 9, 2, 2, 4, 1), (2, 37, 4, 2, 8, 5), (1, 64, 3, 1, 4, 17), (2, 50, 2, 1, 4, 64)]


@pytest.mark.parametrize("batch,seq_len,heads,kv_heads,head_dim,window", SHAPES)
@pytest.mark.parametrize("reset_prob,initial_state", [(0.0, False), (0.0, True), (0.15, True)])
def test_chunk_matches_naive_float64(batch, seq_len, heads, kv_heads, head_dim, window, reset_prob, initial_state):
    inputs = make_inputs(batch, seq_len, heads, kv_heads, head_dim, window, torch.float64, seed=seq_len,
                         reset_prob=reset_prob, initial_state=initial_state, requires_grad=True)
    expected = outputs_and_grads(with_impl("naive"), inputs)
    assert_close(outputs_and_grads(with_impl("chunk"), inputs), expected, rtol=1e-10, atol=1e-10)
    # other blockings (one query per block; blocks shorter and longer than the window) agree
    for block_size in (1, 3, window + 2):
        blocked = lambda **kw: chunk_local_attention(  # noqa: E731
            **{k: kw[k] for k in ("q", "k", "v", "window", "initial_state", "resets", "output_final_state")},
            scale=head_dim ** -0.5, block_size=block_size)
        assert_close(outputs_and_grads(blocked, inputs), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("reset_prob", [0.0, 0.1])
def test_naive_matches_sdpa_banded_mask(reset_prob):
    inputs = make_inputs(3, 45, 4, 2, 8, 7, torch.float64, seed=2, reset_prob=reset_prob)
    out, _ = local_attention(**inputs, impl="naive")
    expected = banded_sdpa_reference(inputs["q"], inputs["k"], inputs["v"], 7, inputs["resets"])
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("impl", ["naive", "chunk"])
@pytest.mark.parametrize("split", [1, 3, 20, 47])
def test_state_passing_equals_whole_sequence(impl, split):
    inputs = make_inputs(2, 48, 2, 1, 4, 6, torch.float64, seed=4, reset_prob=0.1, initial_state=True)
    inputs["resets"][0, split] = True  # a document starting exactly at the split
    whole, final_whole = local_attention(**inputs, output_final_state=True, impl=impl)
    q, k, v, resets = inputs["q"], inputs["k"], inputs["v"], inputs["resets"]
    first, mid = local_attention(q[:, :split], k[:, :split], v[:, :split], 6, None, inputs["initial_state"], True,
                                 resets[:, :split], impl=impl)
    second, final = local_attention(q[:, split:], k[:, split:], v[:, split:], 6, None, mid, True,
                                    resets[:, split:], impl=impl)
    torch.testing.assert_close(torch.cat([first, second], 1), whole)
    assert_close(final, final_whole, atol=1e-7, rtol=1e-7)


def test_decoding_one_token_at_a_time_equals_parallel():
    inputs = make_inputs(2, 30, 4, 2, 8, 5, torch.float64, seed=5, reset_prob=0.1, initial_state=True)
    parallel, final_parallel = local_attention(**inputs, output_final_state=True)
    state, outputs = inputs["initial_state"], []
    for t in range(30):
        out, state = local_attention(inputs["q"][:, t:t + 1], inputs["k"][:, t:t + 1], inputs["v"][:, t:t + 1], 5,
                                     initial_state=state, output_final_state=True,
                                     resets=inputs["resets"][:, t:t + 1])
        outputs.append(out)
    torch.testing.assert_close(torch.cat(outputs, 1), parallel)
    assert_close(state, final_parallel, atol=1e-7, rtol=1e-7)


@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_reset_discards_cached_tokens(impl):
    inputs = make_inputs(2, 12, 2, 2, 4, 5, torch.float64, seed=6, initial_state=True)
    inputs["resets"] = torch.zeros(2, 12, dtype=torch.bool)
    inputs["resets"][:, 0] = True
    with_cache, final_with = local_attention(**inputs, output_final_state=True, impl=impl)
    without, final_without = local_attention(**{**inputs, "initial_state": None}, output_final_state=True, impl=impl)
    torch.testing.assert_close(with_cache, without)
    assert_close(final_with, final_without, atol=1e-7, rtol=1e-7)
    # and a continuing document does see the cache
    continuing, _ = local_attention(**{**inputs, "resets": None}, impl=impl)
    assert not torch.allclose(continuing[:, :4], without[:, :4])


@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_cu_seqlens_equals_separate_sequences(impl):
    lengths = [4, 1, 40, 9]
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    window = 6
    inputs = make_inputs(1, sum(lengths), 2, 1, 4, window, torch.float64, seed=7, requires_grad=True)
    inputs["initial_state"] = make_inputs(len(lengths), 1, 2, 1, 4, window, torch.float64, seed=8,
                                          initial_state=True, requires_grad=True)["initial_state"]

    def separate(q, k, v, window, initial_state, resets, output_final_state):
        outs, states = [], []
        for n, (start, end) in enumerate(zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist())):
            state = LocalAttentionState(*(t[n:n + 1] for t in initial_state))
            out, final = local_attention(q[:, start:end], k[:, start:end], v[:, start:end], window,
                                         initial_state=state, output_final_state=True, impl="naive")
            outs.append(out)
            states.append(final)
        return torch.cat(outs, 1), LocalAttentionState(*(torch.cat(parts, 0) for parts in zip(*states)))

    packed = with_impl(impl, cu_seqlens=cu_seqlens)
    assert_close(outputs_and_grads(packed, inputs), outputs_and_grads(separate, inputs), rtol=1e-10, atol=1e-10)


def test_gradcheck_chunk():
    inputs = make_inputs(2, 6, 2, 1, 2, 3, torch.float64, seed=9, reset_prob=0.2, initial_state=True,
                         requires_grad=True)
    state, resets = inputs["initial_state"], inputs["resets"]

    def fn(q, k, v, cache_k, cache_v):
        out, final = chunk_local_attention(q, k, v, 3, 0.5, LocalAttentionState(cache_k, cache_v, state.valid), True,
                                           resets, block_size=2)
        return out, final.k, final.v

    assert torch.autograd.gradcheck(fn, (inputs["q"], inputs["k"], inputs["v"], state.k, state.v))


def test_long_sequence_large_logits_stay_finite():
    """Scores of magnitude ~1e3 (scale 100) over 1024 tokens: finite and equal to the reference."""
    inputs = make_inputs(1, 1024, 2, 1, 8, 64, torch.float32, seed=10, reset_prob=0.01, initial_state=True)
    out, state = local_attention(**inputs, scale=100.0, output_final_state=True, impl="chunk")
    reference = {**inputs, **{n: inputs[n].double() for n in ("q", "k", "v")}}
    expected, expected_state = local_attention(**reference, scale=100.0, output_final_state=True, impl="naive")
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(state.k.double(), expected_state.k)


def test_bfloat16_within_tolerance_of_float64():
    inputs = make_inputs(2, 80, 4, 2, 16, 12, torch.bfloat16, seed=11, reset_prob=0.05, initial_state=True,
                         requires_grad=True)
    out, state = local_attention(**inputs, output_final_state=True, impl="chunk")
    assert out.dtype == torch.bfloat16 and state.k.dtype == torch.float32
    grads = torch.autograd.grad(out.float().pow(2).sum(), [inputs["q"], inputs["k"], inputs["v"]])
    assert all(g.dtype == torch.bfloat16 and torch.isfinite(g).all() for g in grads)
    reference = {**inputs, **{n: inputs[n].detach().double() for n in ("q", "k", "v")}}
    expected, _ = local_attention(**reference, impl="naive")
    torch.testing.assert_close(out.double(), expected, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("batch,seq_len,heads,kv_heads,head_dim,window", [
    (2, 1, 2, 1, 4, 4), (1, 20, 2, 2, 8, 3), (2, 21, 4, 2, 8, 5), (1, 40, 2, 1, 16, 20)])
@pytest.mark.parametrize("reset_prob,initial_state", [(0.0, False), (0.15, True)])
def test_triton_matches_naive_interpreted(batch, seq_len, heads, kv_heads, head_dim, window, reset_prob,
                                          initial_state):
    """Forward and backward of the Triton kernels (TRITON_INTERPRET=1, float32), state included."""
    inputs = make_inputs(batch, seq_len, heads, kv_heads, head_dim, window, torch.float32, seed=seq_len,
                         reset_prob=reset_prob, initial_state=initial_state, requires_grad=True)
    expected = outputs_and_grads(with_impl("naive"), inputs)
    assert_close(outputs_and_grads(with_impl("triton"), inputs), expected, rtol=1e-5, atol=1e-5)


def test_triton_cu_seqlens_interpreted():
    cu_seqlens = torch.tensor([0, 5, 6, 19])
    inputs = make_inputs(1, 19, 2, 1, 4, 4, torch.float32, seed=12)
    state = make_inputs(3, 1, 2, 1, 4, 4, torch.float32, seed=13, initial_state=True)["initial_state"]
    out, final = local_attention(**{**inputs, "initial_state": state}, output_final_state=True,
                                 cu_seqlens=cu_seqlens, impl="triton")
    expected, expected_final = local_attention(**{**inputs, "initial_state": state}, output_final_state=True,
                                               cu_seqlens=cu_seqlens, impl="naive")
    torch.testing.assert_close(out, expected)
    assert_close(final, expected_final, atol=1e-7, rtol=1e-7)


def test_bad_inputs_raise():
    inputs = make_inputs(2, 8, 4, 2, 4, 3)
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        local_attention(q[:, :, :3], k, v, 3)
    with pytest.raises(ValueError, match="k and v must be"):
        local_attention(q, k[:, :4], v, 3)
    with pytest.raises(ValueError, match="window must be"):
        local_attention(q, k, v, 0)
    with pytest.raises(ValueError, match="initial_state must be"):
        local_attention(q, k, v, 3, initial_state=LocalAttentionState.empty(2, 4, 2, 4))
    with pytest.raises(ValueError, match="batch size must be 1"):
        local_attention(q, k, v, 3, cu_seqlens=torch.tensor([0, 8]))
    with pytest.raises(ValueError, match="block_size must be"):
        chunk_local_attention(q, k, v, 5, 1.0, block_size=0)
    with pytest.raises(TypeError, match="float64"):
        local_attention(q.double(), k.double(), v.double(), 3, impl="triton")


def test_flops_counts_the_band():
    assert flops(1, 3, 1, 1, 2) == 4 * (1 + 2 + 2)


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("head_dim", [32, 64, 128, 256])
def test_launch_config_fits_shared_memory(arch, head_dim):
    """Blocks per head dim and GPU: the dk/dv backward's measured 24 B per tile element stays within
    one block's shared memory (the compile gate checks the compiled kernels); A100 takes smaller
    blocks than H100 from head dim 128 on."""
    from recurlm.kernels.gpu_arch import shared_memory_limit
    from recurlm.kernels.local_attention.triton import SHARED_BYTES_PER_TILE_ELEMENT, launch_config

    config = launch_config(head_dim, arch)
    assert config.block_d == head_dim
    assert SHARED_BYTES_PER_TILE_ELEMENT * config.block * config.block_d < shared_memory_limit(arch)
    assert launch_config(128, 80).block < launch_config(128, 90).block


def test_interpreter_runs_the_h100_config():
    """Without a GPU the launchers pick the H100 configuration, so the interpreter tests above run it."""
    from recurlm.kernels.gpu_arch import target_arch
    from recurlm.kernels.local_attention.triton import launch_config

    assert target_arch() == 90 and launch_config(16, target_arch()).block == 64
