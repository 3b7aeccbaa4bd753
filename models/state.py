"""The recurrent state of a whole model: one entry per layer.

A layer's state is a ``dict[str, Tensor]`` whose tensors all have the batch as dim 0. Keys that start
with ``_`` are bookkeeping (stabilisers, cache validity, positions): recipes that perturb states
(noise, swapping rows) leave them alone. Everything else is the content a length-generalisation
recipe may replace. The container knows nothing of the family, so the recipes don't either.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

LayerState = dict[str, torch.Tensor]


def is_content(key: str) -> bool:
    """True for state entries that carry memory content (not bookkeeping)."""
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
