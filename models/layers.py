"""Building blocks shared by every family: norms, gated MLPs, short convolutions, token shift.

Sequence layers take ``resets`` [B, T] bool (True where a document starts, see
``recurlm.kernels.boundaries``) so that no information crosses a document boundary, and carry a
small state so that a sequence processed in pieces (or token by token) equals the whole.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def init_normal_(weight: torch.Tensor, std: float) -> torch.Tensor:
    """Truncated-normal init at ±3 std, the default of every projection in recurlm."""
    return nn.init.trunc_normal_(weight, std=std, a=-3 * std, b=3 * std)


def divide_width(family: str, width: int, parts: int, parts_key: str, width_key: str = "d_model") -> int:
    """width / parts (e.g. the width of each of ``parts`` heads), or a ValueError naming both config keys
    when ``parts`` does not divide ``width``."""
    if width % parts:
        raise ValueError(f"{family}: {width_key}={width} must be a multiple of {parts_key}={parts}")
    return width // parts


class TruncNormalLinear(nn.Linear):
    """nn.Linear with a truncated-normal weight (std ``std``) and a zero bias, or ``bias_init`` [d_out]
    when given (which turns the bias on).

    The init runs inside the constructor: under ZeRO-3's ``zero.Init`` a module's parameters are
    partitioned when its constructor returns, so an init applied afterwards would be lost."""

    def __init__(self, d_in: int, d_out: int, std: float, bias: bool = False,
                 bias_init: Optional[torch.Tensor] = None):
        super().__init__(d_in, d_out, bias=bias or bias_init is not None)
        with torch.no_grad():
            init_normal_(self.weight, std)
            if self.bias is not None:
                self.bias.copy_(bias_init if bias_init is not None else torch.zeros(d_out))


class Embedding(nn.Embedding):
    """nn.Embedding with a truncated-normal init in the constructor (see :class:`TruncNormalLinear`)."""

    def __init__(self, vocab_size: int, dim: int, std: float):
        super().__init__(vocab_size, dim)
        with torch.no_grad():
            init_normal_(self.weight, std)


class RMSNorm(nn.Module):
    """y = x / rms(x) * w, computed in float32.

    ``offset=True`` stores w - 1 (Gemma / RecurrentGemma convention, y = x / rms(x) * (1 + w))."""

    def __init__(self, dim: int, eps: float = 1e-6, offset: bool = False):
        super().__init__()
        self.eps, self.offset = eps, offset
        self.weight = nn.Parameter(torch.zeros(dim) if offset else torch.ones(dim))
        self.weight._no_weight_decay = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        w = self.weight.float() + 1.0 if self.offset else self.weight.float()
        return (y * w).to(x.dtype)


ACTIVATIONS = {"silu": F.silu, "gelu": lambda x: F.gelu(x, approximate="tanh"), "gelu_exact": F.gelu}


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)): SwiGLU (``silu``) or GeGLU (``gelu``) channel mixer."""

    def __init__(self, d_model: int, d_hidden: int, activation: str = "silu", bias: bool = False,
                 std: float = 0.02, out_std: Optional[float] = None):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.act = ACTIVATIONS[activation]
        self.gate_proj = TruncNormalLinear(d_model, d_hidden, std, bias)
        self.up_proj = TruncNormalLinear(d_model, d_hidden, std, bias)
        self.down_proj = TruncNormalLinear(d_hidden, d_model, std if out_std is None else out_std, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))

    def flops_per_token(self) -> int:
        return 2 * 3 * self.up_proj.in_features * self.up_proj.out_features


