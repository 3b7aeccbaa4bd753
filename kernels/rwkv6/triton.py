"""CUDA path of ``rwkv6``: fla's Triton ``chunk_rwkv6`` behind the resets adapter.

fla 0.6.0's ``fla.ops.rwkv6.chunk_rwkv6(r, k, v, w, u, scale, initial_state, output_final_state,
cu_seqlens)`` computes exactly recurlm's RWKV-6 convention (layout [B, T, H, K], u [H, K], scale
default K ** -0.5, state [N, H, K, V] float32); :func:`recurlm.kernels.fla_adapter.run_fla_varlen`
turns ``resets`` into fla's varlen segments.

Interpreter note (CPU tests): plain ``TRITON_INTERPRET=1`` cannot run ``chunk_rwkv6`` (autotune
benchmarking needs a GPU driver; ``.to()`` on loop indices in the shared ``chunk_fwd_kernel_h``);
the tests run it under the ``fla_interpreter`` fixture (``tests/kernels/fla_interpret.py``). Details in
:mod:`recurlm.kernels.gla.triton`.
"""
from __future__ import annotations

import torch

from recurlm.kernels.fla_adapter import run_fla_varlen


def triton_rwkv6(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    *,
    u: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    resets: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RWKV-6 by fla's Triton kernel; arguments and results as :func:`recurlm.kernels.rwkv6.rwkv6`."""
    # imported here: importing fla is slow and warns on machines without a GPU
    from fla.ops.rwkv6 import chunk_rwkv6

    def fla_rwkv6(r, k, v, w, **kwargs):
        return chunk_rwkv6(r, k, v, w, u, **kwargs)  # u is per head, not per token: not flattened

    if initial_state is not None:
        initial_state = initial_state.float()  # fla requires a float32 state
    return run_fla_varlen(fla_rwkv6, (r, k, v, w), resets=resets, cu_seqlens=cu_seqlens,
                          initial_state=initial_state, output_final_state=output_final_state, scale=scale)
