"""Post-training state expansion (StateX: Shen et al., 2025, "StateX: Enhancing RNN Recall via
Post-training State Expansion", arXiv 2509.22630; official code thunlp/StateX): give a trained model
a larger recurrent state while adding few or no parameters, then continue pretraining briefly
(``recipe=state_expansion``).

What the paper does, and the defaults here (``expand_state`` / ``recurlm-convert expand-state``):

- **Which layers** (``layers``): only a fraction, one layer in six (the official scripts'
  ``drop_prop=6``). ``"every:k"`` picks every k-th expandable layer counted from the last, so the
  last one is always expanded (a 2-layer tiny model expands one); ``"all"`` or a list of indices.
  Expandable layers are the ones with a growable recurrent state: not Griffin's local-attention
  blocks, not xLSTM's sLSTM blocks. The other layers are copied unchanged.
- **How** (``method``): ``"reinit"`` (the paper's method): the expanded layers' token mixers are
  freshly initialised with the family's own initialisation (for GLA the paper uses a fresh layer
  with all heads merged into one); the rest of those blocks (norms, MLP) and every other layer keep
  their trained weights. ``"inherit"`` is the paper's ablation ("merge"): the expanded mixers keep
  the trained weights, mapped onto the larger state as below.
- **How much** (linear-attention families, ``merge_heads``): merge ``f`` adjacent heads into one of
  width f K (state f K x f V: ``f`` times larger per layer, parameters unchanged); ``"all"`` (the
  paper's choice) merges every head of the layer into one. Other families grow by ``factor``.

State growth per family (same shapes for both methods):

- hgrn2: ``expand_ratio`` E -> f E (heads D / E -> D / (f E)); no parameter depends on the heads.
- rwkv6 / rwkv7: ``head_dim`` N -> f N; per-head parameters [H, N] (``time_faaaa``, ``r_k``) are
  reshaped to [H / f, f N]; ``ln_x`` normalises per merged head.
- xlstm: ``n_heads`` H -> H / f (mLSTM blocks); the per-head input and forget gate rows are
  averaged over the merged heads.
- titans (linear memory, depth 1): ``memory_heads`` H -> H / f; the initial memory of a merged
  head is block-diagonal in the old heads' matrices, per-head gate rows averaged.
- titans (deep memory, depth 2): ``memory_expansion`` e -> f e: new hidden units with fresh input
  columns of W1 and zero rows of W2 (their read-out).
- griffin / hawk: ``state_expansion`` f0 -> f0 f sub-states per RG-LRU channel: the same gated
  input feeds f diagonal recurrences with distinct decays (new ones fresh on the paper's ring
  a^2 ~ U[a_min^2, a_max^2]), read out by learned mixing weights, the new ones 0 (inherit: the
  logits are identical right after the transform; (2 f - 1) R parameters per layer).

What inheritance preserves (measured per family by ``diagonal_block_error`` in
tests/recipes/test_statex.py on layer 0 of a tiny model with perturbed weights, whose input is
unchanged): after merging pairs of heads, does block (a, a) of a merged head's state evolve exactly
as old head a's state did? (relative difference after 24 tokens in brackets)

- **hgrn2, rwkv6: yes, exactly** (0). Per-key decays and rank-1 writes k^T v act blockwise, so the
  diagonal blocks are the old states; the off-diagonal blocks are new cross-head memory, read by
  the other heads' queries (that is where the output moves; plus per-head norms whose groups widen).
- **rwkv7: no** (24%). Its keys are L2-normalised per head (``kk``) and the transition
  diag(w) - kk^T (a kk) mixes the whole head: normalising over f N channels changes every block.
- **xlstm: no** (22%). The input / forget gates are per head; averaging the merged heads' gate rows
  changes every old head's decay and write strength.
- **titans (linear memory): no** (11%). q and k are L2-normalised per head: over the merged head the keys
  written are shorter, and the gates are averaged.
- **griffin / hawk: yes** (sub-state 0 is the old state; the logits are unchanged).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

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
MIXER = {"hgrn2": "mixer", "griffin": "mixer", "hawk": "mixer", "rwkv6": "att", "rwkv7": "att", "xlstm": "mixer",
         **{family: "memory" for family in TITANS}}
"""The submodule of a block holding its recurrent token mixer (freshly initialised by ``reinit``)."""
NOT_EXPANDABLE = ("attention", "slstm")
"""Block kinds without a growable recurrent state (Griffin's local attention, xLSTM's sLSTM)."""
ZERO_NEW_PART = ("rg_lru.state_mix", "memory.init_weights.1")
"""Parameters whose new slice starts at zero: the read-out of the new sub-states / hidden units."""
METHODS = ("reinit", "inherit")


def heads(cfg: ModelConfig) -> int:
    """Heads of a linear-attention layer built from ``cfg`` (what ``merge_heads="all"`` merges)."""
    if cfg.family == "xlstm":
        return cfg.n_heads
    if cfg.family in TITANS:
        return cfg.memory_heads
    return cfg.d_model // getattr(cfg, HEAD_MERGE[cfg.family])


def state_changes(cfg: ModelConfig, factor: int) -> dict[str, Any]:
    """The config fields (and values) that make a layer built from ``cfg`` hold ``factor`` times the state."""
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    family = cfg.family
    if family in HEAD_MERGE:
        name = HEAD_MERGE[family]
        value = getattr(cfg, name)
        if name == "n_heads":
            if value % factor:
                raise ValueError(f"{family}: n_heads={value} is not divisible by factor {factor}")
            return {"n_heads": value // factor}
        if cfg.d_model % (value * factor):
            raise ValueError(f"{family}: d_model={cfg.d_model} is not a multiple of {name}={value} x {factor}")
        return {name: value * factor}
    if family in SUB_STATES:
        return {"state_expansion": cfg.state_expansion * factor}
    if family in TITANS:
        if cfg.memory_depth == 2:
            return {"memory_expansion": cfg.memory_expansion * factor}
        if cfg.memory_heads % factor:
            raise ValueError(f"{family}: memory_heads={cfg.memory_heads} is not divisible by factor {factor}")
        return {"memory_heads": cfg.memory_heads // factor}
    raise NotImplementedError(f"state expansion is implemented for {sorted({*HEAD_MERGE, *SUB_STATES, *TITANS})}; "
                              f"not for {family!r}")


def merges_heads(cfg: ModelConfig) -> bool:
    """True where expansion merges heads (linear-attention families, Titans' linear memory)."""
    return cfg.family in HEAD_MERGE or (cfg.family in TITANS and cfg.memory_depth == 1)


def expandable_layers(model: RecurrentLM) -> list[int]:
    """Indices of the blocks whose recurrent state expansion can grow."""
    return [i for i, block in enumerate(model.blocks) if getattr(block, "kind", None) not in NOT_EXPANDABLE]


def select_layers(model: RecurrentLM, spec: str | Sequence[int]) -> list[int]:
    """The blocks to expand: ``"all"``, ``"every:k"`` (every k-th expandable block counted from the
    last, so the last is always included) or a list / comma-separated string of indices."""
    candidates = expandable_layers(model)
    if not candidates:
        raise ValueError(f"{model.config.family}: no block has an expandable recurrent state")
    if isinstance(spec, str) and spec == "all":
        return candidates
    if isinstance(spec, str) and spec.startswith("every:"):
        step = int(spec.split(":", 1)[1])
        if step < 1:
            raise ValueError(f"--layers {spec}: k must be >= 1")
        return sorted(candidates[::-1][::step])
    indices = sorted({int(i) for i in (spec.split(",") if isinstance(spec, str) else spec)})
    bad = [i for i in indices if i not in candidates]
    if bad or not indices:
        raise ValueError(f"layers {spec!r}: blocks {bad or '(none)'} cannot be expanded; expandable blocks of this "
                         f"{model.config.family} model: {candidates}")
    return indices


def expanded_config(cfg: ModelConfig, factor: int | str, layers: Optional[Sequence[int]] = None) -> ModelConfig:
    """The config of ``cfg``'s model with ``factor`` times the recurrent state in ``layers`` (None:
    every block). ``factor="all"`` (head-merging families) merges every head of a layer into one."""
    layer_indices = range(cfg.n_layers) if layers is None else layers
    overrides = {str(i): dict(cfg.layer_overrides.get(str(i), {})) for i in range(cfg.n_layers)}
    growth = set()
    for i in layer_indices:
        layer = cfg.for_layer(i)
        f = heads(layer) if factor == "all" else int(factor)
        if factor == "all" and not merges_heads(layer):
            raise ValueError(f"{cfg.family}: merging all heads applies to linear-attention layers; give a factor")
        overrides[str(i)].update(state_changes(layer, f))
        growth.add(f)
    label = f"{cfg.size}-state{'x'.join(map(str, sorted(growth)))}x"
    if layers is None and not cfg.layer_overrides and len(growth) == 1:
        return dataclasses.replace(cfg, **overrides["0"], size=label)  # every block alike: no overrides needed
    return dataclasses.replace(cfg, size=f"{label}-L{'.'.join(map(str, layer_indices))}",
                               layer_overrides={k: v for k, v in overrides.items() if v})


def _block_diagonal(old: torch.Tensor, factor: int) -> torch.Tensor:
    """Per-head matrices old [H, K, V] -> [H / f, f K, f V], f consecutive heads on the diagonal."""
    heads, k, v = old.shape
    out = old.new_zeros(heads // factor, factor * k, factor * v)
    for a in range(factor):
        out[:, a * k:(a + 1) * k, a * v:(a + 1) * v] = old[a::factor]
    return out


def _transfer(name: str, old: Optional[torch.Tensor], fresh: torch.Tensor, factor: int) -> torch.Tensor:
    """The expanded model's tensor ``name`` from the trained ``old`` (None: a parameter the old
    model did not have) and a freshly initialised ``fresh`` (parameter inheritance)."""
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
def expand_state(model: RecurrentLM, factor: int | str = 2, seed: int = 0, method: str = "reinit",
                 layers: str | Sequence[int] = "every:6") -> RecurrentLM:
    """A new model with ``factor`` times the recurrent state in the selected ``layers`` (module
    docstring); ``factor="all"`` merges all heads of a linear-attention layer into one."""
    if method not in METHODS:
        raise ValueError(f"method {method!r}: expected one of {METHODS}")
    chosen = select_layers(model, layers)
    # every expandable block: one config for all (the other blocks' kinds do not read the changed field)
    cfg = expanded_config(model.config, factor, None if chosen == expandable_layers(model) else chosen)
    torch.manual_seed(seed)
    new = build_model(cfg)
    old_state = model.state_dict()
    fresh_prefixes = tuple(f"blocks.{i}.{MIXER[cfg.family]}." for i in chosen) if method == "reinit" else ()
    weights = {}
    for name, fresh in new.state_dict().items():
        if name.startswith(fresh_prefixes):
            weights[name] = fresh.clone()
            continue
        layer = int(name.split(".")[1]) if name.startswith("blocks.") else None
        f = 1 if layer is None or layer not in chosen else \
            (heads(model.config.for_layer(layer)) if factor == "all" else int(factor))
        weights[name] = _transfer(name, old_state.get(name), fresh, f)
    new.load_state_dict(weights)
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
