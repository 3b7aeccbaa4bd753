"""flash-linear-attention 0.6.0's HGRN2, RWKV-6 and RWKV-7 models on CPU, where Triton has no
driver (test code, not in the installed package): every op they run through Triton (or
``torch.compile``) is swapped for fla's own torch reference, or the plain torch equivalent where fla has none, inside a context manager that puts fla back on exit.

    with fla_torch_references("hgrn2"):
        fla_model = fla.models.HGRN2ForCausalLM(config)   # build inside: activations bind at init
        logits = fla_model(input_ids=ids, use_cache=False).logits
    print(describe("hgrn2"))  # what ran instead of fla's kernels

Used by the conversion tests (``tests/models/test_hgrn2_convert.py``, ``test_rwkv.py``,
``tests/interop/``, which also load this file by path in processes without recurlm) and by
``benchmarks/models.py``. The recurrences are fla's sequential references (one Python step per
token), so a swapped model is a slow, exact oracle: ``naive_recurrent_gla`` matches fla's Triton
path to 1.7e-6. Not covered: varlen (``cu_seqlens``) calls of the recurrences.
"""
from __future__ import annotations

import importlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Swap:
    module: str
    """Module holding the replaced object, e.g. ``fla.layers.hgrn2``."""
    attribute: str
    """Name in that module, dotted for a class attribute (``RMSNorm.forward``)."""
    replacement: Callable
    runs: str
    """What runs instead, as printed by ``describe``."""
    build: bool = False
    """``replacement`` is a factory, called on entry, of the object to put in place (a function of
    fla's or a dictionary built from fla's)."""


