"""Post-training state expansion (StateX-style: Shen et al., 2025): give a trained model a larger
recurrent state while adding (almost) no parameters, then continue pretraining briefly.

Linear-attention families (HGRN2, RWKV-6, RWKV-7, xLSTM's mLSTM) keep a [K, V] matrix per head.
Merging ``factor`` adjacent heads into one head of width f K turns f states of K x V into one of
f K x f V: the state per layer grows by ``factor`` and the parameter count does not change (up to
per-head parameters, reshaped or averaged). The merged state's diagonal blocks evolve exactly as
the old heads did (per-key decays and the rank-1 writes act blockwise); the off-diagonal blocks
are new cross-head memory, read by the queries of the other heads — that is where the output moves
(plus per-head normalisations, whose groups widen). HGRN2's output norm is over the whole width,
so the 1/sqrt(K) read-out scale change cancels there.

- hgrn2: ``expand_ratio`` E -> f E (heads D / E -> D / (f E)); no parameter depends on the heads.
- rwkv6 / rwkv7: ``head_dim`` N -> f N; the per-head bonus ``time_faaaa`` / ``r_k`` [H, N] is
  reshaped to [H / f, f N]; ``ln_x`` normalises per merged head.
- xlstm: ``n_heads`` H -> H / f (mLSTM blocks; sLSTM heads are untouched); the per-head input and
  forget gates (rows of ``igate`` / ``fgate``) are averaged over the merged heads.

Families with a diagonal (vector) state widen it instead, with new parameters initialised so the
function is preserved exactly:

- griffin / hawk: RG-LRU width R -> f R (``lru_width``; ``lru_heads`` scaled so the gate blocks
  keep their width). New channels get the family's fresh initialisation (input projections,
  convolution, gates, decays on the paper's ring) and *zero* columns in the output projection, so
  the logits are unchanged right after the transform; training then learns to use them. This adds
  about 3 D (f - 1) R parameters per recurrent layer: more than the ~1% of the head merges.

Titans is not supported yet (its memory MLP is being written); ``expand_state`` says so.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch
import torch.nn.functional as F

from recurlm.models.base import RecurrentLM
from recurlm.models.config import ModelConfig
from recurlm.models.registry import build_model

HEAD_MERGE = {"hgrn2": "expand_ratio", "rwkv6": "head_dim", "rwkv7": "head_dim", "xlstm": "n_heads"}
"""Linear-attention families: the config field that sets the head size (n_heads is divided)."""
WIDEN = {"griffin", "hawk"}
ZERO_NEW_PART = ("linear_out.weight",)
"""Widening: parameters whose new slice starts at zero (the read-out of the new state channels)."""


def expanded_config(cfg: ModelConfig, factor: int) -> ModelConfig:
    """The config of ``cfg``'s model with its recurrent state per layer ``factor`` times larger."""
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    family = cfg.family
    if family in HEAD_MERGE:
        name = HEAD_MERGE[family]
        value = getattr(cfg, name)
        if name == "n_heads":
            if value % factor:
                raise ValueError(f"{family}: n_heads={value} is not divisible by factor {factor}")
            return dataclasses.replace(cfg, n_heads=value // factor, size=f"{cfg.size}-state{factor}x")
        if cfg.d_model % (value * factor):
            raise ValueError(f"{family}: d_model={cfg.d_model} is not a multiple of {name}={value} x {factor}")
        return dataclasses.replace(cfg, **{name: value * factor}, size=f"{cfg.size}-state{factor}x")
    if family in WIDEN:
        heads = cfg.lru_heads or cfg.n_heads
        return dataclasses.replace(cfg, lru_width=cfg.lru_width * factor, lru_heads=heads * factor, size=f"{cfg.size}-state{factor}x")
    raise NotImplementedError(f"state expansion is implemented for {sorted(HEAD_MERGE) + sorted(WIDEN)}; "
                              f"not for {family!r}")


def _transfer(name: str, old: torch.Tensor, fresh: torch.Tensor, factor: int) -> torch.Tensor:
    """The expanded model's tensor ``name`` from the trained ``old`` and a freshly initialised ``fresh``."""
    if old.shape == fresh.shape:
        return old.clone()
    if old.numel() == fresh.numel():  # per-head vectors [H, N] -> [H / f, f N]: same channels, regrouped
        return old.reshape(fresh.shape).clone()
    if old.shape[0] == fresh.shape[0] * factor and old.shape[1:] == fresh.shape[1:]:  # per-head gate rows
        return old.unflatten(0, (fresh.shape[0], factor)).mean(1)
    # widening: the old tensor fills the leading slice of every grown dimension
    if any(o > f for o, f in zip(old.shape, fresh.shape)) or old.ndim != fresh.ndim:
        raise ValueError(f"cannot map {name} {tuple(old.shape)} -> {tuple(fresh.shape)}")
    out = torch.zeros_like(fresh) if name.endswith(ZERO_NEW_PART) else fresh.clone()
    out[tuple(slice(0, n) for n in old.shape)] = old
    return out


@torch.no_grad()
def expand_state(model: RecurrentLM, factor: int, seed: int = 0) -> RecurrentLM:
    """A new model with ``factor`` times the recurrent state per layer (module docstring)."""
    cfg = expanded_config(model.config, factor)
    torch.manual_seed(seed)
    new = build_model(cfg)
    old_state = model.state_dict()
    new.load_state_dict({name: _transfer(name, old_state[name].float(), fresh, factor)
                         for name, fresh in new.state_dict().items()})
    return new.eval()


@torch.no_grad()
def logit_change(before: RecurrentLM, after: RecurrentLM, input_ids: torch.Tensor,
                 resets: Optional[torch.Tensor] = None) -> dict[str, Any]:
    """How far ``after`` moved from ``before`` on input_ids [B, T]: max / mean |logit diff|,
    KL(before || after) per token (nats), and next-token losses of both."""
    a, _ = before(input_ids, resets=resets)
    b, _ = after(input_ids, resets=resets)
    a, b = a.double(), b.double()
    log_p, log_q = a.log_softmax(-1), b.log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    target = input_ids[:, 1:]

    def loss(logits: torch.Tensor) -> float:
        return float(F.cross_entropy(logits[:, :-1].flatten(0, 1), target.flatten()))

    diff = (a - b).abs()
    return {"max_abs_logit_diff": float(diff.max()), "mean_abs_logit_diff": float(diff.mean()),
            "kl": float(kl), "loss_before": loss(a), "loss_after": loss(b),
            "params_before": before.num_params(), "params_after": after.num_params(),
            "state_bytes_before": before.state_bytes(), "state_bytes_after": after.state_bytes(),
            "tokens": int(input_ids.numel())}
