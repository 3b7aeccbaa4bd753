"""Effective Remembrance (Buitrago Ruiz & Gu, 2025, arXiv 2507.02782, where it diagnoses the failure): how much the
tokens before position t still change the model's prediction at the end of a context of T tokens,

    EffRem_T(t) = TV( q(. | x_0:T), q(. | x_t:T) ) = 1/2 sum_v | q(v | x_0:T) - q(v | x_t:T) |,

averaged over sequences. EffRem(0) = 0 and EffRem(T) is the effect of the whole context. A model
that generalises to T keeps EffRem small for small t (the distant past matters little); the
paper's failure mode is a model whose prediction at T depends strongly on the *first* tokens
(EffRem near 1 already for small t), which is what the state-initialisation recipes reduce.
"""
from __future__ import annotations

from typing import Optional

import torch

from recurlm.data import ShardSet
from recurlm.eval.perplexity import long_sequences
from recurlm.eval.results import Record
from recurlm.models.base import RecurrentLM


@torch.no_grad()
def final_distribution(model: RecurrentLM, input_ids: torch.Tensor, chunk_len: int) -> torch.Tensor:
    """q(. | input_ids) after the last token, input_ids [B, L] run in chunks with the state
    carried → probabilities [B, V] (float64)."""
    state, logits = None, None
    for start in range(0, input_ids.shape[1], chunk_len):
        logits, state = model(input_ids[:, start:start + chunk_len], state=state, return_state=True)
    return logits[:, -1].double().softmax(-1)


def cut_points(context: int, points: int) -> list[int]:
    """Values of t in [0, context): ``points`` evenly spaced ones (0 included) and those that keep
    the last 1, 2, 4, ... tokens (t = T - 2^k): a model whose memory is short next to T changes
    only there."""
    even = {int(round(i * context / points)) for i in range(points)}
    near_end = {context - 2 ** k for k in range(context.bit_length()) if 2 ** k <= context}
    return sorted(even | near_end)


@torch.no_grad()
def effrem_eval(model: RecurrentLM, shards: ShardSet, context: int, points: int, count: int, batch_size: int,
                chunk_len: int, train_seq_len: Optional[int] = None) -> tuple[list[Record], dict]:
    """EffRem_T(t) at ``points`` values of t for T = ``context`` over ``count`` validation rows."""
    device = next(model.parameters()).device
    rows, source = long_sequences(shards, context, count)
    ts = cut_points(context, points)
    sums = torch.zeros(len(ts), dtype=torch.float64)
    for i in range(0, len(rows), batch_size):
        ids = rows[i:i + batch_size].to(device)
        full = final_distribution(model, ids, chunk_len)
        for j, t in enumerate(ts):
            cut = full if t == 0 else final_distribution(model, ids[:, t:], chunk_len)
            sums[j] += 0.5 * (full - cut).abs().sum(-1).sum().cpu()
    effrem = (sums / len(rows)).tolist()
    settings = {"context": context, "rows": len(rows), "source": source, "chunk_len": chunk_len}
    records = [Record("effrem", "tv", value, {"t": t, "context": context}) for t, value in zip(ts, effrem)]
    half = [v for t, v in zip(ts, effrem) if t <= context // 2]
    records.append(Record("effrem", "mean_tv_first_half", sum(half) / len(half), settings, summary=True))
    curve = {"t": ts, "effrem": effrem, "context": context, "train_seq_len": train_seq_len, "rows": len(rows),
             "source": source}
    return records, curve
