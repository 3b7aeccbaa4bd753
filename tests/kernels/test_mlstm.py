"""mLSTM: chunk and Triton vs the sequential reference, and the reference vs mlstm_kernels."""
from __future__ import annotations

from functools import partial
from typing import Callable

import pytest
import torch

from recurlm.kernels.mlstm import MLSTMState, flops, mlstm
from recurlm.kernels.mlstm.chunk import chunk_mlstm
from recurlm.kernels.mlstm.examples import make_inputs

from .harness import assert_close, outputs_and_grads

GATE_NAMES = ("q", "k", "v", "i", "f")
naive = partial(mlstm, impl="naive")
chunk = partial(mlstm, impl="chunk")


def _leaves(inputs: dict) -> list[torch.Tensor]:
    state = inputs["initial_state"]
    return [inputs[n] for n in GATE_NAMES] + (list(state) if state is not None else [])


def _run(fn: Callable, inputs: dict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(output and final state, gradients of a random projection of them w.r.t. every leaf)."""
    results = outputs_and_grads(fn, inputs)
    return results.outputs, results.grads


@pytest.mark.parametrize("batch,seq_len,heads,dk,dv,reset_prob,initial_state", [
    (2, 37, 2, 8, 6, 0.0, False),    # T not a multiple of the chunk size
    (2, 37, 2, 8, 6, 0.0, True),
    (1, 1, 2, 4, 4, 0.0, True),      # T = 1
    (3, 64, 1, 8, 8, 0.08, True),    # several documents per row, B > 1
    (2, 50, 2, 4, 8, 0.3, False),    # documents shorter than a chunk
    (2, 300, 1, 4, 4, 0.01, True),   # many chunks, documents spanning several of them
])
@pytest.mark.parametrize("chunk_size", [16, 64])
def test_chunk_matches_naive_float64(batch, seq_len, heads, dk, dv, reset_prob, initial_state, chunk_size):
    inputs = make_inputs(batch, seq_len, heads, dk, dv, dtype=torch.float64, seed=seq_len,
                         reset_prob=reset_prob, initial_state=initial_state, requires_grad=True)
    if reset_prob:
        inputs["resets"][:, 16] = True  # a reset exactly on a chunk border
        inputs["resets"][0, 0] = True   # row 0 discards its initial state
    ref_out, ref_grads = _run(naive, inputs)
    out, grads = _run(partial(chunk_mlstm, chunk_size=chunk_size), inputs)
    assert_close(out, ref_out, atol=1e-10)
    assert_close(grads, ref_grads, atol=1e-9)


@pytest.mark.parametrize("reset_prob", [0.0, 0.05])
def test_segments_match_naive_float64(reset_prob):
    """Sequences longer than segment_chunks chunks run as segments with the state passed on."""
    inputs = make_inputs(2, 61, 2, 4, 6, dtype=torch.float64, seed=5, reset_prob=reset_prob,
                         initial_state=True, requires_grad=True)
    ref_out, ref_grads = _run(naive, inputs)
    out, grads = _run(partial(chunk_mlstm, chunk_size=4, segment_chunks=3), inputs)  # 6 segments
    assert_close(out, ref_out, atol=1e-10)
    assert_close(grads, ref_grads, atol=1e-9)


def test_packed_rows_equal_documents_alone():
    """resets and cu_seqlens: a packed row equals its documents run alone from their own states."""
    lengths = [5, 19, 1, 23]
    total = sum(lengths)
    inputs = make_inputs(1, total, 2, 4, 6, dtype=torch.float64, seed=3)
    starts = torch.tensor([0] + lengths[:-1]).cumsum(0)
    cu_seqlens = torch.tensor([0] + lengths).cumsum(0)
    alone = [naive(**{n: inputs[n][:, s:s + length] for n in GATE_NAMES}, output_final_state=True)
             for s, length in zip(starts.tolist(), lengths)]
    resets = torch.zeros(1, total, dtype=torch.bool)
    resets[0, starts] = True
    for fn in (naive, chunk):
        h, _ = fn(**{n: inputs[n] for n in GATE_NAMES}, resets=resets)
        torch.testing.assert_close(h, torch.cat([a[0] for a in alone], 1), atol=1e-12, rtol=0)
        h, state = fn(**{n: inputs[n] for n in GATE_NAMES}, cu_seqlens=cu_seqlens, output_final_state=True)
        torch.testing.assert_close(h, torch.cat([a[0] for a in alone], 1), atol=1e-12, rtol=0)
        for field in range(3):
            torch.testing.assert_close(state[field], torch.cat([a[1][field] for a in alone]), atol=1e-12, rtol=0)


def test_cu_seqlens_with_initial_states_chunk_matches_naive():
    cu_seqlens = torch.tensor([0, 7, 8, 30])
    inputs = make_inputs(3, 30, 2, 4, 4, dtype=torch.float64, seed=5, initial_state=True)
    inputs = {**{n: inputs[n][:1].clone().requires_grad_(True) for n in GATE_NAMES},
              "initial_state": MLSTMState(*(s.clone().requires_grad_(True) for s in inputs["initial_state"])),
              "resets": None}
    ref_out, ref_grads = _run(partial(naive, cu_seqlens=cu_seqlens), inputs)
    out, grads = _run(partial(chunk, cu_seqlens=cu_seqlens), inputs)
    assert out["final_state.C"].shape == (3, 2, 4, 4)
    assert_close(out, ref_out, atol=1e-10)
    assert_close(grads, ref_grads, atol=1e-9)


def test_varlen_padding_over_whole_chunks_stays_exact():
    """A short sequence padded by several whole chunks of identity steps (i = -inf, f = +inf)."""
    from recurlm.kernels.dispatch import run_varlen

    cu_seqlens = torch.tensor([0, 3, 80])
    inputs = make_inputs(1, 80, 2, 4, 4, dtype=torch.float64, seed=6, requires_grad=True)
    ref_out, ref_grads = _run(partial(naive, cu_seqlens=cu_seqlens), inputs)

    def padded_chunk(q, k, v, i, f, initial_state=None, output_final_state=False, resets=None):
        inf = float("inf")
        return run_varlen(partial(chunk_mlstm, chunk_size=16), [q, k, v, i, f], [0.0, 0.0, 0.0, -inf, inf],
                          cu_seqlens, initial_state=initial_state, output_final_state=output_final_state)

    out, grads = _run(padded_chunk, inputs)
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert_close(out, ref_out, atol=1e-10)
    assert_close(grads, ref_grads, atol=1e-9)


def test_gradcheck_chunk_float64():
    inputs = make_inputs(2, 6, 1, 3, 2, dtype=torch.float64, seed=1, initial_state=True, requires_grad=True)
    resets = torch.tensor([[False, False, False, True, False, False], [True, False, True, False, False, True]])

    def fn(*leaves):
        q, k, v, i, f, C, n, m = leaves
        h, state = chunk_mlstm(q, k, v, i, f, MLSTMState(C, n, m), True, resets, chunk_size=4)
        return h, *state

    assert torch.autograd.gradcheck(fn, _leaves(inputs), eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("seq_len", [300])
def test_strong_forget_gates_stay_finite_and_match(seq_len):
    """Forget preactivations down to -20 (log decay about -20) and large input gates."""
    inputs = make_inputs(1, seq_len, 2, 8, 8, dtype=torch.float64, seed=7, forget_range=(-20.0, 8.0),
                         input_scale=10.0, initial_state=True, requires_grad=True)
    ref_out, ref_grads = _run(naive, inputs)
    out, grads = _run(chunk, inputs)
    assert all(torch.isfinite(x).all() for x in [*out.values(), *grads.values()])
    assert_close(out, ref_out, atol=1e-8, rtol=1e-8)
    assert_close(grads, ref_grads, atol=1e-6, rtol=1e-6)
    f32 = {n: inputs[n].detach().float().requires_grad_(True) for n in GATE_NAMES}
    f32 = {**f32, "initial_state": MLSTMState(*(s.detach().float().requires_grad_(True) for s in inputs["initial_state"])),
           "resets": None}
    out32, grads32 = _run(chunk, f32)
    assert all(torch.isfinite(x).all() for x in [*out32.values(), *grads32.values()])
    torch.testing.assert_close(out32["o"].double(), ref_out["o"], atol=1e-3, rtol=1e-3)


def test_long_float32_sequence_matches_float64_reference():
    """Float32 over 32 chunks (the benchmark length): the closed-form weights between chunks
    (differences of cumulative log decays) stay within float32 accuracy of the float64 recurrence."""
    inputs = make_inputs(1, 2048, 1, 8, 8, dtype=torch.float64, seed=8, initial_state=True)
    ref_h, ref_state = naive(**inputs, output_final_state=True)
    f32 = {**{n: inputs[n].float() for n in GATE_NAMES},
           "initial_state": MLSTMState(*(s.float() for s in inputs["initial_state"]))}
    h, state = chunk(**f32, output_final_state=True)
    torch.testing.assert_close(h.double(), ref_h, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(state.C.double(), ref_state.C, atol=1e-5, rtol=1e-4)


def test_bfloat16_within_tolerance():
    """bf16 inputs, float32 state: close to the float64 reference run on the same (rounded) inputs."""
    inputs = make_inputs(2, 45, 2, 16, 16, dtype=torch.bfloat16, seed=11, reset_prob=0.05, initial_state=True)
    h, state = chunk(**inputs, output_final_state=True)
    assert h.dtype == torch.bfloat16 and state.C.dtype == torch.float32
    ref_h, ref_state = naive(**{**inputs, **{n: inputs[n].double() for n in GATE_NAMES}},
                             output_final_state=True)
    torch.testing.assert_close(h.double(), ref_h, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(state.C.double(), ref_state.C, atol=1e-4, rtol=1e-4)


def _to_mk(x: torch.Tensor) -> torch.Tensor:
    """recurlm [B, T, H, ...] -> mlstm_kernels [B, H, T, ...]."""
    return x.transpose(1, 2).contiguous()


def test_naive_matches_mlstm_kernels_recurrent_and_chunkwise():
    from mlstm_kernels.torch.chunkwise.native.fwbw import mlstm_chunkwise__native_autograd
    from mlstm_kernels.torch.recurrent.native_sequence import mlstm_recurrent_sequence__native_fw

    inputs = make_inputs(2, 64, 2, 8, 8, dtype=torch.float64, seed=2, initial_state=True, requires_grad=True)
    out, grads = _run(naive, inputs)
    state = inputs["initial_state"]
    mk_args = [_to_mk(inputs[n]) for n in GATE_NAMES] + [state.C, state.n, state.m[..., None]]

    def mk(kernel, **kwargs):
        def fn(**_):
            h, (C, n, m) = kernel(*mk_args, return_last_states=True, **kwargs)
            return _to_mk(h), MLSTMState(C, n, m[..., 0])
        return fn

    seq_out, _ = _run(mk(mlstm_recurrent_sequence__native_fw, dtype_state=torch.float64), inputs)
    assert_close(out, seq_out, atol=1e-12)
    chunk_out, chunk_grads = _run(mk(mlstm_chunkwise__native_autograd, chunk_size=16), inputs)
    assert_close(out, chunk_out, atol=1e-10)
    assert_close(grads, chunk_grads, atol=1e-8)


def test_naive_matches_mlstm_kernels_parallel():
    """The parallel kernel has no fresh-state term m = 0 in its stabiliser: equal up to the eps term."""
    from mlstm_kernels.torch.parallel.native.fwbw import mlstm_parallel__native_autograd

    inputs = make_inputs(2, 40, 2, 8, 8, dtype=torch.float64, seed=4)
    h, _ = naive(**inputs)
    ref = mlstm_parallel__native_autograd(*(_to_mk(inputs[n]) for n in GATE_NAMES))
    torch.testing.assert_close(h, _to_mk(ref), atol=1e-5, rtol=1e-5)
    h0, _ = naive(**inputs, eps=0.0)
    ref0 = mlstm_parallel__native_autograd(*(_to_mk(inputs[n]) for n in GATE_NAMES), eps=0.0)
    torch.testing.assert_close(h0, _to_mk(ref0), atol=1e-12, rtol=1e-12)


def test_invalid_inputs_raise():
    inputs = make_inputs(1, 8, 2, 4, 4)
    with pytest.raises(ValueError, match="f must be"):
        mlstm(**{**inputs, "f": inputs["f"][..., :1]})
    with pytest.raises(ValueError, match="resets must be"):
        mlstm(**{**inputs, "resets": torch.zeros(1, 8)})
    with pytest.raises(ValueError, match="initial_state"):
        mlstm(**{**inputs, "initial_state": MLSTMState(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4),
                                                       torch.zeros(1, 3))})
    with pytest.raises(ValueError, match="impl"):
        mlstm(**inputs, impl="fast")


def test_flops_counts_chunkwise_matmuls():
    assert flops(1, 128, 2, 16, 32, chunk_size=64) == 2 * 2 * 128 * (64 * 16 + 64 * 32 + 2 * 16 * 32)


@pytest.mark.parametrize("reset_prob,initial_state,block_v,strong", [
    (0.0, False, None, False), (0.25, True, 4, False), (0.0, True, None, True)])
def test_triton_matches_naive_interpreter(reset_prob, initial_state, block_v, strong):
    """Fused recurrent Triton kernel (fwd + bwd) under TRITON_INTERPRET=1, float32, tiny shapes;
    block_v = 4 splits V = 8 over two programs; strong: forget preactivations down to -20 and
    input gates of scale 10."""
    from recurlm.kernels.mlstm.triton import triton_mlstm

    gates = dict(forget_range=(-20.0, 8.0), input_scale=10.0) if strong else {}
    inputs = make_inputs(2, 9, 2, 4, 8, seed=21, reset_prob=reset_prob, initial_state=initial_state,
                         requires_grad=True, **gates)
    if reset_prob:
        inputs["resets"][0, 0] = True
    ref_out, ref_grads = _run(naive, inputs)
    out, grads = _run(partial(triton_mlstm, block_v=block_v), inputs)
    assert_close(out, ref_out, atol=2e-6, rtol=1e-5)
    assert_close(grads, ref_grads, atol=2e-5, rtol=1e-5)


def test_triton_cu_seqlens_matches_naive_interpreter():
    cu_seqlens = torch.tensor([0, 3, 8])
    inputs = make_inputs(2, 8, 1, 4, 4, seed=22, initial_state=True, requires_grad=True)
    inputs = {**{n: inputs[n][:1].detach().clone().requires_grad_(True) for n in GATE_NAMES},
              "initial_state": inputs["initial_state"], "resets": None}
    ref_out, ref_grads = _run(partial(naive, cu_seqlens=cu_seqlens), inputs)
    out, grads = _run(partial(mlstm, impl="triton", cu_seqlens=cu_seqlens), inputs)
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert_close(out, ref_out, atol=2e-6, rtol=1e-5)
    assert_close(grads, ref_grads, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("head_dim", [64, 384, 1024, 1280])
def test_state_tile_is_capped(head_dim):
    """Large heads take narrower value blocks (and more warps) instead of an uncapped [BK, BV] tile."""
    from recurlm.kernels.mlstm.triton import STATE_TILE_ELEMENTS, _launch_config

    block_k, block_v, num_blocks, num_warps = _launch_config(head_dim, head_dim, None)
    assert block_k >= head_dim and num_blocks * block_v >= head_dim
    assert block_k * block_v * 4 // num_warps <= STATE_TILE_ELEMENTS
