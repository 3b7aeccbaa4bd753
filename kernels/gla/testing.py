"""Random inputs and FLOP counts for the gated linear attention ops (tests and benchmarks)."""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F

from recurlm.kernels.gla.chunk import CHUNK_SIZE


def make_inputs(
    batch: int = 2,
    seq_len: int = 64,
    heads: int = 2,
    head_dim: int = 16,
    value_dim: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    decay_scale: float = 1.0,
    min_log_decay: float = -20.0,
    reset_prob: float = 0.0,
    initial_state: bool = False,
    requires_grad: bool = False,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random GLA inputs with realistic gates.

    Args:
        decay_scale: log decays are ``decay_scale * logsigmoid(randn)`` (median about -0.7 *
            ``decay_scale``), clamped at ``min_log_decay``; e.g. 8 gives strong decays down to -20.
        reset_prob: probability of a document start at each token (``resets`` [B, T]; position 0
            included); 0 gives no ``resets`` entry.
        initial_state: include an ``initial_state`` [B, H, K, V] (float32, or float64 for float64).
        seed: seeds a private generator (the global RNG is left alone).

    Returns:
        {"q", "k", "g": [B, T, H, K], "v": [B, T, H, V], and optionally "resets", "initial_state"}.
    """
    value_dim = head_dim if value_dim is None else value_dim
    shape = (batch, seq_len, heads, head_dim)
    generator = torch.Generator().manual_seed(seed)

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=generator, dtype=torch.float64).to(device)

    log_decay = (decay_scale * F.logsigmoid(randn(*shape))).clamp_min(min_log_decay)
    inputs = {"q": randn(*shape), "k": randn(*shape), "v": randn(batch, seq_len, heads, value_dim), "g": log_decay}
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    inputs = {name: x.to(dtype) for name, x in inputs.items()}
    if initial_state:
        inputs["initial_state"] = randn(batch, heads, head_dim, value_dim).to(state_dtype)
    for x in inputs.values():
        x.requires_grad_(requires_grad)
    if reset_prob > 0:
        inputs["resets"] = torch.rand(batch, seq_len, generator=generator).to(device) < reset_prob
    return inputs


def flops(batch: int, seq_len: int, heads: int, head_dim: int, value_dim: int | None = None,
          chunk_size: int = CHUNK_SIZE) -> int:
    """Forward matmul FLOPs of the chunkwise form (2 per multiply-add).

    Per token and head: intra-chunk weights q k^T and their product with v over a chunk
    (2 C (K + V)), plus the inter-chunk state read q S and state update k^T v (2 * 2 K V).
    """
    value_dim = head_dim if value_dim is None else value_dim
    per_token = 2 * chunk_size * (head_dim + value_dim) + 4 * head_dim * value_dim
    return batch * heads * seq_len * per_token


def assert_results_close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                         atol: float, rtol: float) -> None:
    """Same keys, every ``actual`` tensor finite and close to ``expected`` (compared in float64)."""
    assert actual.keys() == expected.keys(), (sorted(actual), sorted(expected))
    for name in expected:
        assert torch.isfinite(actual[name]).all(), f"{name} is not finite"
        torch.testing.assert_close(actual[name].double(), expected[name].double(), atol=atol, rtol=rtol,
                                   msg=lambda message: f"{name}: {message}")


@contextmanager
def fla_interpreter(packages: tuple[str, ...] = ("fla.ops.gla", "fla.ops.rwkv6", "fla.ops.common", "fla.ops.utils")
                    ) -> Iterator[None]:
    """Let fla's Triton kernels of ``packages`` (gla, rwkv6 and the shared chunk-state / cumsum
    kernels they call) run under ``TRITON_INTERPRET=1``, by the patches of
    :func:`recurlm.kernels.fla_interpret.fla_interpreter_patches` (tests only)."""
    from recurlm.kernels.fla_interpret import fla_interpreter_patches

    with ExitStack() as stack:
        for package in packages:
            stack.enter_context(fla_interpreter_patches(package))
        yield


def outputs_and_grads(op, inputs: dict[str, torch.Tensor], **kwargs) -> dict[str, torch.Tensor]:
    """Run ``op(**inputs, output_final_state=True, **kwargs)`` and backpropagate a fixed random
    projection of the output and final state.

    Returns:
        {"o", "final_state", and "d<name>" for every input that requires grad}.
    """
    leaves = {name: x.detach().clone().requires_grad_(x.requires_grad) for name, x in inputs.items()}
    o, final_state = op(**leaves, output_final_state=True, **kwargs)
    gen = torch.Generator().manual_seed(1234)

    def projection(x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.device, x.dtype)

    loss = (o * projection(o)).sum() + (final_state * projection(final_state)).sum()
    with_grad = {name: x for name, x in leaves.items() if x.requires_grad}
    grads = torch.autograd.grad(loss, list(with_grad.values())) if with_grad else ()
    result = {"o": o.detach(), "final_state": final_state.detach()}
    result.update({f"d{name}": grad for name, grad in zip(with_grad, grads)})
    return result
