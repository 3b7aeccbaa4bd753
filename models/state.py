"""The recurrent state of a whole model: one entry per layer.

A layer's state is a ``dict[str, Tensor]`` whose tensors all have the batch as dim 0. Keys that start
with ``_`` are bookkeeping (stabilisers, cache validity, positions). The container knows nothing of
the family; what a recipe may do with an entry is declared by the family's block as an
:class:`EntryKind` per key (``Block.state_kinds``), so the recipes stay family-agnostic:

- ``gaussian``: recurrent memory content with no constraint (a linear-attention matrix, an RG-LRU
  vector): noise is N(mean, std^2) per head.
- ``positive``: content that must stay positive (sLSTM's normaliser n): noise is log-normal.
- ``relative``: content whose scale is set by a learnt initial value (Titans' memory weights and
  their momentum): noise is the initial value plus a perturbation scaled to that value's spread
  per head (zero stays zero).
- ``real``: never drawn at random (bookkeeping, conv / token-shift buffers, local-attention key /
  value caches, which hold the last tokens themselves): a recipe takes them from a real final
  state, i.e. fills them from real tokens.

An undeclared key is ``real`` if it starts with ``_`` or is not floating point, else ``gaussian``
with its heads on dim 1 when it has 3 or more dims (one distribution per layer otherwise).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

LayerState = dict[str, torch.Tensor]


NOISE_KINDS = ("gaussian", "positive", "relative", "real")


@dataclass(frozen=True)
class EntryKind:
    """How a state entry may be drawn at random (module docstring)."""

    noise: str = "gaussian"
    """gaussian, positive, relative or real."""
    head_dim: Optional[int] = 1
    """Dim of the tensor (batch = 0) holding the heads: statistics are per head; None = per layer."""

    def __post_init__(self):
        if self.noise not in NOISE_KINDS:
            raise ValueError(f"EntryKind.noise={self.noise!r}: expected one of {NOISE_KINDS}")


REAL = EntryKind("real", None)
GAUSSIAN = EntryKind("gaussian")
POSITIVE = EntryKind("positive")
RELATIVE = EntryKind("relative")


def entry_kind(declared: dict[str, EntryKind], key: str, tensor: torch.Tensor) -> EntryKind:
    """The kind of entry ``key`` of a layer whose block declares ``declared`` (module docstring)."""
    if key in declared:
        return declared[key]
    if key.startswith("_") or not tensor.is_floating_point():
        return REAL
    return GAUSSIAN if tensor.ndim >= 3 else EntryKind("gaussian", None)


def is_content(key: str) -> bool:
    """True for state entries that are not bookkeeping (keys without a leading ``_``)."""
    return not key.startswith("_")


@dataclass
class ModelState:
    layers: list[Optional[LayerState]]
    """Per layer (in block order) its state dict, or None for a stateless layer."""

    def map(self, fn: Callable[[str, torch.Tensor], torch.Tensor]) -> "ModelState":
        """New state with ``fn(key, tensor)`` applied to every tensor."""
        return ModelState([None if layer is None else {k: fn(k, v) for k, v in layer.items()}
                           for layer in self.layers])

    def detach(self) -> "ModelState":
        """Cut the autograd history (truncated BPTT across windows)."""
        return self.map(lambda _, t: t.detach())

    def select(self, rows: torch.Tensor) -> "ModelState":
        """Rows ``rows`` (an index tensor over the batch) of every tensor."""
        return self.map(lambda _, t: t.index_select(0, rows.to(t.device)))

    def to(self, device: torch.device | str) -> "ModelState":
        return self.map(lambda _, t: t.to(device))

    @property
    def batch_size(self) -> int:
        for layer in self.layers:
            if layer:
                return next(iter(layer.values())).shape[0]
        return 0

    def nbytes(self) -> int:
        """Bytes held by all tensors."""
        return sum(t.numel() * t.element_size() for layer in self.layers if layer for t in layer.values())

    def flat(self) -> dict[str, torch.Tensor]:
        """``{"<layer>.<key>": tensor}``: the form saved with safetensors."""
        return {f"{i}.{k}": v for i, layer in enumerate(self.layers) if layer for k, v in layer.items()}

    @classmethod
    def from_flat(cls, flat: dict[str, torch.Tensor], n_layers: int) -> "ModelState":
        layers: list[Optional[LayerState]] = [None] * n_layers
        for name, tensor in flat.items():
            index, key = name.split(".", 1)
            layers[int(index)] = {**(layers[int(index)] or {}), key: tensor}
        return cls(layers)
