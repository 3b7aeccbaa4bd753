"""Sampling from a recurrent LM: parallel (chunkwise) prefill, then O(1)-per-token steps.

Prompts of different lengths share one batch by left padding: the row's first real token carries
``resets = True``, so the state accumulated over the padding is discarded (docs/dev-guide.md,
"Document boundaries"). After the prefill only the fixed-size recurrent state is kept: memory
does not grow with the number of generated tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from recurlm.models.base import RecurrentLM
from recurlm.models.state import ModelState


@dataclass
class SamplingConfig:
    max_new_tokens: int = 64
    """Tokens to generate at most per prompt."""
    temperature: float = 0.0
    """0: greedy; otherwise logits are divided by it before sampling."""
    top_k: int = 0
    """Sample among the k most likely tokens (0: all)."""
    top_p: float = 1.0
    """Nucleus sampling: the smallest set of tokens whose probability reaches top_p."""
    seed: int = 0
    """Seed of the sampling generator."""


@dataclass
class Generation:
    tokens: list[int]
    """Generated token ids (EOS excluded; up to the token that completed a stop string)."""
    text: str
    """Decoded text, cut before the first stop string (empty without a tokenizer)."""
    finish_reason: str
    """``eos``, ``stop`` (a stop string appeared) or ``length``."""


@torch.no_grad()
def prefill(model: RecurrentLM, prompts: Sequence[Sequence[int]], chunk_len: int = 0
            ) -> tuple[torch.Tensor, ModelState]:
    """Run the prompts in parallel mode (chunks of ``chunk_len`` tokens, 0 = one chunk) with left
    padding; returns (logits after each prompt's last token [B, V], state)."""
    if any(len(p) == 0 for p in prompts):
        raise ValueError("prompts must hold at least one token (start them with BOS)")
    device = next(model.parameters()).device
    length = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), length, dtype=torch.long)
    resets = torch.zeros(len(prompts), length, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        ids[row, length - len(prompt):] = torch.as_tensor(list(prompt))
        resets[row, length - len(prompt)] = True
    ids, resets = ids.to(device), resets.to(device)
    chunk_len = chunk_len or length
    state: Optional[ModelState] = None
    for start in range(0, length, chunk_len):
        logits, state = model(ids[:, start:start + chunk_len], resets=resets[:, start:start + chunk_len],
                              state=state, return_state=True)
    return logits[:, -1], state


def sample(logits: torch.Tensor, cfg: SamplingConfig, generator: Optional[torch.Generator]) -> torch.Tensor:
    """logits [B, V] → token ids [B] (greedy, or temperature / top-k / top-p sampling)."""
    if cfg.temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / cfg.temperature
    if cfg.top_k > 0:
        kth = torch.topk(logits, min(cfg.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= cfg.top_p  # keep the token that crosses top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


@torch.no_grad()
def generate(model: RecurrentLM, prompts: Sequence[Sequence[int]], cfg: SamplingConfig = SamplingConfig(),
             tokenizer=None, stop: Sequence[str] = (), eos_id: Optional[int] = None, prefill_chunk: int = 0,
             on_token: Optional[Callable[[int, int], None]] = None,
             on_step: Optional[Callable[[ModelState], None]] = None) -> list[Generation]:
    """Generate continuations of a batch of token-id prompts.

    ``stop`` strings end a row once its decoded text contains one (needs ``tokenizer``); ``eos_id``
    (default: the tokenizer's) ends it too. ``on_token(row, token_id)`` streams tokens as they are
    chosen; ``on_step(state)`` sees the state after every decoding step (tests check its size)."""
    eos_id = eos_id if eos_id is not None else (tokenizer.eos_id if tokenizer is not None else None)
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(cfg.seed)
    logits, state = prefill(model, prompts, prefill_chunk)
    batch = len(prompts)
    tokens: list[list[int]] = [[] for _ in range(batch)]
    finish: list[Optional[str]] = [None] * batch
    texts = [""] * batch
    for produced in range(1, cfg.max_new_tokens + 1):
        next_ids = sample(logits, cfg, generator)
        for row, token in enumerate(next_ids.tolist()):
            if finish[row]:
                continue
            if token == eos_id:
                finish[row] = "eos"
                continue
            tokens[row].append(token)
            if on_token is not None:
                on_token(row, token)
            if stop and tokenizer is not None:
                texts[row] = tokenizer.decode(tokens[row])
                if any(s in texts[row] for s in stop):
                    finish[row] = "stop"
        if all(finish) or produced == cfg.max_new_tokens:
            break
        logits, state = model.step(next_ids, state)
        if on_step is not None:
            on_step(state)
    out = []
    for row in range(batch):
        text = tokenizer.decode(tokens[row]) if tokenizer is not None else ""
        cut = min([text.index(s) for s in stop if s in text], default=len(text))
        out.append(Generation(tokens[row], text[:cut], finish[row] or "length"))
    return out
