"""Checks every model family must pass (tests/models/test_<family>.py run them on tiny configs).

Each takes a tiny model in float64 (so that mismatches are bugs, not rounding) and asserts:
- parallel (chunkwise) forward == token-by-token ``step``;
- a packed row of several documents == each document run alone;
- a sequence in two halves with state passing == the sequence whole;
- forward + backward are finite and reach every parameter.
"""
from __future__ import annotations

import torch

from recurlm.models import RecurrentLM

ATOL = 1e-8


def random_tokens(model: RecurrentLM, batch: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (batch, seq_len), generator=g)


@torch.no_grad()
def check_parallel_equals_step(model: RecurrentLM, seq_len: int = 13, batch: int = 2, atol: float = ATOL) -> None:
    ids = random_tokens(model, batch, seq_len)
    parallel, final = model(ids, return_state=True)
    state = model.init_state(batch)
    stepped = []
    for t in range(seq_len):
        logits, state = model.step(ids[:, t], state)
        stepped.append(logits)
    torch.testing.assert_close(torch.stack(stepped, 1), parallel, atol=atol, rtol=0)
    for a, b in zip(state.flat().values(), final.flat().values()):
        torch.testing.assert_close(a, b.to(a.dtype), atol=atol, rtol=0)


@torch.no_grad()
def check_packed_equals_separate(model: RecurrentLM, doc_lengths=(5, 1, 9, 4), atol: float = ATOL) -> None:
    docs = [random_tokens(model, 1, n, seed=i) for i, n in enumerate(doc_lengths)]
    packed = torch.cat(docs, dim=1)
    resets = torch.zeros_like(packed, dtype=torch.bool)
    start = 0
    for d in docs:
        resets[0, start] = True
        start += d.shape[1]
    logits_packed, _ = model(packed, resets=resets)
    alone = torch.cat([model(d)[0] for d in docs], dim=1)
    torch.testing.assert_close(logits_packed, alone, atol=atol, rtol=0)
    # a second row, shifted, in the same batch: resets work per row
    rolled = torch.roll(packed, 3, dims=1)
    rolled_resets = torch.roll(resets, 3, dims=1)
    rolled_resets[0, 0] = True
    both, _ = model(torch.cat([packed, rolled]), resets=torch.cat([resets, rolled_resets]))
    torch.testing.assert_close(both[:1], logits_packed, atol=atol, rtol=0)


@torch.no_grad()
def check_state_passing(model: RecurrentLM, seq_len: int = 21, split: int = 8, batch: int = 2, atol: float = ATOL) -> None:
    ids = random_tokens(model, batch, seq_len)
    whole, final = model(ids, return_state=True)
    first, state = model(ids[:, :split], return_state=True)
    second, state = model(ids[:, split:], state=state, return_state=True)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, atol=atol, rtol=0)
    for a, b in zip(state.flat().values(), final.flat().values()):
        torch.testing.assert_close(a, b, atol=atol, rtol=0)


def check_backward(model: RecurrentLM, seq_len: int = 17, batch: int = 2) -> None:
    ids = random_tokens(model, batch, seq_len)
    resets = torch.zeros_like(ids, dtype=torch.bool)
    resets[:, 0] = True
    resets[0, seq_len // 2] = True
    loss, _ = model(ids, resets=resets, labels=ids.roll(-1, 1))
    assert torch.isfinite(loss)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not no_grad, f"parameters without a finite gradient: {no_grad}"


def run_all(model: RecurrentLM) -> None:
    model = model.double().eval()
    check_parallel_equals_step(model)
    check_packed_equals_separate(model)
    check_state_passing(model)
    check_backward(model.train())
