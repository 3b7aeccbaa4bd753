"""Titans (Behrouz et al., 2024, "Titans: Learning to Memorize at Test Time"): MAC, MAG and MAL.

Every variant stacks pre-norm residual blocks (token mixer, then a SwiGLU MLP, each ``x + f(RMSNorm(x))``)
built from two components.

**Neural long-term memory** (``NeuralMemory``), per memory head of width Dh = d_model / memory_heads,
on an input stream u [B, T, d]:

    q = l2norm(SiLU(Conv4(W_q u))),  k = l2norm(SiLU(Conv4(W_k u))),  v = SiLU(Conv4(W_v u))   [B, T, H, Dh]
    theta = max_lr * sigmoid(W_theta u + b),  eta = sigmoid(W_eta u + b),  alpha = sigmoid(W_alpha u + b)
    S_t = eta_t S_{t-1} - theta_t grad ||M_base(k_t) - v_t||^2      momentum ("surprise")
    M_t = (1 - alpha_t) M_{t-1} + S_t                                forgetting
    m_t = W_o RMSNorm(concat_h M_t(q_t))                             read after the write

M is a per-head MLP of ``memory_depth`` 1 (linear) or 2 (act(x W1) W2, hidden ``memory_expansion`` * Dh),
its initial weights are parameters; M_base is the memory at the start of the token's mini-batch of
``memory_chunk_size`` tokens (the paper's mini-batch gradient descent). The recurrence runs in
``recurlm.kernels.titans_memory``. The convs are causal depthwise (``ShortConv``).

**Attention with persistent memory**: multi-head attention with RoPE whose keys/values include
``n_persistent`` learnable, input-independent tokens P [Np, d] (projected by the same W_K, W_V, no
RoPE), visible to every query; they replace the paper's prepending of P to the sequence, which the
exact state contract (window / segment independent of where P sits) would not allow.

Variants (block = token mixer + MLP):

- **MAC** (memory as context). Documents are cut into segments of ``segment_len`` tokens. For a
  segment with inputs x (the normed residual stream) and memory state M_{n-1} at its start:
      h = m(M_{n-1}; q(x))          retrieval with the segment's queries, no write   [B, C, d]
      y = W_O Attn(q = x, keys/values = [P, h_{<=i}, x_{<=i}])   causal inside the segment
      M_n = memory written with y (keys, values, gates from y),  o = y * sigmoid(m(M_t; q(y_t)))
  Simplifications (exact in parallel and step mode): retrieval for the whole segment uses the
  memory at the segment start; token i attends to the persistent tokens, the memory tokens h_j
  and the segment tokens x_j for j <= i (h_j comes from x_j, so later ones would leak the future);
  the final read m(M_t; q(y_t)) is per token after its own write (the kernel's causal read).
- **MAG** (memory as gating): o = W_out(RMSNorm(SWA(x)) * sigmoid(m(x))), with sliding-window
  attention of ``attention_window`` tokens (itself included) plus the persistent tokens.
- **MAL** (memory as layer): x = x + m(RMSNorm(x)); x = x + W_out SWA(RMSNorm(x)); then the MLP.

**Segments, mini-batches and exact state.** The memory's mini-batches (and MAC's segments) are laid
on a grid starting at every document start, so a packed row equals its documents run alone, and a
sequence fed in pieces (or token by token) equals it whole. ``scan_segments`` realigns each row so
every document starts at a multiple of the segment length C (padding after each document's end,
where nothing reads it), then loops over segments with a carried state that a document start resets.
The state of a block therefore holds the sub-states at the start of the *current, unfinished*
segment plus its inputs so far (``buffer`` [B, C - 1, d]); the next call re-runs those buffered
tokens before the new ones. Step mode costs O(C) per token for the memory (and the MAC attention).

State per block (batch first): ``mem_w{l}``, ``mem_s{l}`` memory weights and momentum at the start
of the current segment (float32; float64 for float64 models), ``mem_conv_{q,k,v}`` conv histories
[B, width - 1, d] (MAC adds ``mem_conv_qx``, the retrieval stream's), ``buffer``; MAG/MAL add the
sliding-window cache ``k``, ``v`` [B, window - 1, H, Dh] and ``_valid``; ``_pos`` [B] is the position
inside its document of the next token.

Modules: ``config`` (the three families' configs), ``segments`` (the document-aligned segment grid
and scan), ``memory`` (``NeuralMemory``), ``attention`` (persistent and sliding-window attention),
``blocks`` (the MAC, MAG and MAL blocks and ``TitansLM``).
"""
from recurlm.models.titans.attention import attend
from recurlm.models.titans.blocks import TitansLM
from recurlm.models.titans.config import TitansConfig, TitansMACConfig, TitansMAGConfig, TitansMALConfig
from recurlm.models.titans.memory import NeuralMemory
from recurlm.models.titans.segments import document_slots, scan_segments

__all__ = ["CONFIGS", "MODELS", "NeuralMemory", "TitansConfig", "TitansLM", "TitansMACConfig", "TitansMAGConfig",
           "TitansMALConfig", "attend", "document_slots", "scan_segments"]

CONFIGS = {"titans_mac": TitansMACConfig, "titans_mag": TitansMAGConfig, "titans_mal": TitansMALConfig}
MODELS = {family: TitansLM for family in CONFIGS}
