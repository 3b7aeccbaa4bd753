"""CUDA path of ``dplr_delta_rule``: fla's Triton ``chunk_dplr_delta_rule`` behind the resets adapter.

fla 0.6.0's ``fla.ops.generalized_delta_rule.dplr.chunk_dplr_delta_rule`` computes exactly this
op's convention (layout [B, T, H, K], state [N, H, K, V] with S_t = (diag(e^{gk_t}) + b_t a_t^T)
S_{t-1} + k_t v_t^T, o_t = S_t^T (scale q_t), scale default K ** -0.5, varlen by ``cu_seqlens``),
so this is a thin call: :func:`recurlm.kernels.fla_adapter.run_fla_varlen` turns ``resets`` into
segments of fla's varlen form.

With a known bound on the log decay (``gk_lower_bound``; RWKV-7 guarantees gk > -e^-0.5, as fla's
own RWKV-7 layer assumes) fla gets ``lower_bound`` and ``safe_gate=True``: its tensor-core
scheme, chunks of 64 and far fewer autotune configurations. Without a bound fla falls back to
chunks of 16 (its safe choice for arbitrary decays).

Interpreter note (CPU tests): under plain ``TRITON_INTERPRET=1`` the fla kernels do not run
(``RuntimeError: 0 active drivers`` from ``@triton.autotune`` benchmarking, then
``Did you forget to add @triton.jit`` from fla's ``gather = tl.gather`` alias, then
``'int' object has no attribute 'to'`` on ``range`` loop indices). The tests run them inside
the ``fla_interpreter`` fixture (``tests/kernels/fla_interpret.py``), which closes those three gaps for the
duration of the test; float32 only (bf16 ``tl.dot`` is wrong in the interpreter).
"""
from __future__ import annotations

import torch

from recurlm.kernels.fla_adapter import run_fla_varlen

FLA_SAFE_GATE_MIN = -5.0
"""fla 0.6.0's ``safe_gate`` promises log decays in about [-5, 0) (``chunk_dplr_delta_rule``'s docstring)."""


def triton_dplr_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    gk: torch.Tensor,
    *,
    scale: float,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    resets: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    gk_lower_bound: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The op by fla's Triton kernels; arguments and results as
    :func:`recurlm.kernels.dplr_delta_rule.dplr_delta_rule` (final state float32)."""
    # imported here: importing fla is slow and warns on machines without a GPU
    from fla.ops.generalized_delta_rule.dplr import chunk_dplr_delta_rule

    if initial_state is not None:
        initial_state = initial_state.float()  # fla keeps its state in float32
    bound = {} if gk_lower_bound is None else {"lower_bound": gk_lower_bound,
                                               "safe_gate": gk_lower_bound >= FLA_SAFE_GATE_MIN}
    o, final_state = run_fla_varlen(chunk_dplr_delta_rule, (q, k, v, a, b, gk), resets=resets,
                                    cu_seqlens=cu_seqlens, initial_state=initial_state,
                                    output_final_state=output_final_state, scale=scale, **bound)
    return o, (None if final_state is None else final_state.float())
