import math

import pytest
import torch

from recurlm.models import build_model
from ..helpers import model_checks
from recurlm.models.config import preset_table
from recurlm.models.griffin import (MAX_SQRT_GRADIENT, RGLRU, GriffinConfig, HawkConfig, SqrtBoundedGrad,
                                    bfloat16_sqrt)

transformers = pytest.importorskip("transformers")

GRIFFIN = ("recurrent", "recurrent", "attention")


@pytest.mark.parametrize("cfg", [
    HawkConfig(size="tiny", vocab_size=97),
    GriffinConfig(size="tiny", vocab_size=97),  # window 8 < the checks' sequences (13, 17, 21)
    GriffinConfig(size="tiny", vocab_size=97, attention_window=3, n_kv_heads=2,
                  block_types=["attention", "recurrent"]),
], ids=["hawk", "griffin", "griffin-window3-gqa"])
def test_griffin_modes_agree(cfg):
    torch.manual_seed(0)
    model_checks.run_all(build_model(cfg))


@pytest.mark.parametrize("sub_states", [1, 3])
def test_rglru_matches_the_paper_recurrence(sub_states):
    """RG-LRU in log space == the paper's a_t = sigmoid(Λ)^(c r_t), h_t = a_t h + sqrt(1 - a_t^2)(i_t u_t),
    run step by step in float64, with a document start (normaliser 1, state dropped) mid-row; with
    f sub-states, f such recurrences per channel (decays Λ[:, k]) read out by the mixing weights."""
    torch.manual_seed(0)
    cfg = GriffinConfig(size="tiny", d_model=8, n_heads=2, lru_width=8, kernel_impl="chunk", state_expansion=sub_states)
    lru = RGLRU(cfg).double()
    a_logit, mix = lru.a_logit[:, None], torch.ones(8, 1, dtype=torch.float64)
    if sub_states > 1:
        with torch.no_grad():
            lru.state_mix.normal_()
        a_logit, mix = torch.cat([a_logit, lru.extra_a_logit], 1), lru.state_mix
    B, T, R = 2, 9, 8
    u = torch.randn(B, T, R, dtype=torch.float64)
    doc_start = torch.zeros(B, T, dtype=torch.bool)
    doc_start[:, 0] = doc_start[1, 4] = True
    h0 = torch.randn(B, R * sub_states, dtype=torch.float64)
    out, last = lru(u, doc_start, h0, True)

    def gate(g, x):
        xb = x.view(B, 2, 4)
        return torch.sigmoid(torch.einsum("bhi,hij->bhj", xb, g.weight) + g.bias).reshape(B, R, 1)

    h = h0.view(B, R, sub_states)
    with torch.no_grad():
        for t in range(T):
            a = torch.sigmoid(a_logit) ** (cfg.rglru_c * gate(lru.recurrence_gate, u[:, t]))
            start = doc_start[:, t, None, None]
            norm = torch.where(start, 1.0, torch.sqrt(1 - a ** 2))
            h = torch.where(start, 0.0, a * h) + norm * gate(lru.input_gate, u[:, t]) * u[:, t, :, None]
            torch.testing.assert_close(out[:, t], (h * mix).sum(-1), atol=1e-12, rtol=0)
    torch.testing.assert_close(last, h.flatten(1), atol=1e-12, rtol=0)
    a_init = torch.sigmoid(a_logit)
    assert a_init.min() >= 0.9 - 1e-9 and a_init.max() <= 0.999 + 1e-9
    assert a_init.unique().numel() == R * sub_states  # distinct decays


@pytest.mark.parametrize("family", ["hawk", "griffin"])
def test_rglru_sub_states_modes_agree(family):
    """Step, packed documents, state passing and backward with f = 3 sub-states per channel and
    random mixing weights (the [1, 0, 0] init would hide the added sub-states)."""
    torch.manual_seed(0)
    model = build_model({"family": family, "size": "tiny", "vocab_size": 97, "state_expansion": 3})
    with torch.no_grad():
        for block in model.blocks:
            if block.kind == "recurrent":
                block.mixer.rg_lru.state_mix.normal_()
    assert model.init_state(1).layers[0]["h"].shape == (1, 3 * model.config.lru_width)
    model_checks.run_all(model)


def test_rglru_sub_states_start_as_the_plain_rglru():
    """Sub-state 0 with mixing [1, 0, ...] is the f = 1 RG-LRU: same outputs for the same weights."""
    torch.manual_seed(0)
    plain = RGLRU(GriffinConfig(size="tiny", d_model=8, n_heads=2, lru_width=8))
    expanded = RGLRU(GriffinConfig(size="tiny", d_model=8, n_heads=2, lru_width=8, state_expansion=4))
    expanded.load_state_dict({**plain.state_dict(), **{k: v for k, v in expanded.state_dict().items()
                                                        if k in ("extra_a_logit", "state_mix")}})
    u, doc_start = torch.randn(2, 11, 8), torch.zeros(2, 11, dtype=torch.bool)
    doc_start[:, 0] = True
    torch.testing.assert_close(expanded(u, doc_start, None, False)[0], plain(u, doc_start, None, False)[0],
                               rtol=0, atol=0)
    assert {n for n, p in expanded.named_parameters() if getattr(p, "_no_weight_decay", False)} == \
        {"extra_a_logit", "state_mix"}


