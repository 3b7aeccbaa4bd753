"""recurlm.kernels.fla_adapter: resets -> fla varlen segments, on CPU, with recurlm's naive ops
standing in for fla's CUDA kernels (they share fla's varlen calling convention)."""
import pytest
import torch

from recurlm.kernels import fla_adapter
from recurlm.kernels.fla_adapter import plan_segments, run_fla_varlen, segment_plan
from recurlm.kernels.gla import gla
from recurlm.kernels.gla.examples import make_inputs
from recurlm.kernels.rwkv6 import rwkv6
from recurlm.kernels.rwkv6.examples import make_inputs as make_rwkv6_inputs

from .harness import assert_close, outputs_and_grads


def naive_gla_varlen(q, k, v, g, *, scale, initial_state, output_final_state, cu_seqlens=None,
                     cu_seqlens_cpu=None):
    """Stands in for fla.ops.gla.chunk_gla: same arguments, recurlm's naive loop."""
    if cu_seqlens is not None:
        assert cu_seqlens_cpu.device.type == "cpu" and torch.equal(cu_seqlens_cpu, cu_seqlens.cpu())
    return gla(q, k, v, g, scale=scale, initial_state=initial_state, output_final_state=output_final_state,
               cu_seqlens=cu_seqlens, impl="naive")


def test_plan_segments_for_batch_rows():
    resets = torch.tensor([[False, False, True, False, False],
                           [True, False, False, True, False]])
    plan = plan_segments(resets)
    assert plan.cu_seqlens.tolist() == [0, 2, 5, 8, 10]
    assert plan.first_segment.tolist() == [0, 2]
    assert plan.last_segment.tolist() == [1, 3]
    assert plan.keeps_initial_state.tolist() == [True, False]


def test_plan_segments_inside_cu_seqlens():
    resets = torch.zeros(1, 10, dtype=torch.bool)
    resets[0, [2, 4, 7]] = True
    plan = plan_segments(resets, torch.tensor([0, 4, 10]))
    assert plan.cu_seqlens.tolist() == [0, 2, 4, 7, 10]
    assert plan.first_segment.tolist() == [0, 2]
    assert plan.last_segment.tolist() == [1, 3]
    assert plan.keeps_initial_state.tolist() == [True, False]
    with pytest.raises(ValueError, match="batch size must be 1"):
        plan_segments(torch.zeros(2, 10, dtype=torch.bool), torch.tensor([0, 10]))


def test_gla_batch_with_resets_matches_recurlm_resets():
    """Outputs, final states and gradients (incl. a dropped initial state) through the adapter."""
    inputs = make_inputs(3, 23, 2, 4, 3, dtype=torch.float64, initial_state=True, requires_grad=True,
                         seed=0)
    resets = torch.zeros(3, 23, dtype=torch.bool)
    resets[0, [5, 6, 22]] = True   # a one-token document, a reset at the last token
    resets[1, [0, 11]] = True      # row 1 drops its initial state
    inputs["resets"] = resets      # row 2: no reset at all

    def adapted(q, k, v, g, initial_state, resets, output_final_state):
        return run_fla_varlen(naive_gla_varlen, (q, k, v, g), resets=resets, initial_state=initial_state,
                              output_final_state=output_final_state, scale=0.3)

    expected = outputs_and_grads(gla, inputs, scale=0.3, impl="naive")
    actual = outputs_and_grads(adapted, inputs)
    assert_close(actual, expected, atol=1e-12, rtol=1e-10)
    assert actual.grads["initial_state"][1].abs().max() == 0


def test_rwkv6_with_per_head_kwarg_and_cu_seqlens():
    """Non-token inputs (u) pass through op_kwargs; resets split cu_seqlens sequences further."""
    inputs = make_rwkv6_inputs(1, 30, 2, 4, 4, dtype=torch.float64, requires_grad=True,
                               seed=1)
    cu_seqlens = torch.tensor([0, 9, 30])
    seeded = torch.Generator().manual_seed(2)
    inputs["initial_state"] = torch.randn(2, 2, 4, 4, dtype=torch.float64, generator=seeded).requires_grad_()
    resets = torch.zeros(1, 30, dtype=torch.bool)
    resets[0, [4, 9, 17]] = True
    inputs["resets"] = resets

    def naive_rwkv6_varlen(r, k, v, w, u, cu_seqlens_cpu=None, **kwargs):
        return rwkv6(r, k, v, w, u, impl="naive", **kwargs)

    def adapted(r, k, v, w, u, initial_state, resets, output_final_state):
        def op(r, k, v, w, **kwargs):
            return naive_rwkv6_varlen(r, k, v, w, u, **kwargs)
        return run_fla_varlen(op, (r, k, v, w), resets=resets, cu_seqlens=cu_seqlens, initial_state=initial_state,
                              output_final_state=output_final_state)

    expected = outputs_and_grads(rwkv6, inputs, cu_seqlens=cu_seqlens, impl="naive")
    actual = outputs_and_grads(adapted, inputs)
    assert_close(actual, expected, atol=1e-12, rtol=1e-10)


def test_without_resets_the_op_gets_the_inputs_unchanged():
    calls = []

    def recording_op(*tokens, **kwargs):
        calls.append((tokens, kwargs))
        return tokens[0], None

    x = torch.randn(2, 5, 1, 3)
    o, _ = run_fla_varlen(recording_op, (x,), scale=2.0)
    assert o is x and calls[-1][1] == {"initial_state": None, "output_final_state": False, "scale": 2.0}
    cu_seqlens = torch.tensor([0, 4, 10])
    run_fla_varlen(recording_op, (x.reshape(1, 10, 1, 3),), cu_seqlens=cu_seqlens)
    assert calls[-1][1]["cu_seqlens"] is cu_seqlens


def test_token_shapes_must_match_resets():
    with pytest.raises(ValueError, match="every token input"):
        run_fla_varlen(naive_gla_varlen, (torch.randn(2, 5, 1, 3),), resets=torch.zeros(2, 6, dtype=torch.bool))


def test_one_plan_per_resets_tensor_shared_by_every_layer(monkeypatch):
    """Layers of one forward get the same resets object: one plan, one cu_seqlens object (fla's
    identity-keyed caches hit) with its host copy; a new or modified resets tensor is planned anew."""
    made = []
    monkeypatch.setattr(fla_adapter, "plan_segments",
                        lambda *args: made.append(args) or plan_segments(*args))
    seen = []

    def recording_op(*tokens, cu_seqlens, cu_seqlens_cpu, initial_state, output_final_state):
        seen.append((cu_seqlens, cu_seqlens_cpu))
        return tokens[0], None

    resets = torch.zeros(2, 6, dtype=torch.bool)
    resets[0, 3] = True
    x = torch.randn(2, 6, 1, 2)
    for _ in range(3):  # three layers
        run_fla_varlen(recording_op, (x,), resets=resets)
    assert len(made) == 1 and all(cu is seen[0][0] for cu, _ in seen)
    assert seen[0][1].device.type == "cpu" and seen[0][1].tolist() == [0, 3, 6, 12]
    assert segment_plan(resets) is segment_plan(resets)
    resets[1, 2] = True  # in place: the old plan no longer holds
    assert segment_plan(resets).cu_seqlens_cpu.tolist() == [0, 3, 6, 8, 12]
    run_fla_varlen(recording_op, (x,), resets=resets.clone())
    assert len(made) == 3
