"""xLSTM v1 (mLSTM + sLSTM) and xLSTM-7B: mode agreement and logits equal to the references.

References: the ``xlstm`` package's ``xLSTMLarge`` (xLSTM-7B) and transformers' ``xLSTMForCausalLM``
for ``architecture="xlstm7b"``; the ``xlstm`` package's ``xLSTMLMModel`` (sLSTM ``backend="vanilla"``)
for ``architecture="v1"``. transformers has no v1 model (its xLSTM is the 7B architecture).
The v1 reference computes the mLSTM with its parallel kernel, whose stabiliser omits the fresh
state's m = 0; that changes only the 1e-6 eps term of the denominator, within the tolerance here.
"""
import pytest
import torch

from recurlm.models import build_model
from ..helpers import model_checks
from recurlm.models.config import preset_table
from recurlm.models.xlstm import XLSTMConfig, block_kinds

xlstm = pytest.importorskip("xlstm")

CPU_KERNELS = dict(chunkwise_kernel="chunkwise--native_autograd", sequence_kernel="native_sequence__native",
                   step_kernel="native", autocast_kernel_dtype="float32", return_last_states=True)


def perturb_(model: torch.nn.Module, scale: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Add noise to every parameter: the reference inits leave gate weights, sLSTM recurrent weights
    and norm offsets at constants, which would hide mapping and recurrence errors."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return model


@pytest.mark.parametrize("cfg", [
    XLSTMConfig(size="tiny", vocab_size=97),  # [mlstm, slstm]
    XLSTMConfig(size="tiny", vocab_size=97, architecture="xlstm7b"),
    XLSTMConfig(size="tiny", vocab_size=97, n_layers=2, slstm_at=[0], slstm_heads=2, conv_width=3),
], ids=["v1", "xlstm7b", "v1-slstm-first"])
def test_xlstm_modes_agree(cfg):
    torch.manual_seed(0)
    model_checks.run_all(perturb_(build_model(cfg)))


def test_block_pattern_and_positions():
    base = dict(size="tiny", vocab_size=11, n_layers=16)
    assert block_kinds(XLSTMConfig(**base)) == (["mlstm", "slstm"] + ["mlstm"] * 6) * 2  # 7:1
    assert block_kinds(XLSTMConfig(**base, slstm_at=[3, 12])).count("slstm") == 2
    assert block_kinds(XLSTMConfig(**base, slstm_at=[3, 12]))[3] == "slstm"
    assert block_kinds(XLSTMConfig(**base, architecture="xlstm7b")) == ["mlstm7b"] * 16
    with pytest.raises(ValueError):
        block_kinds(XLSTMConfig(**base, architecture="v2"))


def test_presets_build():
    """Every preset builds on the meta device; tiny < 1M parameters; the v1 paper sizes and xLSTM-7B
    have their published parameter counts."""
    expected_v1 = {"125m": 125e6, "350m": 358e6, "760m": 762e6, "1.3b": 1.32e9}
    for arch in ("v1", "xlstm7b"):
        for size in preset_table("xlstm"):
            vocab_size = 256 if size == "tiny" else 50304
            with torch.device("meta"):
                model = build_model({"family": "xlstm", "size": size, "architecture": arch, "vocab_size": vocab_size})
            assert model.flops_per_token(2048) > 0 and model.state_bytes() > 0
            if size == "tiny":
                assert model.num_params() < 1_000_000
            if arch == "v1" and size in expected_v1:
                assert abs(model.num_params(non_embedding=True) / expected_v1[size] - 1) < 0.01
            if arch == "xlstm7b" and size == "7b":
                assert abs(model.num_params() / 6.865e9 - 1) < 0.002


def test_hydra_config_composes():
    from recurlm.configs import compose

    cfg = compose(["model=xlstm", "model.size=tiny", "model.vocab_size=50", "model.architecture=xlstm7b"])
    model = build_model(cfg.model)
    assert [b.kind for b in model.blocks] == ["mlstm7b", "mlstm7b"] and model.logit_softcap == 30.0


def _xlstm_large(seed: int = 0):
    from xlstm.xlstm_large.model import xLSTMLarge, xLSTMLargeConfig

    torch.manual_seed(seed)
    # 48 * 2.6667 = 128.0016: the reference's FFN rounding gives 128 where a true ceil gives 192
    cfg = xLSTMLargeConfig(embedding_dim=48, num_heads=2, num_blocks=2, vocab_size=101, chunk_size=8,
                           mode="train", gate_soft_cap=5.0, output_logit_soft_cap=10.0, **CPU_KERNELS)
    return perturb_(xLSTMLarge(cfg).eval(), seed=seed)


def test_logits_and_states_equal_xlstm_large():
    """xLSTM-7B architecture: logits and final (C, n, m) equal xLSTMLarge's in float32, also for a
    second window continued from the first one's state (the reference's chunk size divides T)."""
    from recurlm.models.convert.xlstm import from_xlstm_large

    ref = _xlstm_large()
    model = from_xlstm_large(ref).eval()
    ids = torch.randint(0, 101, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref_first, ref_state = ref(ids[:, :16])
        ref_second, ref_state = ref(ids[:, 16:], ref_state)
        ours, state = model(ids, return_state=True)
    torch.testing.assert_close(ours, torch.cat([ref_first, ref_second], 1), atol=1e-4, rtol=1e-4)
    for layer, (C, n, m) in zip(state.layers, ref_state.values()):
        torch.testing.assert_close(layer["C"], C, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(layer["n"], n.reshape(layer["n"].shape), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(layer["_m"], m.reshape(layer["_m"].shape), atol=1e-4, rtol=1e-4)


def test_logits_equal_transformers_xlstm():
    transformers = pytest.importorskip("transformers")
    from recurlm.models.convert.xlstm import from_xlstm_large

    torch.manual_seed(0)
    hf_cfg = transformers.xLSTMConfig(hidden_size=64, num_heads=4, num_blocks=2, vocab_size=101, chunk_size=8,
                                      mode="train", qk_dim_factor=0.25, **CPU_KERNELS)
    hf = perturb_(transformers.xLSTMForCausalLM(hf_cfg).eval())
    model = from_xlstm_large(hf).eval()
    ids = torch.randint(0, 101, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(ids, use_cache=False).logits
        ours, _ = model(ids)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def _xlstm_v1(slstm_at, seed: int = 0):
    from xlstm import (FeedForwardConfig, mLSTMBlockConfig, mLSTMLayerConfig, sLSTMBlockConfig,
                       sLSTMLayerConfig, xLSTMLMModel, xLSTMLMModelConfig)

    torch.manual_seed(seed)
    cfg = xLSTMLMModelConfig(
        vocab_size=101, embedding_dim=64, num_blocks=3, context_length=24, slstm_at=slstm_at,
        mlstm_block=mLSTMBlockConfig(mlstm=mLSTMLayerConfig(num_heads=2, conv1d_kernel_size=4, qkv_proj_blocksize=4)),
        slstm_block=sLSTMBlockConfig(slstm=sLSTMLayerConfig(backend="vanilla", num_heads=2, conv1d_kernel_size=4),
                                     feedforward=FeedForwardConfig(proj_factor=1.3, act_fn="gelu")))
    ref = xLSTMLMModel(cfg)
    ref.reset_parameters()
    return perturb_(ref.eval(), seed=seed)


@pytest.mark.parametrize("slstm_at", [[1], [0, 2]])
def test_logits_equal_xlstm_v1(slstm_at):
    """v1: mixed mLSTM / sLSTM stack equals xLSTMLMModel (vanilla sLSTM) in float32, and our
    token-by-token step equals the reference's ``step``."""
    from recurlm.models.convert.xlstm import from_xlstm_v1

    ref = _xlstm_v1(slstm_at)
    model = from_xlstm_v1(ref).eval()
    assert [b.kind for b in model.blocks] == ["slstm" if i in slstm_at else "mlstm" for i in range(3)]
    ids = torch.randint(0, 101, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = ref(ids)
        ours, _ = model(ids)
        torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)
        ref_state, state = None, model.init_state(2)
        for t in range(4):
            ref_logits, ref_state = ref.step(ids[:, t:t + 1], ref_state)
            logits, state = model.step(ids[:, t], state)
            torch.testing.assert_close(logits, ref_logits[:, 0], atol=1e-4, rtol=1e-4)