def shifted_inputs(x: torch.Tensor, history: Optional[torch.Tensor], resets: Optional[torch.Tensor],
                   width: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The last ``width`` inputs seen at every position, zeroed where they belong to an earlier document.

    x: [B, T, D]; history: [B, width - 1, D] (the previous inputs of the continuing document,
    zeros for none); resets: [B, T] bool. Returns ``taps`` with ``taps[j][:, t] = x[:, t - j]`` (j = 0
    is x itself) and the new history [B, width - 1, D] for the next call.
    """
    B, T, D = x.shape
    if history is None:
        history = x.new_zeros(B, width - 1, D)
    xp = torch.cat([history.to(x.dtype), x], dim=1)  # [B, W-1+T, D]
    if resets is None:
        doc = torch.zeros(B, width - 1 + T, dtype=torch.long, device=x.device)
    else:
        doc = torch.cat([resets.new_zeros(B, width - 1).long(), resets.long().cumsum(1)], dim=1)
    taps = []
    for j in range(width):
        window = xp[:, width - 1 - j: width - 1 - j + T]
        same_doc = (doc[:, width - 1 - j: width - 1 - j + T] == doc[:, width - 1:]).unsqueeze(-1)
        taps.append(window * same_doc if resets is not None else window)
    last_doc = doc[:, -1:]
    new_history = xp[:, T:] * (doc[:, T:] == last_doc).unsqueeze(-1)
    return taps, new_history


class ShortConv(nn.Module):
    """Causal depthwise Conv1D of width ``width`` over [B, T, D] that resets at document starts.

    State: the last ``width - 1`` inputs, [B, width - 1, D]."""

    def __init__(self, dim: int, width: int = 4, bias: bool = True):
        super().__init__()
        self.width = width
        # weight[j] multiplies x_{t-j}
        self.weight = nn.Parameter(torch.empty(width, dim))
        bound = 1.0 / math.sqrt(width)
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor, resets: Optional[torch.Tensor] = None,
                history: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        taps, new_history = shifted_inputs(x, history, resets, self.width)
        y = sum(tap * self.weight[j] for j, tap in enumerate(taps))
        if self.bias is not None:
            y = y + self.bias
        return y, new_history


def token_shift(x: torch.Tensor, resets: Optional[torch.Tensor] = None,
                last: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """RWKV token shift: the previous token's x (zero at a document start).

    x: [B, T, D]; last: [B, D] from the previous call. Returns (x_prev [B, T, D], new last [B, D])."""
    taps, history = shifted_inputs(x, None if last is None else last[:, None], resets, 2)
    return taps[1], history[:, 0]


def rotate_half_rope(x: torch.Tensor, positions: torch.Tensor, rotary_dim: int, theta: float) -> torch.Tensor:
    """RoPE on the first ``rotary_dim`` features of every head, rotate-half pairing (i, i + rotary_dim / 2).

    x [B, T, H, Dh]; positions [B, T] int64 -> [B, T, H, Dh]. Angles are computed in float32
    (float64 for float64 inputs), as HF/RecurrentGemma do in float32."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    inv_freq = 1.0 / theta ** (torch.arange(0, rotary_dim, 2, device=x.device, dtype=dtype) / rotary_dim)
    angles = positions.to(dtype)[..., None] * inv_freq  # [B, T, rotary_dim / 2]
    cos, sin = angles.cos()[:, :, None].to(x.dtype), angles.sin()[:, :, None].to(x.dtype)
    x1, x2, rest = x.split([rotary_dim // 2, rotary_dim // 2, x.shape[-1] - rotary_dim], dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean token cross-entropy in float32 over positions whose label is not ``ignore_index``."""
    return F.cross_entropy(logits.float().flatten(0, -2), labels.flatten(), ignore_index=ignore_index)


def _mm_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """out = a @ b, written in place (through a temporary when out is wider than a, as for bf16 a)."""
    if out.dtype == a.dtype:
        torch.mm(a, b, out=out)
    else:
        out.copy_(a @ b)


def _chunk_cross_entropy(x: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, softcap: Optional[float],
                         ignore_index: int, grad_scale: Optional[torch.Tensor], gate: torch.Tensor,
                         logits: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of one chunk of tokens x [c, D] (weight [V, D], labels [c]); ``gate`` and
    ``logits`` are [>= c, V] float32 (float64 for float64 x) buffers, overwritten. With ``grad_scale``
    (a scalar tensor), ``logits[:c]`` holds on return grad_scale * d(sum of losses)/dz for the
    pre-cap logits z = x W^T:

        (softmax(l) - onehot(y)) * valid * dl/dz,    l = cap tanh(z / cap),  dl/dz = 1 - tanh(z / cap)^2

    (l = z and dl/dz = 1 without soft-cap). The soft-cap goes through the sigmoid, several times cheaper
    than tanh on CPU: cap tanh(z / cap) = 2 cap s - cap with s = sigmoid(2 z / cap), the constant
    -cap cancels in the softmax, and dl/dz = 4 s (1 - s). Every pass is in place on the two buffers."""
    gate, logits = gate[:x.shape[0]], logits[:x.shape[0]]
    if softcap:
        _mm_into(gate, x * (2.0 / softcap), weight.t())
        torch.mul(gate.sigmoid_(), 2.0 * softcap, out=logits)
    else:
        _mm_into(logits, x, weight.t())
    valid = labels != ignore_index
    target = labels.clamp(min=0)[:, None]
    row_max = logits.amax(-1, keepdim=True)
    target_logit = logits.gather(1, target)
    sum_exp = logits.sub_(row_max).exp_().sum(-1, keepdim=True)                    # logits now exp(l - max)
    loss = ((sum_exp.log() + row_max - target_logit)[:, 0] * valid).sum()
    if grad_scale is not None:
        row_scale = (valid * grad_scale * (4.0 if softcap else 1.0))[:, None]
        logits.mul_(row_scale / sum_exp).scatter_add_(1, target, -row_scale.to(logits.dtype))
        if softcap:
            logits.mul_(gate.addcmul_(gate, gate, value=-1.0))                      # times s (1 - s)
    return loss


class _LinearCrossEntropy(torch.autograd.Function):
    """Forward: the mean loss, and both gradients chunk by chunk while the chunk's logits are at hand.
    Backward: those gradients times the incoming scalar (no second pass over the head)."""

    @staticmethod
    def forward(ctx, x, weight, labels, softcap, ignore_index, chunk_size):
        count = (labels != ignore_index).sum().to(torch.promote_types(x.dtype, torch.float32))
        # the weight gradient is a sum over chunks: accumulated in float32 (float64) whatever x's dtype
        grad_x, grad_w = torch.empty_like(x), torch.empty_like(weight, dtype=count.dtype)
        buffers = count.new_empty(2, min(chunk_size, x.shape[0]), weight.shape[0])
        loss = count.new_zeros(())
        for start in range(0, x.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            loss += _chunk_cross_entropy(x[rows], weight, labels[rows], softcap, ignore_index, 1.0 / count, *buffers)
            grad_logits, x_rows = buffers[1, :x[rows].shape[0]], x[rows].to(count.dtype)
            torch.mm(grad_logits.to(x.dtype), weight, out=grad_x[rows])
            if start == 0:
                torch.mm(grad_logits.t(), x_rows, out=grad_w)
            else:
                torch.addmm(grad_w, grad_logits.t(), x_rows, out=grad_w)  # = addmm_, and FLOP counters see it
        ctx.save_for_backward(grad_x, grad_w)
        ctx.weight_dtype = weight.dtype
        return loss / count

    @staticmethod
    def backward(ctx, grad_loss):
        grad_x, grad_w = ctx.saved_tensors
        return grad_x * grad_loss.to(grad_x.dtype), (grad_w * grad_loss).to(ctx.weight_dtype), None, None, None, None


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         softcap: Optional[float] = None, ignore_index: int = -100,
                         chunk_size: int = 256) -> torch.Tensor:
    """``cross_entropy(softcap(x @ weight.T), labels)`` without materialising the [N, V] logits.

    x [..., D], weight [V, D] (a bias-free output head), labels [...] (``ignore_index`` = ignore).
    Tokens go through in chunks of ``chunk_size`` rows, in two reused [chunk, V] buffers; when a
    gradient is needed, each chunk's gradients w.r.t. x and weight are formed in the forward pass
    while its logits are in the buffers, so the backward pass never recomputes the head. Equal to
    ``cross_entropy`` on the soft-capped logits up to float rounding (head matmul in x's dtype,
    soft-cap and softmax in float32, as ``cross_entropy(logits(x))``). Inside ``torch.autocast`` the
    head matmuls run in autocast's dtype, as an ``nn.Linear`` head's would, the rest in float32."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        x, weight = x.to(dtype), weight.to(dtype)
    x, labels = x.flatten(0, -2), labels.flatten()
    with torch.autocast(device, enabled=False):  # the buffers' dtypes are chosen here
        if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
            return _LinearCrossEntropy.apply(x, weight, labels, softcap, ignore_index, chunk_size)
        buffers = x.new_empty(2, min(chunk_size, x.shape[0]), weight.shape[0],
                              dtype=torch.promote_types(x.dtype, torch.float32))
        loss = sum(_chunk_cross_entropy(x[start:start + chunk_size], weight, labels[start:start + chunk_size],
                                        softcap, ignore_index, None, *buffers)
                   for start in range(0, x.shape[0], chunk_size))
        return loss / (labels != ignore_index).sum()
