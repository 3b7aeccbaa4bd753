"""Triton sliding-window attention, forward and backward (CUDA; CPU tests via TRITON_INTERPRET=1).

The kernels run over the extended sequence of ``state.py`` (window - 1 cached slots, then the T new
tokens; a document id per position, -1 for invalid slots), built in PyTorch, so state, resets and
padded varlen rows need nothing special here. Query index i sits at extended position
i + window - 1 and attends to key position s iff 0 <= i + window - 1 - s < window and the
documents match. A block of BLOCK_M queries therefore reads only the keys in
[m0, m0 + BLOCK_M + window - 1): O(T * window) work.

- forward: flash-attention online softmax per query block; saves o and the row log-sum-exp
  lse_i = log sum_s exp(scale q_i . k_s);
- backward (with p = exp(scale q.k - lse), D_i = do_i . o_i):
  dv_s = sum_i p_is do_i,  ds = p (do v^T - D),  dq = scale ds k,  dk_s = scale sum_i ds_is q_i;
  one kernel per query block for dq, one per key block for dk and dv (per query head, summed over
  the heads sharing a key/value head afterwards).
Everything is computed in float32 (the inputs are promoted). Block sizes are chosen per head dim
and GPU by ``launch_config`` (no autotune: the interpreter cannot benchmark, and a fixed choice
per target is what ``recurlm-doctor compile`` checks); the interpreter runs the H100 choice.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from recurlm.kernels.gpu_arch import shared_memory_limit, target_arch
from recurlm.kernels.local_attention.state import LocalAttentionState, extend_with_state, final_state_from


class LaunchConfig(NamedTuple):
    """Tile sizes and compile options shared by the three kernels."""

    block: int
    """Queries per query block and keys per key block (BLOCK_M = BLOCK_N)."""
    block_d: int
    """Head dim padded to a power of two >= 16 (a tl.dot dimension)."""
    num_warps: int
    num_stages: int
    """Software-pipelining depth of the key/query loops (buffers per streamed tile)."""


SHARED_BYTES_PER_TILE_ELEMENT = 24
"""Shared memory of the heaviest kernel (the dk/dv backward) per element of a [block, block_d]
tile: measured by ``recurlm-doctor compile`` at 24 * block * block_d bytes (+ under 1 KB) for
head dims 32-256, blocks 32-64, 1-2 pipeline stages, sm_80 and sm_90 (float32 tiles staged for
its five tl.dot; the dq backward needs 16, the forward 10-12)."""


def launch_config(head_dim: int, arch: int) -> LaunchConfig:
    """The largest block whose dk/dv backward fits one thread block's shared memory on ``arch``
    (A100 at head dim 128: 32; H100: 64). Head dims of 128 and up take one pipeline stage and
    8 warps; at head dim 64 four warps spilled, so only head dims up to 32 take 4."""
    block_d = max(triton.next_power_of_2(head_dim), 16)
    for block in (64, 32, 16):
        if SHARED_BYTES_PER_TILE_ELEMENT * block * block_d + 1024 <= shared_memory_limit(arch):
            return LaunchConfig(block, block_d, 4 if block_d <= 32 else 8, 1 if block_d >= 128 else 2)
    raise ValueError(f"local attention head dim {head_dim} does not fit the shared memory of sm_{arch}")


@triton.jit
def _heads(i_bh, HEADS: tl.constexpr, KV_HEADS: tl.constexpr):
    """Program axis over B * H -> (batch row, query head, its key/value head h // (H / Hkv))."""
    i_b, i_h = i_bh // HEADS, i_bh % HEADS
    return i_b, i_h, i_h // (HEADS // KV_HEADS)


@triton.jit
def _query_program(HEADS: tl.constexpr, KV_HEADS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """A program over (query block, B * H): the block, batch row, query head, key/value head, query
    offsets and dims."""
    i_m, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h, i_hk = _heads(i_bh, HEADS, KV_HEADS)
    return i_m, i_b, i_h, i_hk, i_m * BLOCK_M + tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_D)


@triton.jit
def _load_rows(ptr, rows, row_mask, offs_d, dim):
    """Rows of a [..., dim] tensor: element offsets rows * dim + d -> [len(rows), BLOCK_D]."""
    return tl.load(ptr + rows[:, None] * dim + offs_d[None, :], mask=row_mask[:, None] & (offs_d < dim)[None, :],
                   other=0.0)


@triton.jit
def _query_block(q_ptr, doc_ptr, i_b, i_h, offs_m, offs_d, seq_len, ext_len, window, dim, HEADS: tl.constexpr):
    """Queries ``offs_m`` of head i_h: validity, rows in tensors viewed as [B * T * H, D], the queries
    [BLOCK_M, BLOCK_D], their extended positions and document ids (-2 for padded rows: no key)."""
    q_valid = (offs_m >= 0) & (offs_m < seq_len)
    q_rows = (i_b * seq_len + offs_m).to(tl.int64) * HEADS + i_h
    q_pos = offs_m + window - 1
    q_doc = tl.load(doc_ptr + i_b * ext_len + q_pos, mask=q_valid, other=-2)
    return q_valid, q_rows, _load_rows(q_ptr, q_rows, q_valid, offs_d, dim), q_pos, q_doc


@triton.jit
def _key_block(k_ptr, v_ptr, doc_ptr, i_b, i_hk, k_pos, ext_len, offs_d, dim, KV_HEADS: tl.constexpr):
    """Keys, values [BLOCK_N, BLOCK_D] and document ids (-1 past the end) at extended positions k_pos."""
    k_valid = k_pos < ext_len
    kv_rows = (i_b * ext_len + k_pos).to(tl.int64) * KV_HEADS + i_hk
    k = _load_rows(k_ptr, kv_rows, k_valid, offs_d, dim)
    v = _load_rows(v_ptr, kv_rows, k_valid, offs_d, dim)
    return k, v, tl.load(doc_ptr + i_b * ext_len + k_pos, mask=k_valid, other=-1)


@triton.jit
def _masked_scores(q, k, q_pos, k_pos, q_doc, k_doc, scale, window):
    """scale q.k [BLOCK_M, BLOCK_N], -inf outside the window or across documents."""
    distance = q_pos[:, None] - k_pos[None, :]
    allowed = (distance >= 0) & (distance < window) & (q_doc[:, None] == k_doc[None, :])
    return tl.where(allowed, tl.dot(q, tl.trans(k)) * scale, float("-inf"))


@triton.jit
def _fwd_kernel(q_ptr, k_ptr, v_ptr, doc_ptr, o_ptr, lse_ptr, scale, seq_len, ext_len, window, dim,
                num_key_blocks, HEADS: tl.constexpr, KV_HEADS: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    i_m, i_b, i_h, i_hk, offs_m, offs_d = _query_program(HEADS, KV_HEADS, BLOCK_M, BLOCK_D)
    q_valid, q_rows, q, q_pos, q_doc = _query_block(q_ptr, doc_ptr, i_b, i_h, offs_m, offs_d, seq_len, ext_len,
                                                    window, dim, HEADS)
    m_i = tl.full([BLOCK_M], -1e30, dtype=tl.float32)  # finite, so padded rows never see inf - inf
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for j in range(0, num_key_blocks):
        k_pos = i_m * BLOCK_M + j * BLOCK_N + tl.arange(0, BLOCK_N)
        k, v, k_doc = _key_block(k_ptr, v_ptr, doc_ptr, i_b, i_hk, k_pos, ext_len, offs_d, dim, KV_HEADS)
        s = _masked_scores(q, k, q_pos, k_pos, q_doc, k_doc, scale, window)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p, v)
        m_i = m_new
    l_i = tl.where(q_valid, l_i, 1.0)  # padded rows attend to nothing; keep them finite
    d_mask = q_valid[:, None] & (offs_d < dim)[None, :]
    tl.store(o_ptr + q_rows[:, None] * dim + offs_d[None, :], acc / l_i[:, None], mask=d_mask)
    tl.store(lse_ptr + q_rows, m_i + tl.log(l_i), mask=q_valid)


@triton.jit
def _bwd_dq_kernel(q_ptr, k_ptr, v_ptr, doc_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, scale, seq_len, ext_len,
                   window, dim, num_key_blocks, HEADS: tl.constexpr, KV_HEADS: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    i_m, i_b, i_h, i_hk, offs_m, offs_d = _query_program(HEADS, KV_HEADS, BLOCK_M, BLOCK_D)
    q_valid, q_rows, q, q_pos, q_doc = _query_block(q_ptr, doc_ptr, i_b, i_h, offs_m, offs_d, seq_len, ext_len,
                                                    window, dim, HEADS)
    do = _load_rows(do_ptr, q_rows, q_valid, offs_d, dim)
    lse = tl.load(lse_ptr + q_rows, mask=q_valid, other=0.0)
    delta = tl.load(delta_ptr + q_rows, mask=q_valid, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for j in range(0, num_key_blocks):
        k_pos = i_m * BLOCK_M + j * BLOCK_N + tl.arange(0, BLOCK_N)
        k, v, k_doc = _key_block(k_ptr, v_ptr, doc_ptr, i_b, i_hk, k_pos, ext_len, offs_d, dim, KV_HEADS)
        p = tl.exp(_masked_scores(q, k, q_pos, k_pos, q_doc, k_doc, scale, window) - lse[:, None])
        ds = p * (tl.dot(do, tl.trans(v)) - delta[:, None])
        dq += tl.dot(ds, k)
    tl.store(dq_ptr + q_rows[:, None] * dim + offs_d[None, :], dq * scale,
             mask=q_valid[:, None] & (offs_d < dim)[None, :])


@triton.jit
def _bwd_dkdv_kernel(q_ptr, k_ptr, v_ptr, doc_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, scale, seq_len,
                     ext_len, window, dim, num_query_blocks, HEADS: tl.constexpr, KV_HEADS: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    i_n, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h, i_hk = _heads(i_bh, HEADS, KV_HEADS)
    k_pos = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k, v, k_doc = _key_block(k_ptr, v_ptr, doc_ptr, i_b, i_hk, k_pos, ext_len, offs_d, dim, KV_HEADS)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    # queries i see key position s iff s <= i + window - 1 < s + window: i in [s - window + 1, s]
    for j in range(0, num_query_blocks):
        offs_m = i_n * BLOCK_N - window + 1 + j * BLOCK_M + tl.arange(0, BLOCK_M)
        q_valid, q_rows, q, q_pos, q_doc = _query_block(q_ptr, doc_ptr, i_b, i_h, offs_m, offs_d, seq_len,
                                                        ext_len, window, dim, HEADS)
        do = _load_rows(do_ptr, q_rows, q_valid, offs_d, dim)
        lse = tl.load(lse_ptr + q_rows, mask=q_valid, other=0.0)
        delta = tl.load(delta_ptr + q_rows, mask=q_valid, other=0.0)
        p = tl.exp(_masked_scores(q, k, q_pos, k_pos, q_doc, k_doc, scale, window) - lse[:, None])
        dv += tl.dot(tl.trans(p), do)
        ds = p * (tl.dot(do, tl.trans(v)) - delta[:, None])
        dk += tl.dot(tl.trans(ds), q)
    # per query head: rows of [B * ext_len * H, D]; summed over the heads of a group afterwards
    out_rows = (i_b * ext_len + k_pos).to(tl.int64) * HEADS + i_h
    d_mask = (k_pos < ext_len)[:, None] & (offs_d < dim)[None, :]
    tl.store(dk_ptr + out_rows[:, None] * dim + offs_d[None, :], dk * scale, mask=d_mask)
    tl.store(dv_ptr + out_rows[:, None] * dim + offs_d[None, :], dv, mask=d_mask)


def _meta(heads: int, kv_heads: int, config: LaunchConfig) -> dict:
    """Constexprs and compile options of a launch."""
    return dict(HEADS=heads, KV_HEADS=kv_heads, BLOCK_M=config.block, BLOCK_N=config.block, BLOCK_D=config.block_d,
                num_warps=config.num_warps, num_stages=config.num_stages)


class TritonLocalAttention(torch.autograd.Function):
    """o = sliding-window attention of q [B, T, H, D] over k_ext, v_ext [B, E, Hkv, D] (float32)."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k_ext: torch.Tensor, v_ext: torch.Tensor, doc_ext: torch.Tensor,
                window: int, scale: float) -> torch.Tensor:
        q, k_ext, v_ext = q.contiguous(), k_ext.contiguous(), v_ext.contiguous()
        doc_ext = doc_ext.to(torch.int32).contiguous()
        batch, seq_len, heads, dim = q.shape
        ext_len, kv_heads = k_ext.shape[1], k_ext.shape[2]
        o = torch.empty_like(q)
        lse = torch.empty(batch, seq_len, heads, dtype=torch.float32, device=q.device)
        config = launch_config(dim, target_arch())
        _fwd_kernel[(triton.cdiv(seq_len, config.block), batch * heads)](
            q, k_ext, v_ext, doc_ext, o, lse, scale, seq_len, ext_len, window, dim,
            triton.cdiv(config.block + window - 1, config.block), **_meta(heads, kv_heads, config))
        ctx.save_for_backward(q, k_ext, v_ext, doc_ext, o, lse)
        ctx.window, ctx.scale = window, scale
        return o

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do: torch.Tensor):
        q, k_ext, v_ext, doc_ext, o, lse = ctx.saved_tensors
        window, scale = ctx.window, ctx.scale
        batch, seq_len, heads, dim = q.shape
        ext_len, kv_heads = k_ext.shape[1], k_ext.shape[2]
        do = do.contiguous()
        delta = (do * o).sum(-1)  # [B, T, H]
        dq = torch.empty_like(q)
        dk = torch.empty(batch, ext_len, heads, dim, dtype=q.dtype, device=q.device)
        dv = torch.empty_like(dk)
        config = launch_config(dim, target_arch())
        sizes = _meta(heads, kv_heads, config)
        num_blocks = triton.cdiv(config.block + window - 1, config.block)
        _bwd_dq_kernel[(triton.cdiv(seq_len, config.block), batch * heads)](
            q, k_ext, v_ext, doc_ext, do, lse, delta, dq, scale, seq_len, ext_len, window, dim, num_blocks, **sizes)
        _bwd_dkdv_kernel[(triton.cdiv(ext_len, config.block), batch * heads)](
            q, k_ext, v_ext, doc_ext, do, lse, delta, dk, dv, scale, seq_len, ext_len, window, dim, num_blocks,
            **sizes)
        group = heads // kv_heads  # heads sharing a key/value head are adjacent (h // group)
        dk = dk.view(batch, ext_len, kv_heads, group, dim).sum(3)
        dv = dv.view(batch, ext_len, kv_heads, group, dim).sum(3)
        return dq, dk, dv, None, None, None


def triton_local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, scale: float,
                           initial_state: LocalAttentionState | None = None, output_final_state: bool = False,
                           resets: torch.Tensor | None = None, lengths: torch.Tensor | None = None,
                           ) -> tuple[torch.Tensor, LocalAttentionState | None]:
    """q [B, T, H, D], k, v [B, T, Hkv, D] (float32/16, bfloat16) -> (o [B, T, H, D] in q.dtype,
    state or None). ``lengths`` [B] (right-padded rows) only moves where the final state is read."""
    if q.dtype == torch.float64:
        raise TypeError("the Triton local attention computes in float32; use impl='chunk' for float64")
    k_ext, v_ext, doc_ext = extend_with_state(k, v, initial_state, resets, window, torch.float32)
    out = TritonLocalAttention.apply(q.float(), k_ext, v_ext, doc_ext, window, scale)
    final_state = final_state_from(k_ext, v_ext, doc_ext, window, lengths) if output_final_state else None
    return out.to(q.dtype), final_state
