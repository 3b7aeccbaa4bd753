"""Perplexity on a shard set, and loss by position on inputs many times the training length.

Long inputs are run chunk by chunk with the recurrent state carried across chunks
(``model(chunk, state=state, return_state=True)``): memory is constant in the input length, so a
128k-token context of a tiny model evaluates on a CPU.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from recurlm.data import IGNORE_INDEX, ShardSet, iter_eval_batches
from recurlm.eval.results import Record
from recurlm.models.base import RecurrentLM
from recurlm.models.state import ModelState


@torch.no_grad()
def perplexity(model: RecurrentLM, shards: ShardSet, seq_len: int, batch_size: int,
               max_batches: Optional[int] = None) -> list[Record]:
    """Mean next-token loss (nats) and perplexity over the deterministic validation batches."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in iter_eval_batches(shards, seq_len, batch_size, max_batches=max_batches or None):
        logits, _ = model(batch.input_ids.to(device), resets=batch.resets.to(device))
        labels = batch.labels.to(device)
        total += F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX,
                                 reduction="sum").item()
        count += int((labels != IGNORE_INDEX).sum())
    if count == 0:
        raise ValueError("ppl: the shard set yielded no tokens to score")
    loss = total / count
    settings = {"seq_len": seq_len, "tokens": count}
    return [Record("ppl", "loss", loss, settings, summary=True),
            Record("ppl", "ppl", math.exp(min(loss, 700.0)), settings, summary=True)]


@torch.no_grad()
def chunked_map(model: RecurrentLM, input_ids: torch.Tensor, chunk_len: int,
                fn: Callable[[torch.Tensor, int, int], torch.Tensor],
                resets: Optional[torch.Tensor] = None, state: Optional[ModelState] = None) -> torch.Tensor:
    """Run input_ids [B, L] in chunks of ``chunk_len`` with the state carried across chunks and
    concatenate ``fn(logits [B, c, V], start, end)`` (each [B, c]) along dim 1 → [B, L]."""
    outputs = []
    for start in range(0, input_ids.shape[1], chunk_len):
        end = min(start + chunk_len, input_ids.shape[1])
        chunk_resets = resets[:, start:end] if resets is not None else None
        logits, state = model(input_ids[:, start:end], resets=chunk_resets, state=state, return_state=True)
        outputs.append(fn(logits, start, end))
    return torch.cat(outputs, dim=1)


def chunked_token_losses(model: RecurrentLM, input_ids: torch.Tensor, chunk_len: int,
                         resets: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-token losses of input_ids [B, L] → [B, L-1] (entry t: loss of token t+1 given tokens
    0..t), computed in chunks of ``chunk_len`` with the state carried across chunks."""
    def losses(logits: torch.Tensor, start: int, end: int) -> torch.Tensor:
        targets = input_ids[:, start + 1:end + 1]
        return F.cross_entropy(logits[:, :targets.shape[1]].float().transpose(1, 2), targets, reduction="none")

    return chunked_map(model, input_ids[:, :-1], chunk_len, losses, resets=resets)


def chunked_argmax(model: RecurrentLM, input_ids: torch.Tensor, chunk_len: int) -> torch.Tensor:
    """input_ids [B, L] → the model's greedy next-token prediction after every token [B, L]."""
    return chunked_map(model, input_ids, chunk_len, lambda logits, s, e: logits.argmax(-1))


def long_sequences(shards: ShardSet, length: int, count: int) -> tuple[torch.Tensor, str]:
    """``count`` token rows of ``length`` [N, length] and how they were made: the first ``length``
    tokens of validation documents at least that long (``documents``), else the validation
    documents concatenated in order and cut into rows (``concatenated``; the state runs across
    document boundaries, which is what a long context is for a recurrent model). Fewer rows are
    returned when the split is short; it is repeated if it holds less than one row."""
    lengths = np.asarray(shards.doc_lengths)
    long_docs = np.flatnonzero(lengths >= length)[:count]
    if len(long_docs) >= max(1, count // 2):
        rows = [np.asarray(shards.document(int(i))[:length], dtype=np.int64) for i in long_docs]
        return torch.from_numpy(np.stack(rows)), "documents"
    pieces, total = [], 0
    for i in range(shards.num_docs):
        pieces.append(np.asarray(shards.document(i), dtype=np.int64))
        total += len(pieces[-1])
        if total >= length * count:
            break
    stream = np.concatenate(pieces)
    if len(stream) < length:
        stream = np.tile(stream, -(-length // len(stream)))
    n_rows = min(count, len(stream) // length)
    return torch.from_numpy(stream[: n_rows * length].reshape(n_rows, length)), "concatenated"


def log_buckets(max_position: int, per_octave: int = 2) -> list[int]:
    """Bucket edges 1 = e0 < e1 < ... = max_position + 1, log-spaced (``per_octave`` per doubling)."""
    n = max(1, math.ceil(per_octave * math.log2(max_position + 1)))
    edges = sorted({int(round(2 ** (k / per_octave))) for k in range(n + 1)} | {1, max_position + 1})
    return [e for e in edges if e <= max_position + 1]


@torch.no_grad()
def loss_by_position(model: RecurrentLM, shards: ShardSet, train_seq_len: int, length_multiple: int,
                     count: int, batch_size: int, chunk_len: int) -> tuple[list[Record], dict]:
    """Loss per log-spaced position bucket over rows of ``length_multiple * train_seq_len`` tokens.

    Position p (1-based) is the number of tokens seen when predicting the next one. Returns the
    records and the curve for plotting: ``{"edges", "bucket_loss", "position_loss", ...}``."""
    device = next(model.parameters()).device
    length = length_multiple * train_seq_len + 1
    rows, source = long_sequences(shards, length, count)
    losses = torch.cat([chunked_token_losses(model, rows[i:i + batch_size].to(device), chunk_len).cpu()
                        for i in range(0, len(rows), batch_size)])
    position_loss = losses.mean(0).numpy()  # index t ↔ position t + 1
    edges = log_buckets(length - 1)
    settings = {"rows": len(rows), "source": source, "train_seq_len": train_seq_len, "chunk_len": chunk_len}
    records, bucket_loss = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        value = float(position_loss[lo - 1:hi - 1].mean())
        bucket_loss.append(value)
        records.append(Record("ppl_by_position", "loss", value, {"from": lo, "to": hi - 1}))
    within = float(position_loss[:train_seq_len].mean())
    beyond = float(position_loss[train_seq_len:].mean())
    tail_from = (length - 1) // 2
    records += [
        Record("ppl_by_position", "loss_within_train_len", within, {"to": train_seq_len, **settings}, summary=True),
        Record("ppl_by_position", "loss_beyond_train_len", beyond,
               {"from": train_seq_len + 1, "to": length - 1}, summary=True),
        Record("ppl_by_position", "loss_last_half", float(position_loss[tail_from:].mean()),
               {"from": tail_from + 1, "to": length - 1}),
    ]
    curve = {"edges": edges, "bucket_loss": bucket_loss, "position_loss": position_loss,
             "train_seq_len": train_seq_len, "rows": len(rows), "source": source}
    return records, curve
