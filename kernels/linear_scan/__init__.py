"""Diagonal gated linear recurrence (Griffin/Hawk RG-LRU, HGRN): ``linear_scan``."""
from __future__ import annotations

import torch

from recurlm.kernels.dispatch import autocast_off, check_boundaries, compute_dtype, resolve_impl, run_varlen
from recurlm.kernels.linear_scan.chunk import chunk_linear_scan
from recurlm.kernels.linear_scan.naive import naive_linear_scan


def _check_inputs(x: torch.Tensor, g: torch.Tensor, initial_state: torch.Tensor | None,
                  resets: torch.Tensor | None, cu_seqlens: torch.Tensor | None,
                  sign: torch.Tensor | None = None) -> None:
    if x.dim() < 3 or x.shape[1] == 0:
        raise ValueError(f"x must be [B, T, ...] with T >= 1, got {tuple(x.shape)}")
    if g.shape != x.shape:
        raise ValueError(f"g must have the shape of x {tuple(x.shape)}, got {tuple(g.shape)}")
    if sign is not None and sign.shape != x.shape:
        raise ValueError(f"sign must have the shape of x {tuple(x.shape)}, got {tuple(sign.shape)}")
    batch, seq_len = x.shape[:2]
    num_states = check_boundaries(batch, seq_len, resets, cu_seqlens)
    if initial_state is not None and initial_state.shape != (num_states, *x.shape[2:]):
        raise ValueError(f"initial_state must be {(num_states, *x.shape[2:])}, got {tuple(initial_state.shape)}")


@autocast_off
def linear_scan(x: torch.Tensor, g: torch.Tensor, initial_state: torch.Tensor | None = None,
                output_final_state: bool = False, resets: torch.Tensor | None = None,
                cu_seqlens: torch.Tensor | None = None, impl: str = "auto", sign: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Diagonal gated linear recurrence, per channel:

        h_t = s_t exp(g_t) * h_{t-1} + x_t,        h_{-1} = initial_state (or 0),

    the convention of flash-linear-attention's hgrn ops (``naive_recurrent_hgrn``); g is a log
    decay (<= 0 for a contracting recurrence). Griffin's RG-LRU is x_t = sqrt(1 - a_t^2) (i_t * u_t)
    with g_t = c r_t log(a); HGRN is x_t = (1 - f_t) u_t with g_t = log f_t.

    Args:
        x: inputs [B, T, *F] (F = (D,) or (H, D), ...), float32/bfloat16/float16/float64.
        g: log decays [B, T, *F], same dtype.
        initial_state: [B, *F] (or [N, *F] with cu_seqlens), float32 (float64 for float64 inputs).
        output_final_state: also return h_{T-1} [B, *F] (or [N, *F]).
        resets: [B, T] bool, True where a document starts: the decay into that token is exactly 0,
            so h_t = x_t (an initial state is discarded where ``resets[:, 0]``).
        cu_seqlens: [N + 1] int offsets of N sequences packed into one row (B = 1), each
            starting from its own initial state. Example: x [1, 7, D], cu_seqlens = [0, 3, 7],
            initial_state [2, D] -> final state [2, D], the states after tokens 2 and 6.
        impl: "auto" (Triton on CUDA, chunk elsewhere), "naive", "chunk" or "triton".
        sign: optional transition signs s [B, T, *F] of +1 / -1 (x's dtype; default all +1), for
            transitions in (-1, 1). The naive scan applies them step by step; chunk and Triton stay
            in log space: with the parity P_t = s_0 ... s_t of the row (of each sequence with
            cu_seqlens), y_t = P_t h_t obeys y_t = exp(g_t) y_{t-1} + P_t x_t, a positive-decay scan
            of P x whose output is multiplied by P again (P_t^2 = 1). A reset needs no special case:
            h_t = P_t (P_t x_t) = x_t.

    Returns:
        h [B, T, *F] in x.dtype, and the final state [B, *F] (or [N, *F]) in float32 (float64 for
        float64 inputs) if ``output_final_state`` else None. Differentiable in x, g and
        initial_state.
    """
    _check_inputs(x, g, initial_state, resets, cu_seqlens, sign)
    impl = resolve_impl(impl, x)
    if impl == "triton":
        from recurlm.kernels.linear_scan.triton import triton_linear_scan as fn
    else:
        fn = naive_linear_scan if impl == "naive" else chunk_linear_scan
    batch, seq_len, *features = x.shape
    x, g = x.reshape(batch, seq_len, -1), g.reshape(batch, seq_len, -1)
    if sign is not None:
        fn = _signed(fn, impl == "naive")
    if initial_state is not None:
        initial_state = initial_state.reshape(initial_state.shape[0], -1)
    inputs, pads = ([x, g], [0.0, 0.0]) if sign is None else ([x, g, sign.reshape(batch, seq_len, -1)], [0.0, 0.0, 1.0])
    if cu_seqlens is None:
        h, final_state = fn(*inputs, initial_state=initial_state, output_final_state=output_final_state,
                            resets=resets)
    else:
        # padded steps with x = 0, g = 0 (and sign 1) leave the state unchanged
        h, final_state = run_varlen(fn, inputs, pads, cu_seqlens, initial_state=initial_state,
                                    output_final_state=output_final_state)
    h = h.reshape(batch, seq_len, *features)
    if final_state is not None:
        final_state = final_state.reshape(final_state.shape[0], *features)
    return h, final_state


def _signed(fn, naive: bool):
    """``fn(x, g, ...)`` extended by a transition sign (the ``sign`` argument of ``linear_scan``):
    the naive reference takes it directly, the others through the parity transform."""
    if naive:
        return lambda x, g, sign, **kw: fn(x, g, sign=sign, **kw)

    def scan(x: torch.Tensor, g: torch.Tensor, sign: torch.Tensor, initial_state=None, output_final_state=False,
             resets=None):
        parity = torch.cumprod(sign.to(compute_dtype(x.dtype)), dim=1)  # +-1, exact
        y, final = fn(x * parity.to(x.dtype), g, initial_state, output_final_state, resets)
        h = y * parity.to(y.dtype)
        return h, (None if final is None else final * parity[:, -1].to(final.dtype))

    return scan


__all__ = ["linear_scan"]


def flops(batch: int, seq_len: int, dim: int) -> int:
    """Forward FLOPs: exp, multiply and add per element (h_t = exp(g_t) * h_{t-1} + x_t)."""
    return 3 * batch * seq_len * dim
