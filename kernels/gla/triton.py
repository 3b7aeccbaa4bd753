"""CUDA path of ``gla``: fla's Triton ``chunk_gla`` behind the resets adapter.

fla 0.6.0's ``fla.ops.gla.chunk_gla`` computes exactly recurlm's GLA convention (layout
[B, T, H, K], scale default K ** -0.5, state [N, H, K, V] float32, varlen by ``cu_seqlens``), so
this is a thin call: :func:`recurlm.kernels.fla_adapter.run_fla_varlen` turns ``resets`` into
segments of fla's varlen form.

Interpreter note (CPU tests, fla 0.6.0, triton 3.9): plain ``TRITON_INTERPRET=1`` cannot run
fla's ``chunk_gla``, nor ``chunk_rwkv6`` / ``chunk_dplr_delta_rule``:

1. the kernels (``chunk_gla_fwd_A_kernel_intra_sub_inter`` / ``..._intra``,
   ``chunk_fwd_kernel_h``, ``chunk_gla_fwd_kernel_o``, the backward kernels) are wrapped in
   ``@triton.autotune`` / fla's ``fla_cache_autotune``, whose benchmarking asks for a GPU driver:
   ``RuntimeError: 0 active drivers ([]). There should only be one.``;
2. with autotuning cut to one config, ``fla/ops/common/chunk_h.py::chunk_fwd_kernel_h`` (the
   inter-chunk state kernel shared by most fla chunk ops) fails on ``i_t.to(tl.int64)`` of a loop
   index: ``AttributeError: 'int' object has no attribute 'to'``.

The tests close these gaps with the ``fla_interpreter`` fixture (``tests/kernels/fla_interpret.py``,
patches applied to ``fla.ops.gla``, ``fla.ops.rwkv6``, ``fla.ops.common`` and ``fla.ops.utils``);
the kernels then run in fp32 at tiny shapes and match the naive op, gradients included, through
the resets adapter.
"""
from __future__ import annotations

import torch

from recurlm.kernels.fla_adapter import run_fla_varlen


def triton_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    *,
    scale: float,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    resets: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """GLA by fla's Triton kernel; arguments and results as :func:`recurlm.kernels.gla.gla`."""
    # imported here: importing fla is slow and warns on machines without a GPU
    from fla.ops.gla import chunk_gla

    if initial_state is not None:
        initial_state = initial_state.float()  # fla requires a float32 state
    return run_fla_varlen(chunk_gla, (q, k, v, g), resets=resets, cu_seqlens=cu_seqlens,
                          initial_state=initial_state, output_final_state=output_final_state, scale=scale)
