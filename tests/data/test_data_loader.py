"""PackedLoader / iter_eval_batches: packing, resets, labels, determinism, world-size independence,
exact resume, mixtures, documents-in-order continuation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from recurlm.data.loader import IGNORE_INDEX, PackedLoader, iter_eval_batches


def _docs(shards):
    return [shards.document(i).tolist() for i in range(shards.num_docs)]


def _global_batches(shards, steps, world_size, state=None, **kw):
    """Concatenate every rank's slices into global batches (input_ids, labels, resets)."""
    loaders = [PackedLoader(shards, rank=r, world_size=world_size, **kw) for r in range(world_size)]
    if state is not None:
        for loader in loaders:
            loader.load_state_dict(state)
    out = []
    for _ in range(steps):
        parts = [next(loader) for loader in loaders]
        assert all(p.position == parts[0].position for p in parts)  # position is global
        out.append(tuple(torch.cat([getattr(p, f) for p in parts]) for f in ("input_ids", "labels", "resets")))
    return out


def test_packed_epoch_is_a_permutation_of_whole_documents(make_shards):
    shards = make_shards(n_docs=25)
    bos = shards.bos_id
    T = 16
    rows_per_epoch = (shards.num_tokens - 1) // T
    loader = PackedLoader(shards, seq_len=T, global_batch_size=1, seed=3)
    epochs = []
    for _ in range(2):
        batches = [next(loader) for _ in range(rows_per_epoch)]
        for b in batches:
            assert b.input_ids.shape == b.labels.shape == b.resets.shape == (1, T)
            assert b.input_ids.dtype == b.labels.dtype == torch.int64 and b.resets.dtype == torch.bool
            assert torch.equal(b.input_ids[0, 1:], b.labels[0, :-1])  # labels are inputs shifted by one
            assert torch.equal(b.resets, b.input_ids == bos)  # a reset exactly at every document start
        # rows overlap by one token: inputs of all rows + the last label form the epoch's stream
        stream = torch.cat([b.input_ids[0] for b in batches] + [batches[-1].labels[0, -1:]]).tolist()
        starts = [i for i, t in enumerate(stream) if t == bos]
        assert starts[0] == 0
        segments = [stream[a:b] for a, b in zip(starts, starts[1:])]
        docs = _docs(shards)
        assert len({tuple(s) for s in segments}) == len(segments)  # no document twice
        assert all(s in docs for s in segments)  # whole documents only
        assert len(segments) >= shards.num_docs - 2  # only the tail of the epoch is dropped
        epochs.append(segments)
    assert epochs[0] != epochs[1]  # reshuffled per epoch


def test_row_beginning_mid_document_has_no_reset(make_shards):
    shards = make_shards(n_docs=10, max_len=60)
    loader = PackedLoader(shards, seq_len=8, global_batch_size=16, seed=0)
    b = next(loader)
    mid = b.input_ids[:, 0] != shards.bos_id
    assert mid.any() and not b.resets[mid, 0].any()


def test_loss_on_boundary_false_masks_only_cross_document_labels(make_shards):
    shards = make_shards(n_docs=20)
    with_b = next(PackedLoader(shards, 32, 4, seed=1, loss_on_boundary=True))
    without = next(PackedLoader(shards, 32, 4, seed=1, loss_on_boundary=False))
    crossing = with_b.labels == shards.bos_id
    assert crossing.any()
    assert (without.labels[crossing] == IGNORE_INDEX).all()
    assert torch.equal(without.labels[~crossing], with_b.labels[~crossing])
    assert (with_b.labels != IGNORE_INDEX).all()  # no padding in packed training


def test_deterministic_and_seed_dependent(make_shards):
    shards = make_shards(n_docs=20)
    a = _global_batches(shards, 3, 1, seq_len=16, global_batch_size=4, seed=5)
    b = _global_batches(shards, 3, 1, seq_len=16, global_batch_size=4, seed=5)
    c = _global_batches(shards, 3, 1, seq_len=16, global_batch_size=4, seed=6)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, b))
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(a, c))


@pytest.mark.parametrize("mode", ["packed", "documents_in_order"])
def test_world_size_independent(make_shards, mode):
    shards = make_shards(n_docs=30)
    kw = dict(seq_len=8, global_batch_size=8, seed=2, mode=mode)
    ref = _global_batches(shards, 4, 1, **kw)
    for ws in (2, 4):
        got = _global_batches(shards, 4, ws, **kw)
        for x, y in zip(ref, got):
            assert all(torch.equal(u, v) for u, v in zip(x, y))


@pytest.mark.parametrize("mode", ["packed", "documents_in_order"])
def test_exact_resume_across_world_sizes(make_shards, mode):
    shards = make_shards(n_docs=30)
    kw = dict(seq_len=8, global_batch_size=4, seed=7, mode=mode)
    loader = PackedLoader(shards, **kw)
    batches = [next(loader) for _ in range(40)]  # crosses epochs
    ref = [(b.input_ids, b.labels, b.resets) for b in batches]
    for ws in (1, 2, 4):
        resumed = _global_batches(shards, 15, ws, state=batches[24].position, **kw)
        for x, y in zip(ref[25:], resumed):
            assert all(torch.equal(u, v) for u, v in zip(x, y))
    # state_dict() equals the last batch's position
    assert loader.state_dict() == batches[-1].position


