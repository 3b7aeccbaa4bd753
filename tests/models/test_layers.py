"""Shared layers: the fused output head + soft-cap + cross-entropy."""
import pytest
import torch
import torch.nn.functional as F

from recurlm.models.layers import cross_entropy, linear_cross_entropy


def _unfused(x, weight, labels, softcap):
    logits = x @ weight.t()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits.flatten(0, -2), labels.flatten())


@pytest.mark.parametrize("softcap", [None, 2.0])
def test_linear_cross_entropy_matches_unfused_float64(softcap):
    """Loss and gradients (scaled by a non-unit upstream gradient), ignored labels, a chunk size that
    does not divide the 111 tokens, and the no-grad path."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 37, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 50, (3, 37), generator=gen)
    labels[0, :5] = -100
    upstream = torch.tensor(1.7, dtype=torch.float64)
    expected = _unfused(x, weight, labels, softcap)
    expected_grads = torch.autograd.grad(expected, (x, weight), upstream)
    loss = linear_cross_entropy(x, weight, labels, softcap, chunk_size=16)
    grads = torch.autograd.grad(loss, (x, weight), upstream)
    torch.testing.assert_close(loss, expected, atol=1e-12, rtol=1e-12)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(x, weight, labels, softcap, chunk_size=16), expected,
                                   atol=1e-12, rtol=1e-12)


def test_linear_cross_entropy_gradcheck():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 7, (2, 5), generator=gen)
    labels[1, 2] = -100
    assert torch.autograd.gradcheck(lambda x, w: linear_cross_entropy(x, w, labels, 3.0, chunk_size=4), (x, weight))


def test_linear_cross_entropy_bfloat16_close_to_float32_softmax():
    """bf16 head: softmax statistics in float32 as ``cross_entropy(logits)``; gradients in bf16."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(64, 32, generator=gen).bfloat16().requires_grad_(True)
    weight = torch.randn(100, 32, generator=gen).bfloat16().requires_grad_(True)
    labels = torch.randint(0, 100, (64,), generator=gen)
    expected = cross_entropy(torch.tanh((x @ weight.t()).float() / 30) * 30, labels)
    expected_grad = torch.autograd.grad(expected, x)[0]
    loss = linear_cross_entropy(x, weight, labels, 30.0, chunk_size=16)
    grad = torch.autograd.grad(loss, x)[0]
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, expected, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(grad.float(), expected_grad.float(), atol=2e-3, rtol=2e-2)


def test_model_loss_equals_cross_entropy_of_logits():
    """``model(ids, labels=...)`` (fused) equals cross_entropy of ``model(ids)`` in value and gradients."""
    from recurlm.models import build_model
    from recurlm.models.xlstm import XLSTMConfig

    torch.manual_seed(0)
    model = build_model(XLSTMConfig(size="tiny", vocab_size=97, architecture="xlstm7b")).double()
    ids = torch.randint(0, 97, (2, 19))
    labels = ids.clone()
    labels[:, :3] = -100
    params = [p for p in model.parameters()]
    loss, _ = model(ids, labels=labels)
    grads = torch.autograd.grad(loss, params)
    expected = F.cross_entropy(model(ids)[0].flatten(0, 1), labels.flatten())
    expected_grads = torch.autograd.grad(expected, params)
    torch.testing.assert_close(loss, expected, atol=1e-10, rtol=1e-10)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("softcap", [None, 30.0])
def test_linear_cross_entropy_under_autocast_runs_the_head_in_bf16(softcap):
    """Inside ``torch.autocast`` the head matmuls run in bf16 like an autocast ``F.linear``; the
    float32 parameters get float32 gradients."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 40, 32, generator=gen, requires_grad=True)
    weight = (torch.randn(300, 32, generator=gen) * 0.3).requires_grad_()
    labels = torch.randint(0, 300, (2, 40), generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = _unfused(x, weight, labels, softcap).float()  # autocast's bf16 logits
        loss = linear_cross_entropy(x, weight, labels, softcap, chunk_size=16)
    expected_grads = torch.autograd.grad(expected, (x, weight))
    grads = torch.autograd.grad(loss, (x, weight))
    assert loss.dtype == torch.float32 and all(g.dtype == torch.float32 for g in grads)
    torch.testing.assert_close(loss, expected, rtol=1e-2, atol=1e-2)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-3)
    # and it is not the float32 loss: the head really ran in bf16
    assert loss.item() != pytest.approx(_unfused(x, weight, labels, softcap).item(), abs=1e-6)
