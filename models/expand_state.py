"""Post-training state expansion (StateX-style: Shen et al., 2025): give a trained model a larger
recurrent state while adding few or no parameters, then continue pretraining briefly.

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

Griffin / Hawk keep a vector per layer (the RG-LRU's R channels). Widening it (R -> f R) would
need new input projections, ~3 D R (f - 1) parameters per layer (+20% on the tiny preset); instead
every channel gets f sub-states (``state_expansion`` of ``recurlm.models.griffin``): the same gated
input feeds f diagonal recurrences with distinct decays, read out by learned mixing weights.

- griffin / hawk: ``state_expansion`` f0 -> f0 f. Sub-state 0 keeps the trained Λ, the new
  sub-states get fresh decays on the paper's ring (a^2 ~ U[a_init_min^2, a_init_max^2]: time
  scales spread over the ring whatever Λ was trained to) and mixing weight 0, so the logits are
  *identical* right after the transform; a gradient reaches the new mixing weights at once (the
  new sub-states are not zero) and through them the new decays. Parameters: (2 f - 1) R per
  recurrent layer for f0 = 1 (+0.01% of the 1b preset at f = 2).

Titans' memory is an MLP whose weights are the state (``mem_w*``, ``mem_s*``); its initial value is
a parameter, so growing the state grows those parameters (+1-2% of a paper-size model at f = 2;
no other weight changes):

- depth 2 (the paper's deep memory): ``memory_expansion`` e -> f e. The hidden layer gets new units
  with freshly initialised input columns of W1 and zero rows of W2 (their read-out): the initial
  memory computes the same function, but the inner gradient descent writes into the new units from
  the first mini-batch on (the gradient on W2's new rows is act(k W1_new)^T (M(k) - v)), so the
  logits move a little after the first write.
- depth 1 (linear memory): merge heads as the linear-attention families (``memory_heads`` H ->
  H / f): the initial memory of a merged head is block-diagonal in the old heads' matrices and the
  per-head gate rows (theta, eta, alpha) are averaged. Reads move because the l2 norms of q and k
  now run over f heads at once (the keys written are 1 / sqrt(f) shorter).
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
SUB_STATES = {"griffin", "hawk"}
"""Diagonal-state families: more sub-states per RG-LRU channel (``state_expansion``)."""
TITANS = {"titans_mac", "titans_mag", "titans_mal"}
ZERO_NEW_PART = ("rg_lru.state_mix", "memory.init_weights.1")
"""Parameters whose new slice starts at zero: the read-out of the new sub-states / hidden units."""


def expanded_config(cfg: ModelConfig, factor: int) -> ModelConfig:
    """The config of ``cfg``'s model with its recurrent state per layer ``factor`` times larger."""
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    family, size = cfg.family, f"{cfg.size}-state{factor}x"
    if family in HEAD_MERGE:
        name = HEAD_MERGE[family]
        value = getattr(cfg, name)
        if name == "n_heads":
            if value % factor:
                raise ValueError(f"{family}: n_heads={value} is not divisible by factor {factor}")
            return dataclasses.replace(cfg, n_heads=value // factor, size=size)
        if cfg.d_model % (value * factor):
            raise ValueError(f"{family}: d_model={cfg.d_model} is not a multiple of {name}={value} x {factor}")
        return dataclasses.replace(cfg, **{name: value * factor}, size=size)
    if family in SUB_STATES:
        return dataclasses.replace(cfg, state_expansion=cfg.state_expansion * factor, size=size)
    if family in TITANS:
        if cfg.memory_depth == 2:
            return dataclasses.replace(cfg, memory_expansion=cfg.memory_expansion * factor, size=size)
        if cfg.memory_heads % factor:
            raise ValueError(f"{family}: memory_heads={cfg.memory_heads} is not divisible by factor {factor}")
        return dataclasses.replace(cfg, memory_heads=cfg.memory_heads // factor, size=size)
    raise NotImplementedError(f"state expansion is implemented for {sorted({*HEAD_MERGE, *SUB_STATES, *TITANS})}; "
                              f"not for {family!r}")


def _block_diagonal(old: torch.Tensor, factor: int) -> torch.Tensor:
    """Per-head matrices old [H, K, V] -> [H / f, f K, f V], f consecutive heads on the diagonal."""
    heads, k, v = old.shape
    out = old.new_zeros(heads // factor, factor * k, factor * v)
    for a in range(factor):
        out[:, a * k:(a + 1) * k, a * v:(a + 1) * v] = old[a::factor]
    return out


def _transfer(name: str, old: Optional[torch.Tensor], fresh: torch.Tensor, factor: int) -> torch.Tensor:
    """The expanded model's tensor ``name`` from the trained ``old`` (None: a parameter the old
    model did not have) and a freshly initialised ``fresh``."""
    if old is None:
        return fresh.clone()  # new parameters keep their fresh init (Griffin's one-hot state mix, new decays)
    old = old.float()
    if old.shape == fresh.shape:
        return old.clone()
    if old.numel() == fresh.numel():  # per-head vectors [H, N] -> [H / f, f N]: same channels, regrouped
        return old.reshape(fresh.shape).clone()
    if old.shape[0] == fresh.shape[0] * factor and old.shape[1:] == fresh.shape[1:]:  # per-head gate rows
        return old.unflatten(0, (fresh.shape[0], factor)).mean(1)
    if old.ndim == 3 and fresh.shape == (old.shape[0] // factor, *(factor * n for n in old.shape[1:])):
        return _block_diagonal(old, factor)  # per-head matrices of merged heads (Titans' linear memory)
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
    new.load_state_dict({name: _transfer(name, old_state.get(name), fresh, factor)
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
