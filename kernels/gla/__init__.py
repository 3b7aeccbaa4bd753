"""Gated linear attention (GLA) with a per-key-channel decay: the op behind HGRN2 and GLA layers.

See :func:`gla`.
"""
from __future__ import annotations

import torch

from recurlm.kernels.dispatch import autocast_off
from recurlm.kernels.gla.chunk import chunk_gla
from recurlm.kernels.gla.frontend import dispatch_gated
from recurlm.kernels.gla.naive import naive_gla
from recurlm.kernels.gla.triton import triton_gla

__all__ = ["gla"]


@autocast_off
def gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    resets: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated linear attention (fla's ``chunk_gla`` convention)::

        S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T        S_t: [K, V] per (batch, head)
        o_t = scale * S_t^T q_t

    HGRN2 uses it with q = the output-side query, k = 1 - forget gate, g = log forget gate.

    Args:
        q: [B, T, H, K] queries.
        k: [B, T, H, K] keys.
        v: [B, T, H, V] values.
        g: [B, T, H, K] log decays, g <= 0 (e.g. ``F.logsigmoid(x)``); any finite value down to
            -20 and below is handled stably.
        scale: multiplies q; default K ** -0.5.
        initial_state: [N, H, K, V] state before token 0 (N = B, or the number of sequences with
            ``cu_seqlens``); None means zeros. Any float dtype (accumulated in float32).
        output_final_state: also return the state after the last token.
        resets: [B, T] bool, True where a document starts: the carried state is dropped before
            that token (``resets[:, 0]`` drops ``initial_state``).
        cu_seqlens: [N + 1] int boundaries of N sequences packed in one row (B must be 1).
        impl: "auto" | "naive" | "chunk" | "triton" (see :mod:`recurlm.kernels.dispatch`).

    Returns:
        o: [B, T, H, V] in q's dtype.
        final_state: [N, H, K, V] float32 (float64 for float64 inputs), or None.

    Example (varlen)::

        >>> q, k, g = (torch.randn(1, 10, 2, 8) for _ in range(3))
        >>> g, v = torch.nn.functional.logsigmoid(g), torch.randn(1, 10, 2, 4)
        >>> cu_seqlens = torch.tensor([0, 3, 10])
        >>> o, ht = gla(q, k, v, g, output_final_state=True, cu_seqlens=cu_seqlens)
        >>> o.shape, ht.shape
        (torch.Size([1, 10, 2, 4]), torch.Size([2, 2, 8, 4]))
    """
    return dispatch_gated("gla", impl, {"naive": naive_gla, "chunk": chunk_gla}, triton_gla,
                          q, k, v, g, scale, initial_state, output_final_state, resets, cu_seqlens)
