"""sLSTM: chunk and Triton vs the sequential reference, and the reference vs xLSTM's vanilla cell."""
from __future__ import annotations

from functools import partial
from typing import Callable

import pytest
import torch

from recurlm.kernels.slstm import SLSTMState, flops, slstm
from recurlm.kernels.slstm.examples import make_inputs

from .harness import assert_close, outputs_and_grads

naive = partial(slstm, impl="naive")
chunk = partial(slstm, impl="chunk")


def _leaves(inputs: dict) -> list[torch.Tensor]:
    state = inputs["initial_state"]
    return [inputs["x"], inputs["R"], inputs["bias"]] + (list(state) if state is not None else [])


def _run(fn: Callable, inputs: dict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(output and final state, gradients of a random projection of them w.r.t. every leaf)."""
    results = outputs_and_grads(fn, inputs)
    return results.outputs, results.grads


@pytest.mark.parametrize("batch,seq_len,heads,dim,reset_prob,initial_state", [
    (2, 23, 2, 4, 0.0, False),
    (2, 23, 2, 4, 0.0, True),
    (1, 1, 2, 3, 0.0, True),      # T = 1
    (3, 40, 1, 8, 0.1, True),     # several documents per row, B > 1
])
def test_chunk_matches_naive_float64(batch, seq_len, heads, dim, reset_prob, initial_state):
    inputs = make_inputs(batch, seq_len, heads, dim, dtype=torch.float64, seed=seq_len,
                         reset_prob=reset_prob, initial_state=initial_state, requires_grad=True)
    if reset_prob:
        inputs["resets"][0, 0] = True   # row 0 discards its initial state
    ref_out, ref_grads = _run(naive, inputs)
    out, grads = _run(chunk, inputs)
    assert_close(out, ref_out, atol=1e-12)
    assert_close(grads, ref_grads, atol=1e-10)


def test_packed_rows_equal_documents_alone():
    lengths = [4, 11, 1, 9]
    total = sum(lengths)
    inputs = make_inputs(1, total, 2, 4, dtype=torch.float64, seed=3)
    params = {"R": inputs["R"], "bias": inputs["bias"]}
    starts = torch.tensor([0] + lengths[:-1]).cumsum(0)
    cu_seqlens = torch.tensor([0] + lengths).cumsum(0)
    alone = [naive(inputs["x"][:, s:s + length], **params, output_final_state=True)
             for s, length in zip(starts.tolist(), lengths)]
    resets = torch.zeros(1, total, dtype=torch.bool)
    resets[0, starts] = True
    for fn in (naive, chunk):
        h, _ = fn(inputs["x"], **params, resets=resets)
        torch.testing.assert_close(h, torch.cat([a[0] for a in alone], 1), atol=1e-12, rtol=0)
        h, state = fn(inputs["x"], **params, cu_seqlens=cu_seqlens, output_final_state=True)
        torch.testing.assert_close(h, torch.cat([a[0] for a in alone], 1), atol=1e-12, rtol=0)
        for field in range(4):
            torch.testing.assert_close(state[field], torch.cat([a[1][field] for a in alone]), atol=1e-12, rtol=0)


def test_cu_seqlens_with_initial_states_chunk_matches_naive():
    cu_seqlens = torch.tensor([0, 5, 6, 17])
    inputs = make_inputs(3, 17, 2, 4, dtype=torch.float64, seed=5, initial_state=True, requires_grad=True)
    inputs = {**inputs, "x": inputs["x"][:1].detach().clone().requires_grad_(True), "resets": None}
    ref_out, ref_grads = _run(partial(naive, cu_seqlens=cu_seqlens), inputs)
    out, grads = _run(partial(chunk, cu_seqlens=cu_seqlens), inputs)
    assert out["final_state.c"].shape == (3, 2, 4)
    assert_close(out, ref_out, atol=1e-12)
    assert_close(grads, ref_grads, atol=1e-10)


def test_gradcheck_chunk_float64():
    inputs = make_inputs(2, 5, 2, 2, dtype=torch.float64, seed=1, initial_state=True, requires_grad=True)
    resets = torch.tensor([[False, False, True, False, False], [True, False, False, False, True]])

    def fn(x, R, bias, *state):
        h, final = slstm(x, R, bias, SLSTMState(*state), True, resets, impl="chunk")
        return h, *final

    assert torch.autograd.gradcheck(fn, _leaves(inputs), eps=1e-6, atol=1e-6, fast_mode=True)


def test_strong_gates_stay_finite_and_match():
    """Large preactivations (forget log decays down to about -20, input gates up to about 30)."""
    inputs = make_inputs(2, 100, 2, 4, dtype=torch.float64, seed=7, gate_scale=10.0, recurrent_scale=2.0,
                         initial_state=True, requires_grad=True)
    ref_out, ref_grads = _run(naive, inputs)
    out, grads = _run(chunk, inputs)
    assert all(torch.isfinite(x).all() for x in [*out.values(), *grads.values()])
    assert_close(out, ref_out, atol=1e-9, rtol=1e-9)
    assert_close(grads, ref_grads, atol=1e-7, rtol=1e-7)


def test_bfloat16_within_tolerance():
    """bf16 inputs, float32 state: close to the float64 reference run on the same (rounded) inputs."""
    inputs = make_inputs(2, 30, 2, 8, dtype=torch.bfloat16, seed=11, reset_prob=0.05, initial_state=True)
    h, state = chunk(**inputs, output_final_state=True)
    assert h.dtype == torch.bfloat16 and state.c.dtype == torch.float32
    ref_h, ref_state = naive(**{**inputs, **{n: inputs[n].double() for n in ("x", "R", "bias")}},
                             output_final_state=True)
    torch.testing.assert_close(h.double(), ref_h, atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(state.c.double(), ref_state.c, atol=1e-4, rtol=1e-4)


def _xlstm_vanilla_cell(R: torch.Tensor, bias: torch.Tensor):
    """xLSTM's vanilla sLSTM cell (float32) holding our R [H, D, 4, D] and bias [4, H, D]."""
    from xlstm.blocks.slstm.cell import sLSTMCell, sLSTMCellConfig

    heads, dim = R.shape[0], R.shape[1]
    cell = sLSTMCell(sLSTMCellConfig(hidden_size=heads * dim, num_heads=heads, backend="vanilla",
                                     dtype="float32", enable_automatic_mixed_precision=False))
    with torch.no_grad():
        cell._recurrent_kernel_.copy_(cell._recurrent_kernel_ext2int(R))
        cell._bias_.copy_(cell._bias_ext2int(bias.permute(1, 0, 2)))
    return cell


@pytest.mark.parametrize("initial_state", [False, True])
def test_naive_matches_xlstm_vanilla_cell(initial_state):
    inputs = make_inputs(2, 16, 2, 4, dtype=torch.float32, seed=9, initial_state=initial_state, requires_grad=True)
    x, R, bias, state = inputs["x"], inputs["R"], inputs["bias"], inputs["initial_state"]
    batch, seq_len, _, heads, dim = x.shape
    cell = _xlstm_vanilla_cell(R.detach(), bias.detach())
    cell_state = None
    if initial_state:  # the cell's state is [4, B, H * D] in the order (h, c, n, m)
        cell_state = torch.stack([state.h, state.c, state.n, state.m]).reshape(4, batch, heads * dim)
    ref_h, ref_state = cell(x.reshape(batch, seq_len, -1), cell_state)      # h [B, H, T, D]
    h, final = naive(**inputs, output_final_state=True)
    torch.testing.assert_close(h, ref_h.transpose(1, 2), atol=1e-5, rtol=1e-5)
    ours = torch.stack([final.h, final.c, final.n, final.m]).reshape(4, batch, heads * dim)
    torch.testing.assert_close(ours, ref_state, atol=1e-5, rtol=1e-5)

    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(h.shape, generator=gen)
    ref_leaves = [x, cell._recurrent_kernel_, cell._bias_] + (list(state) if initial_state else [])
    ref_grads = torch.autograd.grad((ref_h.transpose(1, 2) * weight).sum(), ref_leaves)
    grads = torch.autograd.grad((h * weight).sum(), _leaves(inputs))
    torch.testing.assert_close(grads[0], ref_grads[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cell._recurrent_kernel_ext2int(grads[1]), ref_grads[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cell._bias_ext2int(grads[2].permute(1, 0, 2)), ref_grads[2], atol=1e-5, rtol=1e-4)
    for ours_g, ref_g in zip(grads[3:], ref_grads[3:]):
        torch.testing.assert_close(ours_g, ref_g, atol=1e-5, rtol=1e-4)


def test_invalid_inputs_raise():
    inputs = make_inputs(1, 6, 2, 4)
    with pytest.raises(ValueError, match="R must be"):
        slstm(**{**inputs, "R": inputs["R"][:, :, :2]})
    with pytest.raises(ValueError, match="x must be"):
        slstm(**{**inputs, "x": inputs["x"][:, :, :3]})
    with pytest.raises(ValueError, match="initial_state.m"):
        slstm(**{**inputs, "initial_state": SLSTMState(*(torch.zeros(1, 2, 4) for _ in range(2)),
                                                       torch.zeros(1, 2), torch.zeros(1, 2, 4))})


def test_flops_counts_recurrent_matmul_and_pointwise():
    assert flops(2, 10, 3, 8) == 2 * 10 * 3 * (2 * 8 * 32 + 20 * 8)


@pytest.fixture(params=["fused", "steps"])
def triton_path(request, monkeypatch) -> str:
    """Each Triton path of ``impl="triton"``: tiny heads take the fused kernel; "steps" lowers
    ``FUSED_MAX_HEAD_DIM`` so that they take the per-token GEMM + cell path that large heads take."""
    if request.param == "steps":
        from recurlm.kernels.slstm import triton as slstm_triton_module
        monkeypatch.setattr(slstm_triton_module, "FUSED_MAX_HEAD_DIM", 0)
    return request.param


@pytest.mark.parametrize("reset_prob,initial_state,dim", [(0.0, False, 4), (0.3, True, 3)])
def test_triton_matches_naive_interpreter(triton_path, reset_prob, initial_state, dim):
    """Both Triton paths (fwd + bwd) under TRITON_INTERPRET=1, float32, tiny shapes; dim = 3
    exercises the masked lanes of a padded head block."""
    inputs = make_inputs(2, 7, 2, dim, seed=21, reset_prob=reset_prob, initial_state=initial_state,
                         requires_grad=True)
    if reset_prob:
        inputs["resets"][0, 0] = True
    ref_out, ref_grads = _run(naive, inputs)
    out, grads = _run(partial(slstm, impl="triton"), inputs)
    assert_close(out, ref_out, atol=1e-6, rtol=1e-5)
    assert_close(grads, ref_grads, atol=1e-5, rtol=1e-5)


def test_triton_cu_seqlens_matches_naive_interpreter(triton_path):
    cu_seqlens = torch.tensor([0, 2, 7])
    inputs = make_inputs(2, 7, 1, 4, seed=22, initial_state=True, requires_grad=True)
    inputs = {**inputs, "x": inputs["x"][:1].detach().clone().requires_grad_(True), "resets": None}
    ref_out, ref_grads = _run(partial(naive, cu_seqlens=cu_seqlens), inputs)
    out, grads = _run(partial(slstm, impl="triton", cu_seqlens=cu_seqlens), inputs)
    assert_close(out, ref_out, atol=1e-6, rtol=1e-5)
    assert_close(grads, ref_grads, atol=1e-5, rtol=1e-5)
