"""Sequential sLSTM reference (the test oracle): xLSTM's vanilla sLSTM cell, one step per token."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from recurlm.kernels.dispatch import compute_dtype
from recurlm.kernels.slstm.state import SLSTMState, initial_slstm_state


def recurrent_preactivations(h: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """Block-diagonal recurrent projection: h [B, H, D], R [H, D, 4, D] -> [B, 4, H, D]."""
    return torch.einsum("bhd,hdgj->bghj", h, R)


def slstm_step(raw: torch.Tensor, state: SLSTMState, fresh: torch.Tensor) -> SLSTMState:
    """One sLSTM step from the gate preactivations raw [B, 4, H, D] (order i, f, z, o).

    fresh [B] bool: the row starts a sequence here (its incoming c, n, m are ignored and m = i).
    Otherwise m = max(i, logsigmoid(f) + m_prev)."""
    i_raw, f_raw, z_raw, o_raw = raw.unbind(1)
    fresh = fresh[:, None, None]
    log_f_plus_m = F.logsigmoid(f_raw) + state.m
    m = torch.where(fresh, i_raw, torch.maximum(i_raw, log_f_plus_m))
    i_gate = torch.exp(i_raw - m)
    f_gate = torch.where(fresh, 0.0, torch.exp(log_f_plus_m - m))
    c = f_gate * state.c + i_gate * torch.tanh(z_raw)
    n = f_gate * state.n + i_gate
    h = torch.sigmoid(o_raw) * c / n
    return SLSTMState(c, n, m, h)


def fresh_rows(t: int, resets: torch.Tensor | None, has_initial_state: bool, batch: int,
               device: torch.device) -> torch.Tensor:
    """[B] bool: rows whose state entering token t is a fresh one (a reset, or t = 0 without an
    initial state)."""
    fresh = torch.full((batch,), t == 0 and not has_initial_state, dtype=torch.bool, device=device)
    return fresh if resets is None else fresh | resets[:, t]


def naive_slstm(x: torch.Tensor, R: torch.Tensor, bias: torch.Tensor,
                initial_state: SLSTMState | None = None, output_final_state: bool = False,
                resets: torch.Tensor | None = None, final_positions: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, SLSTMState | None]:
    """x [B, T, 4, H, D], R [H, D, 4, D], bias [4, H, D] -> h [B, T, H, D] (x.dtype), final state.

    ``final_positions`` [B] (default T - 1): the token after which each row's final state is taken.
    """
    batch, seq_len, _, heads, dim = x.shape
    out_dtype = x.dtype
    dtype = compute_dtype(x.dtype)
    x, R, bias = x.to(dtype), R.to(dtype), bias.to(dtype)
    state = initial_slstm_state(initial_state, batch, heads, dim, dtype, x.device)
    states = []
    for t in range(seq_len):
        fresh = fresh_rows(t, resets, initial_state is not None, batch, x.device)
        h_prev = torch.where(fresh[:, None, None], 0.0, state.h)
        raw = x[:, t] + bias + recurrent_preactivations(h_prev, R)
        state = slstm_step(raw, state, fresh)
        states.append(state)
    h = torch.stack([s.h for s in states], 1).to(out_dtype)
    if not output_final_state:
        return h, None
    if final_positions is None:
        return h, state
    rows = torch.arange(batch, device=x.device)
    return h, SLSTMState(*(torch.stack(field, 1)[rows, final_positions] for field in zip(*states)))
