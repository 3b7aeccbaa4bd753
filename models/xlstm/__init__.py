"""xLSTM (Beck et al., 2024) and the xLSTM-7B architecture (Beck et al., 2025), family ``xlstm``.

``architecture="v1"``: the paper's xLSTM[a:b], a stack of pre-LayerNorm residual blocks of two
kinds (``block_types`` repeated over depth, or explicit ``slstm_at`` positions), ending with a
LayerNorm and the output head. As the ``xlstm`` package's ``xLSTMLMModel``, every LayerNorm has no
bias and stores its weight as w - 1 (y = LN(x) * (1 + w)), eps 1e-5.

mLSTM block (pre-up-projection), for x [B, T, D], inner width I = round_up(proj_factor * D):

    x_m, z = split(W_up LN(x))                     [B, T, I] each
    c = silu(Conv1D_4(x_m))                        causal depthwise conv, resets at documents
    q = Q c,  k = K c,  v = V x_m                  block-diagonal maps (blocks of qkv_blocksize)
    i = W_i [q, k, v] + b_i,  f = W_f [q, k, v] + b_f          [B, T, H] gate preactivations
    h = mLSTM(q, k, v, i, f)                       H heads of width I / H (recurlm.kernels.mlstm)
    y = W_down ((GroupNorm_H(h) + s * c) * silu(z))            s: learnable skip [I]
    x = x + y

sLSTM block (post-up-projection), heads Hs (``slstm_heads``):

    u = LN(x),  c = silu(Conv1D_4(u))
    i, f = R_i c, R_f c;   z, o = R_z u, R_o u     block-diagonal (Hs blocks), no bias
    h = sLSTM(i, f, z, o)                          exponential input gate, per-head recurrence
    x = x + GroupNorm_Hs(h)
    x = x + W_down(gelu(W_g LN(x)) * W_u LN(x))    gated MLP of width round_up(slstm_ffn_factor D)

with the sLSTM cell per head (recurlm.kernels.slstm), gates (i, f, z, o) + bias + R h_{t-1}:
m_t = max(i_t, log sigmoid(f_t) + m_{t-1}), c_t = f' c_{t-1} + i' tanh(z_t), n_t = f' n_{t-1} + i',
h_t = sigmoid(o_t) c_t / n_t.

``architecture="xlstm7b"``: the ``xlstm`` package's ``xlstm_large`` model (xLSTM-7B), mLSTM blocks
only, each followed by a SwiGLU FFN, RMSNorm pre-norms, no convolution:

    u = RMSNorm(x)
    q = W_q u [B, T, H, qk_dim_factor D / H],  k = W_k u,  v = W_v u [B, T, H, v_dim_factor D / H]
    i = cap(W_i u + b_i),  f = cap(W_f u + b_f),   cap(a) = g tanh(a / g), g = gate_soft_cap
    h = mLSTM(q, k, v, i, f)
    x = x + W_out(sigmoid(W_o u) * LayerNorm_H(h))             per-head LayerNorm, plain weight
    x = x + W_down(silu(W_g RMSNorm(x)) * W_u RMSNorm(x))      width round_up_7b(ffn_factor D)

ending with an RMSNorm, the head and a logit soft-cap 30 * tanh(logits / 30).

The mLSTM (both architectures), per head with q scaled by K^-1/2: m_t = max(log sigmoid(f_t) +
m_{t-1}, i_t), C_t = f' C_{t-1} + i' k_t v_t^T, n_t = f' n_{t-1} + i' k_t,
h_t = C_t^T q_t / (max(|n_t . q_t|, exp(-m_t)) + eps), with f' = exp(log sigmoid(f_t) + m_{t-1} - m_t),
i' = exp(i_t - m_t).

Document starts (``resets``) restart the convolution windows and the mLSTM / sLSTM states.

State per block (batch first): mLSTM ``C`` [B, H, K, V], ``n`` [B, H, K], ``_m`` [B, H] (float32,
float64 for float64 models) and, in v1, ``conv`` [B, conv_width - 1, I]; sLSTM ``c``, ``n``, ``h``,
``_m`` [B, Hs, D / Hs], ``conv`` [B, conv_width - 1, D] and ``_fresh`` [B] bool (True until the
first token: an sLSTM's fresh state is not the zero state, see ``recurlm.kernels.slstm``).

Initialisation follows the references: small init sqrt(2 / (5 D)) for input projections, Wang's
init 2 / (L sqrt(D)) for output projections (v1, transformers' xLSTM), zero gate weights with
forget-gate biases linspace(3, 6) over heads; v1 input-gate bias N(0, 0.1), xLSTM-7B input-gate
bias -10; sLSTM recurrent weights 0 and forget biases by the paper's power law over depth.
Normal inits are truncated at 3 std, recurlm's default.

Modules: ``config`` (``XLSTMConfig``), ``layers`` (the norms, block-diagonal maps, gate layers and
inits both architectures share), ``mlstm`` (the v1 and xLSTM-7B mLSTM layers), ``slstm`` (the
sLSTM layer), ``model`` (the blocks and ``XLSTMLM``).
"""
from recurlm.models.xlstm.config import XLSTMConfig, architecture, norm_eps
from recurlm.models.xlstm.model import XLSTMLM, block_kinds

__all__ = ["CONFIG", "MODEL", "XLSTMConfig", "XLSTMLM", "architecture", "block_kinds", "norm_eps"]

CONFIG = XLSTMConfig
MODEL = XLSTMLM
