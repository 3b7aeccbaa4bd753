"""ppl and ppl_by_position: chunked evaluation with a carried state equals one full pass, and the
numbers agree with the model's own loss."""
import math

import numpy as np
import torch

from recurlm.data import iter_eval_batches
from recurlm.eval.perplexity import (chunked_token_losses, log_buckets, long_sequences, loss_by_position,
                                     perplexity)


def test_chunked_losses_equal_one_full_pass(make_model):
    model = make_model("hgrn2")
    ids = torch.randint(4, 300, (2, 45))
    logits, _ = model(ids[:, :-1])
    full = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    for chunk in (7, 16, 44):
        torch.testing.assert_close(chunked_token_losses(model, ids, chunk), full, rtol=1e-4, atol=1e-4)


def test_ppl_matches_the_models_mean_loss(make_model, synthetic_data):
    model = make_model("griffin")
    records = {r.metric: r for r in perplexity(model, synthetic_data.valid, 32, 2, max_batches=2)}
    total, count = 0.0, 0
    for batch in iter_eval_batches(synthetic_data.valid, 32, 2, max_batches=2):
        loss, _ = model(batch.input_ids, resets=batch.resets, labels=batch.labels)
        n = batch.num_loss_tokens
        total, count = total + loss.item() * n, count + n
    assert records["loss"].settings["tokens"] == count
    assert abs(records["loss"].value - total / count) < 1e-4
    assert abs(records["ppl"].value - math.exp(total / count)) < 1e-2 * records["ppl"].value


def test_log_buckets_partition_positions():
    edges = log_buckets(1000)
    assert edges[0] == 1 and edges[-1] == 1001
    assert all(b > a for a, b in zip(edges, edges[1:]))
    assert len(edges) < 25  # log-spaced, not linear


def test_long_sequences_from_documents_or_the_concatenated_stream(synthetic_data):
    valid = synthetic_data.valid
    rows, source = long_sequences(valid, 20, 3)
    assert source == "documents" and rows.shape == (3, 20)
    np.testing.assert_array_equal(rows[0].numpy(), valid.document(int(np.flatnonzero(np.asarray(valid.doc_lengths) >= 20)[0]))[:20])
    long = 4 * int(max(valid.doc_lengths))
    rows, source = long_sequences(valid, long, 2)
    assert source == "concatenated" and rows.shape[1] == long
    np.testing.assert_array_equal(rows[0, :len(valid.document(0))].numpy(), valid.document(0))


def test_loss_by_position_covers_sixteen_times_the_training_length(make_model, synthetic_data):
    model = make_model("rwkv7")
    records, curve = loss_by_position(model, synthetic_data.valid, train_seq_len=16, length_multiple=16,
                                      count=2, batch_size=2, chunk_len=16)
    buckets = [r for r in records if r.metric == "loss"]
    assert buckets[0].settings["from"] == 1 and buckets[-1].settings["to"] == 256
    assert len(curve["position_loss"]) == 256
    # bucket means are means of the per-position curve
    b = buckets[3]
    assert abs(b.value - curve["position_loss"][b.settings["from"] - 1:b.settings["to"]].mean()) < 1e-6
    summary = {r.metric: r.value for r in records if r.summary}
    assert abs(summary["loss_within_train_len"] - curve["position_loss"][:16].mean()) < 1e-6
    assert all(np.isfinite(curve["position_loss"]))
