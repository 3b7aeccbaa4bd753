"""Helpers the kernel tests of several ops share (each op's own ``testing.py`` makes its inputs)."""
from __future__ import annotations

from typing import Callable, Sequence

import torch


def grad_leaves(obj) -> list[torch.Tensor]:
    """Every tensor requiring grad inside nested dicts / lists / tuples / NamedTuples (an op's inputs)."""
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.requires_grad else []
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for x in obj for t in grad_leaves(x)]
    return []


def outputs_and_grads(fn: Callable, inputs: dict, leaves: Sequence[torch.Tensor], seed: int = 0
                      ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Run ``fn(**inputs, output_final_state=True)``; return ([output, *final state tensors],
    gradients w.r.t. ``leaves`` of a fixed random projection of all those tensors)."""
    h, state = fn(**inputs, output_final_state=True)
    outputs = [h, *state]
    gen = torch.Generator().manual_seed(seed)
    loss = sum((x.double() * torch.randn(x.shape, generator=gen, dtype=torch.float64)).sum() for x in outputs)
    return outputs, list(torch.autograd.grad(loss, list(leaves)))


def assert_all_close(xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor], atol: float, rtol: float = 0.0) -> None:
    """Pairwise ``torch.testing.assert_close`` in float64."""
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        torch.testing.assert_close(x.double(), y.double(), atol=atol, rtol=rtol)
