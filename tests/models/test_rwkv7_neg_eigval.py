"""RWKV-7's ``allow_neg_eigval``: the transition reaches eigenvalue -1 along kk (and not below),
parallel and step modes agree, and the option is off by default."""
import torch

from recurlm.models.registry import build_model
from recurlm.models.rwkv7 import FirstLayerValue


def tiny(**fields):
    torch.manual_seed(0)
    return build_model({"family": "rwkv7", "size": "tiny", "vocab_size": 97, **fields}).eval()


def response_along_kk(allow_neg_eigval):
    """How a rank-one state perturbation along kk comes out of one step with a -> 1 and no decay:
    the transition's eigenvalue along kk (1 - a without the option, 1 - 2a with it)."""
    mix = tiny(allow_neg_eigval=allow_neg_eigval).blocks[0].att
    with torch.no_grad():
        mix.a0.fill_(20.0)  # a = sigmoid(20) ~ 1
        mix.w0.fill_(-30.0)  # w ~ 0: no decay
        x = torch.randn(1, mix.n_heads * mix.head_dim)
        shift = torch.randn_like(x)
        kk = mix._inputs(x, shift - x, FirstLayerValue())[-1]  # [1, H, N]
        state = torch.randn(1, mix.n_heads, mix.head_dim, mix.head_dim)
        delta = kk[..., :, None] * torch.randn(1, mix.n_heads, 1, mix.head_dim)  # [K, V] state: along kk in K
        _, after, _ = mix.step(x, state, shift, FirstLayerValue())
        _, moved, _ = mix.step(x, state + delta, shift, FirstLayerValue())
    change = moved - after
    return float((change * delta).sum() / (delta * delta).sum())


def test_eigenvalue_along_kk_is_about_zero_by_default_and_minus_one_with_the_option():
    assert abs(response_along_kk(False)) < 1e-3
    assert abs(response_along_kk(True) + 1) < 1e-3


def test_parallel_and_step_agree_with_the_option():
    model = tiny(allow_neg_eigval=True)
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        logits, _ = model(ids)
        state = model.init_state(2)
        steps = []
        for t in range(ids.shape[1]):
            out, state = model.step(ids[:, t], state)
            steps.append(out)
    torch.testing.assert_close(torch.stack(steps, 1), logits, atol=1e-4, rtol=1e-4)
    assert not tiny().config.allow_neg_eigval
