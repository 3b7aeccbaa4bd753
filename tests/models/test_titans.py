import pytest
import torch

from recurlm.models import build_model
from ..helpers import model_checks
from recurlm.models.config import preset_table
from recurlm.models.titans import (NeuralMemory, TitansMACConfig, TitansMAGConfig, TitansMALConfig,
                                   document_slots, scan_segments)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny float64 ops on a loaded 2-core machine: intra-op threads only contend (10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# segments (4), memory mini-batches (2, 3) and windows (5) shorter than the checks' sequences
# (13, 17, 21) and documents (5, 1, 9, 4), so that every boundary case is crossed
@pytest.mark.parametrize("cfg", [
    TitansMACConfig(size="tiny", vocab_size=97),
    TitansMACConfig(size="tiny", vocab_size=97, memory_depth=1, memory_chunk_size=3, segment_len=5,
                    memory_conv=False),
    TitansMAGConfig(size="tiny", vocab_size=97),
    TitansMALConfig(size="tiny", vocab_size=97, memory_activation="silu", attention_window=1, n_persistent=1),
], ids=["mac", "mac-linear-chunk3-seg5-noconv", "mag", "mal-silu-window1"])
def test_titans_modes_agree(cfg):
    torch.manual_seed(0)
    model_checks.run_all(build_model(cfg))


def test_document_slots_align_documents_to_segments():
    """Documents (and the continued one, whose first element sits at position 4) start on multiples of 3."""
    valid = torch.tensor([[True, True, False, True, True, True, True, True]])
    pos = torch.tensor([[3, 4, 9, 5, 0, 1, 2, 3]])  # continued doc at 3, 4 (buffer), 5; new doc 0..3
    slot, L = document_slots(valid, pos, 3)
    assert L == 9
    assert slot.tolist() == [[0, 1, 9, 2, 3, 4, 5, 6]]


def test_scan_segments_buffers_the_unfinished_segment():
    """A running sum that restarts every segment: the state carries the sum at the segment start (0)
    and the segment's inputs so far, so pieces of any length give the whole-sequence result."""
    def step(x, carry):
        return carry["total"][:, None] + x.cumsum(1), {"total": carry["total"] + x.sum(1)}

    fresh = {"total": torch.zeros(1, 1, dtype=torch.float64)}
    x = torch.randn(2, 11, 1, dtype=torch.float64)
    positions = torch.arange(11).expand(2, 11)
    whole, _ = scan_segments(x, positions, None, 4, fresh, step, False)
    torch.testing.assert_close(whole, x.cumsum(1))
    first, state = scan_segments(x[:, :6], positions[:, :6], None, 4, fresh, step, True)
    assert state["total"].flatten().tolist() == x[:, :4].sum((1, 2)).tolist()
    torch.testing.assert_close(state["buffer"][:, :2], x[:, 4:6])
    second, _ = scan_segments(x[:, 6:], positions[:, 6:], state, 4, fresh, step, True)
    torch.testing.assert_close(torch.cat([first, second], 1), whole)


@pytest.mark.parametrize("mini_batch,T", [(1, 6), (4, 10), (3, 9)])
def test_memory_matches_titans_pytorch(mini_batch, T):
    """Our NeuralMemory, given titans-pytorch's projection, gate and memory weights, reproduces its
    retrieved output through the same segment scan the MAG/MAL blocks use.

    Matched configuration: titans-pytorch with a plain 2-layer GELU MemoryMLP,
    mem_model_norm_add_residual=False, pre_rmsnorm=False, store chunk_size=1 (per-token gates),
    TTT batch_size = our memory_chunk_size; ours with memory_conv=False, memory_qk_l2norm=False and
    memory_qkv_silu=False (titans-pytorch has no short convolutions, no l2 norm, no SiLU), memory_max_lr = 1 / Dh (its loss is
    a mean over Dh, ours a sum). titans-pytorch's per-head retrieve gate and head-combining linear
    are applied to our per-head reads (our block output instead is W_o RMSNorm(heads)). Not matchable:
    its default residual LayerNorm memory (the LayerNorm gain is itself a memory weight) and its
    store chunk_size > 1 (gates averaged per chunk: a different recurrence)."""
    from titans_pytorch import NeuralMemory as TPNeuralMemory
    from titans_pytorch.memory_models import MemoryMLP

    torch.manual_seed(0)
    D, H, B = 4, 2, 2
    tp = TPNeuralMemory(dim=D * H, dim_head=D, heads=H, chunk_size=1, batch_size=mini_batch,
                        model=MemoryMLP(D, depth=2, expansion_factor=2.0), mem_model_norm_add_residual=False,
                        pre_rmsnorm=False, default_step_transform_max_lr=1.0).double()
    cfg = TitansMAGConfig(size="tiny", d_model=D * H, memory_heads=H, n_layers=1, memory_depth=2,
                          memory_expansion=2, memory_conv=False, memory_qk_l2norm=False, memory_qkv_silu=False,
                          memory_max_lr=1.0 / D,
                          memory_chunk_size=mini_batch, kernel_impl="chunk")
    ours = NeuralMemory(cfg).double()
    with torch.no_grad():
        # its q/k/v projections are bare Linears (its Sequential(Linear, None) collapses)
        ours.q_proj.weight.copy_(tp.to_queries.weight)
        ours.k_proj.weight.copy_(tp.to_keys.weight)
        ours.v_proj.weight.copy_(tp.to_values.weight)
        gates = [tp.to_adaptive_step[0], tp.to_momentum[0], tp.to_decay_factor[0]]
        ours.gate_proj.weight.copy_(torch.cat([g.weight for g in gates]))
        ours.gate_proj.bias.copy_(torch.cat([g.bias for g in gates]))
        for w, ref in zip(ours.init_weights, tp.memory_model_parameters):
            w.copy_(ref)
        # the reference's parameters are random: make sure the gates are not at a trivial value
        assert not torch.allclose(ours.gate_proj.bias, torch.zeros_like(ours.gate_proj.bias))

    x = torch.randn(B, T, D * H, dtype=torch.float64)
    with torch.no_grad():
        retrieved, _ = tp(x)
        reads, _ = scan_segments(x, torch.arange(T).expand(B, T), None, mini_batch, ours.fresh(x.dtype, x.device),
                                 ours.write_read, False)
        gated = reads * tp.retrieve_gate(x).squeeze(-1).transpose(1, 2)[..., None]
        reproduced = tp.combine_heads(gated.reshape(B, T, H * D))
    torch.testing.assert_close(reproduced, retrieved, rtol=1e-10, atol=1e-10)


def test_mac_segments_talk_through_the_memory_only():
    """One MAC layer, segments of 4: attention stays inside a segment, so a token of the first
    segment reaches the second only through the memory (which must carry it), and nothing flows
    backwards."""
    torch.manual_seed(0)
    model = build_model(TitansMACConfig(size="tiny", vocab_size=31, n_layers=1)).double().eval()
    ids = torch.randint(0, 31, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        base, _ = model(ids)
        later = ids.clone()
        later[0, 9] = (later[0, 9] + 1) % 31
        changed, _ = model(later)
    torch.testing.assert_close(changed[:, :9], base[:, :9], atol=1e-12, rtol=0)
    assert not torch.allclose(changed[:, 9:], base[:, 9:])
    earlier = ids.clone()
    earlier[0, 1] = (earlier[0, 1] + 1) % 31
    with torch.no_grad():
        changed, _ = model(earlier)
    assert not torch.allclose(changed[:, 4:8], base[:, 4:8])


def test_hydra_configs_compose():
    from recurlm.configs import compose

    for family, block in [("titans_mac", "MACBlock"), ("titans_mag", "MAGBlock"), ("titans_mal", "MALBlock")]:
        cfg = compose([f"model={family}", "model.size=tiny", "model.vocab_size=50"])
        model = build_model(cfg.model)
        assert type(model.blocks[0]).__name__ == block


PAPER_SIZES = {"170m": 170e6, "340m": 340e6, "400m": 400e6, "760m": 760e6}


@pytest.mark.parametrize("family", ["titans_mac", "titans_mag", "titans_mal"])
def test_presets_build(family):
    """Every preset builds on the meta device; tiny is < 1M parameters (vocabulary 512); the paper's
    sizes are within 3% of their names with the paper's 32K Llama-2 vocabulary (untied head)."""
    for size in preset_table(family):
        with torch.device("meta"):
            model = build_model({"family": family, "size": size, "vocab_size": 512 if size == "tiny" else 32_000})
        assert model.flops_per_token(2048) > 0 and model.state_bytes() > 0
        if size == "tiny":
            assert model.num_params() < 1_000_000
        if size in PAPER_SIZES:
            assert abs(model.num_params() / PAPER_SIZES[size] - 1) < 0.03, (size, model.num_params())


def test_segment_layout_made_once_per_forward(monkeypatch):
    """Every Titans layer of a forward shares one segment layout (its grid size is the one host
    sync of the memory path), in training mode and in step mode."""
    from recurlm.models.titans import blocks, segments

    calls = []
    real = segments.segment_layout
    for module in (blocks, segments):  # every call site: the blocks, and scan_segments' fallback
        monkeypatch.setattr(module, "segment_layout", lambda *a: calls.append(a) or real(*a))
    model = build_model(TitansMAGConfig(size="tiny", vocab_size=97, n_layers=3)).double()
    ids = torch.randint(0, 97, (2, 9))
    resets = torch.zeros(2, 9, dtype=torch.bool)
    resets[0, 4] = True
    model(ids, resets=resets)
    assert len(calls) == 1
    model.step(ids[:, 0], model.init_state(2))
    assert len(calls) == 2


def test_attend_is_softmax_over_sinks_and_allowed_keys():
    """The SDPA path equals the explicit softmax over [persistent keys, allowed keys]."""
    from recurlm.models.titans import attend

    g = torch.Generator().manual_seed(0)
    N, T, S, H, D, P = 2, 5, 7, 2, 4, 2
    q, k, v = (torch.randn(N, n, H, D, generator=g, dtype=torch.float64) for n in (T, S, S))
    sink_k, sink_v = (torch.randn(P, H, D, generator=g, dtype=torch.float64) for _ in range(2))
    allowed = torch.rand(N, T, S, generator=g) < 0.5
    allowed[:, :, 0] = False  # a query may see no sequence key at all: the persistent ones remain
    scores = torch.cat([torch.einsum("nthd,phd->nhtp", q, sink_k),
                        torch.einsum("nthd,nshd->nhts", q, k).masked_fill(~allowed[:, None], float("-inf"))], -1)
    probs = (scores * 0.3).softmax(-1)
    expected = torch.einsum("nhtp,phd->nthd", probs[..., :P], sink_v) + torch.einsum("nhts,nshd->nthd",
                                                                                    probs[..., P:], v)
    torch.testing.assert_close(attend(q, k, v, allowed, sink_k, sink_v, 0.3), expected, rtol=1e-12, atol=1e-12)
