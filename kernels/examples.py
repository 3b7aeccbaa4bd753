"""What the example inputs of every op share (each op's own ``examples.py`` makes its inputs).

Runtime code, not test code: the GPU compile gate (``launch/compile_gate/capture.py``) and the
kernel benchmarks find the tensors to differentiate in an op's example inputs with
:func:`grad_leaves`; the kernel tests use it too.
"""
from __future__ import annotations

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
