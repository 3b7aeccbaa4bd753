"""Random initial states for the noise recipes (Random Noise and Fitted Noise of Buitrago Ruiz & Gu,
2025, arXiv 2507.02782), drawn per state entry as its family declares (``recurlm.models.state``):

=========== ======================================= ================================================
kind        Random Noise (``scale`` s)              Fitted Noise (statistics per layer, key, head)
=========== ======================================= ================================================
gaussian    N(0, s^2)                               N(mean, std^2) of final states
positive    exp(N(0, s^2)) (median 1)               exp(N(mean, std^2)) of log final states
relative    init + N(0, (s spread(init))^2)         init + N(mean, std^2) of (final - init)
real        a real final state (never random)       a real final state
=========== ======================================= ================================================

``init`` is the model's own initial value of the entry (``model.init_state``: Titans' learnt
initial memory, zeros for its momentum); ``spread(init)`` is its standard deviation over each
head's entries, so a momentum that starts at zero gets no noise. Statistics are fitted on final
states the current model reaches from its initial state (``fit_statistics``).
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch

from recurlm.models.state import EntryKind, ModelState, entry_kind

Statistics = dict[str, tuple[torch.Tensor, torch.Tensor]]
"""``{"<layer>.<key>": (mean, std)}``, float32 on CPU, each of shape [heads] or [] (per layer)."""


def _reduce_dims(kind: EntryKind, t: torch.Tensor) -> list[int]:
    return [d for d in range(t.ndim) if d != kind.head_dim]


def _per_head(value: torch.Tensor, kind: EntryKind, like: torch.Tensor) -> torch.Tensor:
    """A [heads] or [] statistic broadcastable against ``like`` (batch first)."""
    if kind.head_dim is None or value.ndim == 0:
        return value.to(like.device)
    shape = [1] * like.ndim
    shape[kind.head_dim] = -1
    return value.view(shape).to(like.device)


def _fit_value(kind: EntryKind, t: torch.Tensor, init: torch.Tensor) -> torch.Tensor:
    """The quantity whose mean and std are fitted for an entry of this kind."""
    t = t.double()
    if kind.noise == "positive":
        return t.clamp_min(1e-12).log()
    if kind.noise == "relative":
        return t - init.double()
    return t


def fit_statistics(kinds: list[dict[str, EntryKind]], finals: Iterable[ModelState], init: ModelState) -> Statistics:
    """Mean and std per layer, content key and head of ``finals`` (module docstring); ``init`` is
    the model's initial state (batch 1)."""
    sums: dict[str, list] = {}
    for final in finals:
        for i, layer in enumerate(final.layers):
            for key, t in (layer or {}).items():
                kind = entry_kind(kinds[i], key, t)
                if kind.noise == "real":
                    continue
                value = _fit_value(kind, t.detach(), init.layers[i][key].to(t.device))
                dims = _reduce_dims(kind, value)
                acc = sums.setdefault(f"{i}.{key}", [0.0, 0.0, 0])
                acc[0] = acc[0] + value.sum(dims).cpu()
                acc[1] = acc[1] + value.square().sum(dims).cpu()
                acc[2] += value.numel() // (value.shape[kind.head_dim] if kind.head_dim is not None else 1)
    if not sums:
        raise ValueError("fitted noise: no final states to fit (an empty fitting pass, or a model without content "
                         "state entries)")
    stats = {}
    for name, (total, squares, count) in sums.items():
        mean = total / count
        std = (squares / count - mean.square()).clamp_min(0).sqrt()
        stats[name] = (mean.float(), std.float())
    return stats


def draw_state(kinds: list[dict[str, EntryKind]], template: ModelState, init: ModelState,
               generator: torch.Generator, scale: float = 1.0, stats: Optional[Statistics] = None) -> ModelState:
    """A random initial state shaped like ``template`` (a real final state of as many rows, which
    gives the ``real`` entries), ``init`` the model's initial state (batch 1). With ``stats``:
    Fitted Noise; without: Random Noise of standard deviation ``scale``."""
    layers = []
    for i, layer in enumerate(template.layers):
        if layer is None:
            layers.append(None)
            continue
        out = {}
        for key, t in layer.items():
            kind = entry_kind(kinds[i], key, t)
            if kind.noise == "real":
                out[key] = t
                continue
            eps = torch.randn(t.shape, generator=generator, dtype=torch.float32).to(t.device)
            reference = init.layers[i][key].to(device=t.device, dtype=torch.float32)
            if stats is not None:
                mean, std = (_per_head(v, kind, t) for v in stats[f"{i}.{key}"])
                sample = mean + std * eps
            elif kind.noise == "relative":
                spread = reference.std(_reduce_dims(kind, reference)[1:], keepdim=True) \
                    if reference.numel() > 1 else reference.abs()
                sample = scale * spread * eps
            else:
                sample = scale * eps
            if kind.noise == "positive":
                sample = sample.exp()
            elif kind.noise == "relative":
                sample = reference + sample
            out[key] = sample.to(t.dtype)
        layers.append(out)
    return ModelState(layers)


def statistics_to_dict(stats: Optional[Statistics]) -> dict[str, dict[str, torch.Tensor]]:
    """Plain tensors for a checkpoint (loadable with ``weights_only=True``)."""
    if stats is None:
        return {}
    return {"mean": {k: m for k, (m, _) in stats.items()}, "std": {k: s for k, (_, s) in stats.items()}}


def statistics_from_dict(saved: dict[str, dict[str, torch.Tensor]]) -> Optional[Statistics]:
    if not saved:
        return None
    return {k: (saved["mean"][k], saved["std"][k]) for k in saved["mean"]}