def test_normaliser_sqrt_gradient_is_capped():
    """d sqrt(z) / dz = 1 / (2 sqrt(z)) is infinite at z = 1 - a^2 = 0 (a -> 1); RecurrentGemma caps it at 1000."""
    z = torch.tensor([0.0, 1e-12, 0.25, 1.0], dtype=torch.float64, requires_grad=True)
    y = SqrtBoundedGrad.apply(z)
    y.sum().backward()
    torch.testing.assert_close(y.detach(), z.detach().sqrt())
    torch.testing.assert_close(z.grad, torch.tensor([MAX_SQRT_GRADIENT, MAX_SQRT_GRADIENT, 1.0, 0.5], dtype=torch.float64))


def test_hydra_configs_compose():
    from recurlm.configs import compose

    for family, kinds in [("griffin", ["recurrent", "recurrent", "attention"]), ("hawk", ["recurrent", "recurrent"])]:
        cfg = compose([f"model={family}", "model.size=tiny", "model.vocab_size=50"])
        model = build_model(cfg.model)
        assert [b.kind for b in model.blocks] == kinds


def _tiny_hf(block_types, tie=True, window=6, seed=0):
    torch.manual_seed(seed)
    hf_config = transformers.RecurrentGemmaConfig(
        num_hidden_layers=3, vocab_size=101, hidden_size=64, intermediate_size=2 * 3 * 64, num_attention_heads=4,
        num_key_value_heads=1, lru_width=96, attention_window_size=window, block_types=list(block_types),
        tie_word_embeddings=tie, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    hf = transformers.RecurrentGemmaForCausalLM(hf_config).eval()
    with torch.no_grad():  # HF initialises norms and biases to zero: randomise them so they are tested
        for name, p in hf.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.normal_(0, 0.1)
    return hf


@pytest.mark.parametrize("block_types,tie", [(GRIFFIN, True), (("recurrent",), True), (GRIFFIN, False)],
                         ids=["griffin", "hawk", "griffin-untied"])
def test_logits_equal_transformers(block_types, tie):
    from recurlm.models.convert.recurrentgemma import from_transformers, state_dict_to_transformers

    hf = _tiny_hf(block_types, tie)
    model = from_transformers(hf).eval()
    assert model.config.family == ("griffin" if "attention" in block_types else "hawk")
    ids = torch.randint(0, 101, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids, use_cache=False).logits
        ours, _ = model(ids)
    # logits are soft-capped at 30; float32 agreement to ~1e-5 of that scale
    torch.testing.assert_close(ours, ref, atol=3e-4, rtol=0)
    back = state_dict_to_transformers(model.state_dict(), model.config)
    assert all(torch.equal(back[k], v) for k, v in hf.state_dict().items())


def test_step_decoding_equals_transformers_generate():
    from recurlm.models.convert.recurrentgemma import from_transformers

    hf = _tiny_hf(GRIFFIN, window=4)
    model = from_transformers(hf).eval()
    prompt = torch.randint(3, 101, (2, 5), generator=torch.Generator().manual_seed(2))
    out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False,
                      output_logits=True, return_dict_in_generate=True)
    ref = torch.stack(out.logits, 1)  # [B, 8, V]: the logits that chose each new token
    with torch.no_grad():
        logits, state = model(prompt, return_state=True)
        ours = [logits[:, -1]]
        for t in range(prompt.shape[1], out.sequences.shape[1] - 1):
            step_logits, state = model.step(out.sequences[:, t], state)
            ours.append(step_logits)
    torch.testing.assert_close(torch.stack(ours, 1), ref, atol=3e-4, rtol=0)


def test_embedding_scale_is_bfloat16_rounded():
    model = build_model(GriffinConfig(size="tiny", vocab_size=11, d_model=2560, n_heads=10, lru_width=2560,
                                      mlp_hidden=8, n_layers=1))
    assert model.embed_scale == 50.5 != math.sqrt(2560)  # bf16(50.596...) = 50.5
    assert bfloat16_sqrt(64) == 8.0


@pytest.mark.parametrize("family", ["griffin", "hawk"])
def test_presets_build(family):
    """Every preset builds (on the meta device), the tiny one is < 1M parameters, RecurrentGemma-2B has
    its 2.0B non-embedding / 2.7B total parameters."""
    for size in preset_table(family):
        with torch.device("meta"):
            model = build_model({"family": family, "size": size, "vocab_size": 256_000 if size == "rg2b" else 512})
        assert model.flops_per_token(2048) > 0 and model.state_bytes() > 0
        if size == "tiny":
            assert model.num_params() < 1_000_000
        if size == "rg2b":
            assert abs(model.num_params(non_embedding=True) / 2.03e9 - 1) < 0.01
            assert abs(model.num_params() / 2.68e9 - 1) < 0.01


def test_transformers_export_refuses_expanded_state():
    from recurlm.models.convert.recurrentgemma import state_dict_to_transformers

    model = build_model({"family": "griffin", "size": "tiny", "vocab_size": 64, "state_expansion": 2})
    with pytest.raises(ValueError, match="state_expansion=2"):
        state_dict_to_transformers(model.state_dict(), model.config)
