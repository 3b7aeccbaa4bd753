"""Titans' memory q, k, v: SiLU after the convolution (the paper), on by default and switchable."""
import torch
import torch.nn.functional as F

from recurlm.models.titans import NeuralMemory, TitansMAGConfig


def test_memory_qkv_are_silu_of_the_conv_output_by_default():
    torch.manual_seed(0)
    cfg = TitansMAGConfig(size="tiny", vocab_size=97, memory_qk_l2norm=False)
    assert cfg.memory_qkv_silu
    from recurlm.models.registry import to_model_config

    cfg = to_model_config(cfg)
    with_silu = NeuralMemory(cfg)
    plain = NeuralMemory(to_model_config(TitansMAGConfig(size="tiny", vocab_size=97, memory_qk_l2norm=False,
                                                         memory_qkv_silu=False)))
    plain.load_state_dict(with_silu.state_dict())
    u = torch.randn(1, 7, cfg.d_model)
    carry = with_silu.fresh(u.dtype, u.device)
    for name in "qkv":
        z, _ = with_silu._project(u, name, carry, name)
        ref, _ = plain._project(u, name, carry, name)
        torch.testing.assert_close(z, F.silu(ref))
        assert (ref < 0).any() and not (z < -0.3).any()  # SiLU's minimum is -0.278