def test_resume_rejects_other_settings(make_shards):
    shards = make_shards(n_docs=10)
    state = PackedLoader(shards, 8, 4, seed=1).state_dict()
    with pytest.raises(ValueError, match="seq_len"):
        PackedLoader(shards, 16, 4, seed=1).load_state_dict(state)


def test_mixture_exact_proportions_per_global_batch(shards_from_docs):
    low = shards_from_docs("low", [[5] * 20, [6] * 30, [7] * 25])
    high = shards_from_docs("high", [[300] * 20, [301] * 35])
    sets = {"low": low, "high": high}

    def source_counts(batch_inputs):
        is_high = (batch_inputs >= 300).any(dim=1)  # every row of 8 tokens holds a content token
        return int((~is_high).sum()), int(is_high.sum())

    for ws in (1, 2, 4):
        for ids, _, _ in _global_batches(sets, 12, ws, seq_len=8, global_batch_size=8, seed=0,
                                         mixture_weights={"low": 0.75, "high": 0.25}):
            assert source_counts(ids) == (6, 2)
    # documents in order: lanes are split 6/2 once and keep their source
    lanes = PackedLoader(sets, 8, 8, mode="documents_in_order", mixture_weights={"low": 3, "high": 1})
    first = next(lanes).input_ids
    for _ in range(3):
        ids = next(lanes).input_ids
        assert source_counts(ids) == (6, 2)
        assert torch.equal((ids >= 300).any(dim=1), (first >= 300).any(dim=1))
    # a share B*w that is not an integer: every prefix stays within one row of the exact share
    loader = PackedLoader(sets, 8, 4, seed=0, mixture_weights={"low": 2, "high": 1})
    total_high = 0
    for g in range(1, 31):
        total_high += source_counts(next(loader).input_ids)[1]
        assert abs(total_high - g * 4 / 3) < 1


def test_documents_in_order_continues_rows(make_shards):
    shards = make_shards(n_docs=40)
    T = 8
    loader = PackedLoader(shards, seq_len=T, global_batch_size=3, seed=4, mode="documents_in_order")
    steps_per_epoch = (shards.num_tokens // 3 - 1) // T
    batches = [next(loader) for _ in range(steps_per_epoch + 2)]
    assert batches[0].resets[:, 0].all()  # the first window of every lane discards carried state
    for prev, cur in zip(batches[:steps_per_epoch - 1], batches[1:steps_per_epoch]):
        assert torch.equal(cur.input_ids[:, 0], prev.labels[:, -1])  # row i continues row i
        assert torch.equal(cur.resets[:, 0], cur.input_ids[:, 0] == shards.bos_id)
        assert torch.equal(cur.resets, cur.input_ids == shards.bos_id)
    assert batches[steps_per_epoch].resets[:, 0].all()  # new epoch: lanes restart


def test_eval_batches_cover_the_stream_in_order_with_padding(make_shards):
    shards = make_shards(n_docs=12)
    T, B = 16, 3
    batches = list(iter_eval_batches(shards, T, B))
    again = list(iter_eval_batches(shards, T, B))
    assert all(torch.equal(a.input_ids, b.input_ids) for a, b in zip(batches, again))
    stream = np.concatenate([shards.document(i) for i in range(shards.num_docs)])
    labels = torch.cat([b.labels for b in batches]).flatten()
    labels = labels[labels != IGNORE_INDEX]
    assert labels.tolist() == stream[1:].tolist()  # every token but the first is a label, once, in order
    last = batches[-1]
    pad = last.labels == IGNORE_INDEX
    assert pad.any() and (last.input_ids[pad[:, :]][1:] == shards.pad_id).all()
    assert batches[0].resets[0, 0]
    assert len(list(iter_eval_batches(shards, T, B, max_batches=1))) == 1


def test_bad_loader_arguments(make_shards):
    shards = make_shards(n_docs=3, max_len=3)
    with pytest.raises(ValueError, match="world_size"):
        PackedLoader(shards, 8, 3, world_size=2)
    with pytest.raises(ValueError, match="cannot fill one row"):
        PackedLoader(shards, 10_000, 1)
    with pytest.raises(ValueError, match="mixture_weights"):
        PackedLoader({"a": shards}, 4, 1, mixture_weights={"b": 1.0})


def test_batches_are_pinned_on_gpu_machines(make_shards, monkeypatch):
    """With CUDA present every batch comes in page-locked memory (the trainer's host-to-device
    copies are non-blocking); pinning needs a GPU, so it is recorded here instead of performed."""
    shards = make_shards(n_docs=10, max_len=60)
    pinned = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(self.shape) or self)
    batch = next(PackedLoader(shards, seq_len=8, global_batch_size=2, seed=0))
    assert pinned == [batch.input_ids.shape, batch.labels.shape, batch.resets.shape]
