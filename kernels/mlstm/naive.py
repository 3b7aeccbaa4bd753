"""Sequential mLSTM reference (the test oracle): one stabilised recurrence step per token.

Layout [B, T, H, D]; the step is ``mlstm_kernels``' ``mlstm_recurrent_step__native_fw`` written
for that layout, with document resets (see ``recurlm.kernels.mlstm.mlstm`` for the math).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from recurlm.kernels.dispatch import compute_dtype
from recurlm.kernels.mlstm.state import MLSTMState, initial_mlstm_state


def naive_mlstm(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: torch.Tensor, f: torch.Tensor,
                initial_state: MLSTMState | None = None, output_final_state: bool = False,
                resets: torch.Tensor | None = None, eps: float = 1e-6,
                ) -> tuple[torch.Tensor, MLSTMState | None]:
    """q, k [B, T, H, K], v [B, T, H, V], i, f [B, T, H] -> h [B, T, H, V] (q.dtype), final state.

    The state is kept in float32 (float64 for float64 inputs)."""
    batch, seq_len, heads, dk = q.shape
    out_dtype = q.dtype
    dtype = compute_dtype(q.dtype)
    q, k, v, i = (x.to(dtype) for x in (q, k, v, i))
    log_f = F.logsigmoid(f.to(dtype))
    C, n, m = initial_mlstm_state(initial_state, batch, heads, dk, v.shape[-1], dtype, q.device)
    scale = dk ** -0.5
    hs = []
    for t in range(seq_len):
        if resets is not None:  # a document starts: the state entering token t is a fresh one
            keep = ~resets[:, t, None]  # [B, 1]
            C = torch.where(keep[..., None, None], C, 0.0)
            n = torch.where(keep[..., None], n, 0.0)
            m = torch.where(keep, m, 0.0)
        m_new = torch.maximum(log_f[:, t] + m, i[:, t])                  # [B, H]
        f_act = torch.exp(log_f[:, t] + m - m_new)
        i_act = torch.exp(i[:, t] - m_new)
        C = f_act[..., None, None] * C + i_act[..., None, None] * (k[:, t, :, :, None] * v[:, t, :, None, :])
        n = f_act[..., None] * n + i_act[..., None] * k[:, t]
        m = m_new
        q_t = q[:, t] * scale                                             # [B, H, K]
        numerator = torch.einsum("bhk,bhkv->bhv", q_t, C)
        qn = (q_t * n).sum(-1)
        denominator = torch.maximum(qn.abs(), torch.exp(-m)) + eps
        hs.append(numerator / denominator[..., None])
    h = torch.stack(hs, dim=1).to(out_dtype)
    return h, (MLSTMState(C, n, m) if output_final_state else None)