def _ones_if_none(weight: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """fla's references multiply by the weight unconditionally; a norm without one scales by 1."""
    return x.new_ones(x.shape[-1]) if weight is None else weight


def _rms_norm_forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
    """fla ``RMSNorm.forward``: optionally adds the residual first (prenorm also returns the sum)."""
    from fla.modules.norm.layernorm import rms_norm_ref

    return rms_norm_ref(x, _ones_if_none(self.weight, x), self.bias, residual, self.eps, prenorm, upcast=True)


def _layer_norm_forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
    """fla ``LayerNorm.forward`` (residual and prenorm as ``_rms_norm_forward``)."""
    from fla.modules.norm.layernorm import layer_norm_ref

    return layer_norm_ref(x, _ones_if_none(self.weight, x), self.bias, residual, self.eps, prenorm, upcast=True)


def _group_norm_forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
    """fla ``GroupNorm.forward``: a norm per group of channels of x [..., C]."""
    from fla.modules.norm.layernorm import group_norm_ref

    return group_norm_ref(x, _ones_if_none(self.weight, x), self.bias, self.num_groups, residual, self.eps,
                          self.is_rms_norm, prenorm, upcast=True)


def _rms_norm_linear(x, norm_weight, norm_bias, linear_weight, linear_bias, residual=None, eps=1e-5,
                     prenorm=False, residual_in_fp32=False):
    """fla's ``rms_norm_linear`` with its default eps (HGRN2's output norm passes none)."""
    from fla.modules.norm.layernorm import rms_norm_ref

    assert residual is None and not prenorm
    y = rms_norm_ref(x, _ones_if_none(norm_weight, x), norm_bias, eps=eps, upcast=True)
    return F.linear(y, linear_weight, linear_bias)


def _swiglu(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.silu(x) * y


def _swiglu_linear(x, y, weight, bias):
    return F.linear(F.silu(x) * y, weight, bias)


def _squared_relu(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x).square()


def _torch_act2fn() -> dict[str, Callable]:
    """fla's ``ACT2FN`` with its fused swish and compiled squared ReLU replaced by torch."""
    from fla.modules.activations import ACT2FN

    return {**ACT2FN, "swish": F.silu, "silu": F.silu, "sqrelu": _squared_relu}


def _token_shift(x, cu_seqlens=None, cache=None, output_cache=False, **_):
    """fla's ``token_shift`` (delta_t = x_{t-1} - x_t, x_{-1} = ``cache`` or 0, x [B, T, D]) through
    ``token_shift_ref``, plus the cache semantics of fla's kernel."""
    from fla.modules.token_shift import token_shift_ref

    assert cu_seqlens is None or (cache is None and not output_cache)
    delta = token_shift_ref(x, cu_seqlens)
    if cache is not None:
        delta = torch.cat([delta[:, :1] + cache[:, None], delta[:, 1:]], 1)
    return (delta, x[:, -1]) if output_cache else delta


def _gla(q, k, v, gk=None, g=None, scale=None, initial_state=None, output_final_state=False,
         state_v_first=False, cu_seqlens=None, **_):
    """``fused_recurrent_gla`` / ``chunk_gla`` ([B, T, H, K] inputs) as ``naive_recurrent_gla``;
    ``state_v_first`` states are [B, H, V, K], the reference's [B, H, K, V]."""
    from fla.ops.gla.naive import naive_recurrent_gla

    assert scale is None and cu_seqlens is None
    if initial_state is not None and state_v_first:
        initial_state = initial_state.transpose(-1, -2)
    o, state = naive_recurrent_gla(q, k, v, gk if gk is not None else g, initial_state, output_final_state)
    return o, (state.transpose(-1, -2) if state is not None and state_v_first else state)


def _rwkv6(r, k, v, w, u, scale=1.0, initial_state=None, output_final_state=False, cu_seqlens=None, **_):
    """``chunk_rwkv6`` / ``fused_recurrent_rwkv6`` ([B, T, H, D] inputs) as ``naive_recurrent_rwkv6``
    (layout [B, H, T, D])."""
    from fla.ops.rwkv6.recurrent_naive import naive_recurrent_rwkv6

    assert cu_seqlens is None
    o, s = naive_recurrent_rwkv6(*(t.transpose(1, 2) for t in (r, k, v, w)), u, scale=scale,
                                 initial_state=initial_state, output_final_state=output_final_state)
    return o.transpose(1, 2), s


def _rwkv7(r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=False, cu_seqlens=None, **_):
    """``chunk_rwkv7`` ([B, T, H, D] inputs) as ``dplr_recurrence`` (layout [B, H, T, D])."""
    from fla.ops.generalized_delta_rule.dplr.naive import dplr_recurrence

    assert cu_seqlens is None
    to_bhtd = lambda t: t.transpose(1, 2)  # noqa: E731
    # dplr_recurrence multiplies q by K^-0.5 itself
    o, s = dplr_recurrence(to_bhtd(r) * scale * r.shape[-1] ** 0.5, to_bhtd(k), to_bhtd(v), to_bhtd(a),
                           to_bhtd(b), to_bhtd(w), initial_state, output_final_state)
    return o.transpose(1, 2), s


def _l2_norm(x: torch.Tensor, eps: float = 1e-6, **_) -> torch.Tensor:
    """fla's ``l2_norm`` over the last dimension (x / sqrt(sum x^2 + eps)), the fused-norm RWKV-7 path."""
    return x * torch.rsqrt(x.float().square().sum(-1, keepdim=True) + eps).to(x.dtype)


def _rwkv7_fused_mul(r, w, k, v, kk, a, **kwargs):
    """``fused_mul_recurrent_rwkv7``: the RWKV-7 recurrence with a = -kk, b = kk * a."""
    return _rwkv7(r, w, k, v, -kk, kk * a, **kwargs)


def _k_update(k, a, ka, **_):
    """``fused_k_rwkv7`` (which also takes kernel options) as ``k_update_ref``."""
    from fla.ops.rwkv7.fused_k_update import k_update_ref

    return k_update_ref(k, a, ka)


def _fla_function(path: str) -> Callable[[], Callable]:
    """A factory returning one of fla's torch references by dotted path (fla imported on entry only)."""
    def load() -> Callable:
        module, name = path.rsplit(".", 1)
        return getattr(importlib.import_module(module), name)

    return load


_NORMS = [Swap("fla.modules.norm.layernorm", "RMSNorm.forward", _rms_norm_forward, "rms_norm_ref"),
          Swap("fla.modules.norm.layernorm", "LayerNorm.forward", _layer_norm_forward, "layer_norm_ref"),
          Swap("fla.modules.norm.layernorm", "GroupNorm.forward", _group_norm_forward, "group_norm_ref")]

SWAPS: dict[str, list[Swap]] = {
    "hgrn2": [
        Swap("fla.layers.hgrn2", "chunk_gla", _gla, "naive_recurrent_gla"),
        Swap("fla.layers.hgrn2", "fused_recurrent_gla", _gla, "naive_recurrent_gla"),
        Swap("fla.layers.hgrn2", "swish", F.silu, "F.silu"),
        Swap("fla.layers.hgrn2", "rms_norm_linear", _rms_norm_linear, "rms_norm_ref"),
        Swap("fla.modules.mlp", "swiglu", _swiglu, "silu(x) * y"),
        Swap("fla.modules.mlp", "swiglu_linear", _swiglu_linear, "silu(x) * y"),
        _NORMS[0],
    ],
    "rwkv6": [
        Swap("fla.layers.rwkv6", "chunk_rwkv6", _rwkv6, "naive_recurrent_rwkv6"),
        Swap("fla.layers.rwkv6", "fused_recurrent_rwkv6", _rwkv6, "naive_recurrent_rwkv6"),
        Swap("fla.layers.rwkv6", "token_shift", _token_shift, "token_shift_ref"),
        Swap("fla.models.rwkv6.modeling_rwkv6", "token_shift", _token_shift, "token_shift_ref"),
        # bound when a layer is built: RWKV6Attention's swish gate, RWKV6FeedForward's squared ReLU
        Swap("fla.layers.rwkv6", "ACT2FN", _torch_act2fn, "F.silu / relu(x)^2", build=True),
        Swap("fla.models.rwkv6.modeling_rwkv6", "ACT2FN", _torch_act2fn, "F.silu / relu(x)^2", build=True),
        *_NORMS[1:],
    ],
    "rwkv7": [
        Swap("fla.layers.rwkv7", "chunk_rwkv7", _rwkv7, "dplr_recurrence"),
        Swap("fla.layers.rwkv7", "fused_mul_recurrent_rwkv7", _rwkv7_fused_mul, "dplr_recurrence"),
        Swap("fla.layers.rwkv7", "fused_addcmul_rwkv7",
             _fla_function("fla.ops.rwkv7.fused_addcmul.torch_addcmul_rwkv7"), "torch_addcmul_rwkv7", build=True),
        Swap("fla.layers.rwkv7", "fused_k_rwkv7", _k_update, "k_update_ref"),
        Swap("fla.layers.rwkv7", "l2_norm", _l2_norm, "x / sqrt(sum x^2 + eps)"),
        Swap("fla.layers.rwkv7", "gate_output_correction",
             _fla_function("fla.ops.rwkv7.gate_output_correction.gate_output_correction_ref"),
             "gate_output_correction_ref", build=True),
        Swap("fla.layers.rwkv7", "token_shift", _token_shift, "token_shift_ref"),
        Swap("fla.models.rwkv7.modeling_rwkv7", "token_shift", _token_shift, "token_shift_ref"),
        Swap("fla.models.rwkv7.modeling_rwkv7", "ACT2FN", _torch_act2fn, "relu(x)^2", build=True),
        *_NORMS[1:],
    ],
}
"""Per fla model family, every Triton op its CausalLM runs (on CPU, T >= 1, no varlen) and its
replacement."""


def _resolve(swap: Swap) -> tuple[Any, str]:
    """(object owning the attribute, attribute name)."""
    owner = importlib.import_module(swap.module)
    *path, name = swap.attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    return owner, name


@contextmanager
def fla_torch_references(*families: str) -> Iterator[None]:
    """Within the block, fla's models of ``families`` (keys of ``SWAPS``) run on torch only; every
    replaced attribute gets its original back on exit. Build the models inside the block: the
    activation functions are looked up when a layer is constructed."""
    swaps = list({(s.module, s.attribute): s for family in families for s in SWAPS[family]}.values())
    originals = []
    try:
        for swap in swaps:
            owner, name = _resolve(swap)
            originals.append((owner, name, getattr(owner, name)))
            setattr(owner, name, swap.replacement() if swap.build else swap.replacement)
        yield
    finally:
        for owner, name, original in reversed(originals):
            setattr(owner, name, original)


def describe(family: str) -> str:
    """The torch code that replaces fla's kernels for ``family``: "naive_recurrent_gla (chunk_gla,
    fused_recurrent_gla), ..." (each replacement once, with what it replaces)."""
    replaced: dict[str, list[str]] = {}
    for swap in SWAPS[family]:
        names = replaced.setdefault(swap.runs, [])
        if swap.attribute not in names:
            names.append(swap.attribute)
    return ", ".join(f"{runs} ({', '.join(names)})" for runs, names in replaced.items())
