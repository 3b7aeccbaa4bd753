"""Synthetic evaluations: passkey retrieval, multi-query associative recall, state tracking
(parity, modular counting, and the S5 / A5 permutation word problems).

Examples come from :mod:`recurlm.data.synthetic` (the same text format as the ``synthetic``
training source). An example is tokenized once as a whole, ``[BOS] + encode(text)``; an answer is
correct when the model's greedy prediction equals every token overlapping the answer's characters
(teacher forcing: one forward pass per batch, long inputs in state-carrying chunks).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from recurlm.data.synthetic import GROUPS, PASSKEY_FILLER, PASSKEY_INTRO, Example, examples, group_elements
from recurlm.eval.config import STATE_TRACKING_TASKS
from recurlm.eval.perplexity import chunked_argmax
from recurlm.eval.results import Record
from recurlm.models.base import RecurrentLM


def encode_example(tokenizer: Any, example: Example) -> tuple[list[int], list[tuple[int, int]]]:
    """``[BOS] + tokens`` of the example's text and, per answer, its token range [start, end)
    (every piece overlapping the answer's bytes)."""
    text = example.text
    proto = tokenizer.sp.encode(text, return_type="proto")
    ids = [tokenizer.bos_id] + [p.id for p in proto.pieces]
    begins = [p.begin for p in proto.pieces]
    ends = [p.end for p in proto.pieces]
    spans, offset = [], 0
    for segment, is_answer in example.segments:
        size = len(segment.encode("utf-8"))
        if is_answer:
            inside = [i for i, (b, e) in enumerate(zip(begins, ends)) if e > offset and b < offset + size]
            spans.append((inside[0] + 1, inside[-1] + 2))  # +1: the BOS in front
        offset += size
    return ids, spans


@torch.no_grad()
def answer_correct(model: RecurrentLM, tokenizer: Any, batch: Sequence[Example], chunk_len: int) -> list[list[bool]]:
    """Per example, per answer: does greedy decoding under teacher forcing reproduce it?"""
    device = next(model.parameters()).device
    encoded = [encode_example(tokenizer, ex) for ex in batch]
    length = max(len(ids) for ids, _ in encoded)
    # right padding: a causal recurrent model's predictions before the padding are unaffected
    ids = torch.full((len(batch), length), tokenizer.pad_id, dtype=torch.long)
    for row, (tokens, _) in enumerate(encoded):
        ids[row, :len(tokens)] = torch.tensor(tokens)
    predictions = chunked_argmax(model, ids.to(device), chunk_len).cpu()
    return [[bool((predictions[row, s - 1:e - 1] == ids[row, s:e]).all()) for s, e in spans]
            for row, (_, spans) in enumerate(encoded)]


def _accuracy(model, tokenizer, exs: Sequence[Example], batch_size: int, chunk_len: int) -> tuple[float, int]:
    flags = [f for i in range(0, len(exs), batch_size)
             for per_example in answer_correct(model, tokenizer, exs[i:i + batch_size], chunk_len)
             for f in per_example]
    return sum(flags) / len(flags), len(flags)


def mqar_eval(model: RecurrentLM, tokenizer: Any, num_pairs: Sequence[int], count: int, seed: int,
              batch_size: int, chunk_len: int, value_digits: int = 3) -> tuple[list[Record], dict]:
    """Recall accuracy (all pairs queried) per number of stored key-value pairs; values have
    ``value_digits`` digits (chance: 10^-value_digits per query)."""
    state_bytes = model.state_bytes()
    records, curve = [], {"num_pairs": [], "accuracy": [], "state_bytes": state_bytes}
    for n in num_pairs:
        acc, queries = _accuracy(model, tokenizer, examples("mqar", seed + n, count,
                                                        {"num_pairs": n, "value_digits": value_digits}),
                                 batch_size, chunk_len)
        records.append(Record("mqar", "accuracy", acc, {"num_pairs": n, "queries": queries,
                                                        "value_digits": value_digits, "state_bytes": state_bytes,
                                                        "state_bytes_per_pair": state_bytes / n}))
        curve["num_pairs"].append(n)
        curve["accuracy"].append(acc)
    records.append(Record("mqar", "mean_accuracy", sum(curve["accuracy"]) / len(curve["accuracy"]),
                          {"num_pairs": list(num_pairs), "state_bytes": state_bytes}, summary=True))
    return records, curve


def filler_repeats_for(tokenizer: Any, target_tokens: int) -> int:
    """Filler repetitions that bring a passkey prompt to about ``target_tokens`` tokens."""
    per_filler = len(tokenizer.encode(PASSKEY_FILLER * 8)) / 8
    overhead = len(tokenizer.encode(PASSKEY_INTRO)) + 40
    return max(1, int((target_tokens - overhead) / per_filler))


def passkey_eval(model: RecurrentLM, tokenizer: Any, lengths: Sequence[int], depths: Sequence[float], trials: int,
                 seed: int, batch_size: int, chunk_len: int) -> tuple[list[Record], dict]:
    """Accuracy of retrieving a 5-digit key per (context length, depth) cell."""
    grid = [[0.0] * len(lengths) for _ in depths]
    records = []
    for j, length in enumerate(lengths):
        repeats = filler_repeats_for(tokenizer, length)
        for i, depth in enumerate(depths):
            exs = examples("passkey", seed + 7919 * j + i, trials, {"filler_repeats": repeats, "depth": depth})
            acc, _ = _accuracy(model, tokenizer, exs, batch_size, chunk_len)
            tokens = len(encode_example(tokenizer, exs[0])[0])
            grid[i][j] = acc
            records.append(Record("passkey", "accuracy", acc, {"length": length, "tokens": tokens,
                                                               "depth": depth, "trials": trials}))
    cells = [a for row in grid for a in row]
    records.append(Record("passkey", "mean_accuracy", sum(cells) / len(cells),
                          {"lengths": list(lengths), "depths": list(depths)}, summary=True))
    return records, {"lengths": list(lengths), "depths": list(depths), "accuracy": grid}


def state_tracking_eval(model: RecurrentLM, tokenizer: Any, tasks: Sequence[str], lengths: Sequence[int],
                        modulus: int, count: int, seed: int, batch_size: int, chunk_len: int
                        ) -> tuple[list[Record], dict]:
    """Accuracy of the final answer per task and sequence length: the sum modulo m (parity: m = 2,
    modcount: m = ``modulus``) or the composed group element (s5: 120 classes, a5: 60)."""
    unknown = [t for t in tasks if t not in STATE_TRACKING_TASKS]
    if unknown:
        raise ValueError(f"state_tracking_tasks {unknown}: choose from {STATE_TRACKING_TASKS}")
    records, curve = [], {"lengths": list(lengths), "tasks": {}, "chance": {}}
    for task in tasks:
        m = 2 if task == "parity" else len(group_elements(task)) if task in GROUPS else modulus
        accs = []
        for n in lengths:
            exs = examples(task, seed + n, count, {"length": n, "modulus": m})
            acc, _ = _accuracy(model, tokenizer, exs, batch_size, chunk_len)
            accs.append(acc)
            records.append(Record("state_tracking", "accuracy", acc, {"task": task, "length": n, "classes": m}))
        curve["tasks"][task] = accs
        curve["chance"][task] = 1.0 / m
        records.append(Record("state_tracking", "mean_accuracy", sum(accs) / len(accs),
                              {"task": task, "lengths": list(lengths), "chance": round(1.0 / m, 4)}, summary=True))
    return records, curve
