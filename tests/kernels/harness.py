"""The one harness of the kernel tests: outputs, final states and gradients of two runs are equal.

``outputs_and_grads(op, inputs, **kwargs)`` runs ``op(**inputs, output_final_state=True, **kwargs)``
-> (output, final state), backpropagates a fixed random projection of the output and of every
floating tensor of the final state, and returns them with the gradient of every input tensor that
requires grad (inside nested states too), each under a name; ``assert_close`` compares two such
results tensor by tensor in float64 and names the tensor that differs.

Used by every test under tests/kernels, and by ``benchmarks/gpu_ops.py`` (the GPU acceptance
check, run from a checkout like the tests: it imports ``recurlm.tests.kernels.harness``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

PROJECTION_SEED = 0
"""Seeds the generator of the random projections, drawn in float64 in the order of the outputs."""


def named_tensors(value: Any, name: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor inside nested tuples, NamedTuples, lists and dicts: fields of
    a NamedTuple by their names (``final_state.C``), other positions by index (``init_weights.0``)."""
    if isinstance(value, torch.Tensor):
        yield name, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from named_tensors(item, f"{name}.{key}" if name else key)
    elif isinstance(value, (tuple, list)):
        fields = getattr(value, "_fields", range(len(value)))
        for key, item in zip(fields, value):
            yield from named_tensors(item, f"{name}.{key}")


@dataclass
class Results:
    """One run of an op: ``outputs`` {"o", "final_state[.field]"} (bool masks included) and
    ``grads`` {input name: gradient of the projection}."""
    outputs: dict[str, torch.Tensor]
    grads: dict[str, torch.Tensor]

    def all(self) -> dict[str, torch.Tensor]:
        """Outputs and gradients (gradients as ``d<input name>``)."""
        return {**self.outputs, **{f"d{name}": grad for name, grad in self.grads.items()}}


def outputs_and_grads(op: Callable, inputs: dict[str, Any], allow_unused: bool = False, **kwargs) -> Results:
    """Run ``op(**inputs, output_final_state=True, **kwargs)`` and backpropagate
    sum_x <x, r_x> over the output and the floating tensors x of the final state, r_x ~ N(0, 1)
    (float64, seeded with PROJECTION_SEED, cast to x's dtype and device), to every tensor of
    ``inputs`` that requires grad.

    Args:
        allow_unused: an input the outputs do not depend on gets a zero gradient (else an error).
    """
    output, final_state = op(**inputs, output_final_state=True, **kwargs)
    outputs = dict(named_tensors(output, "o"))
    outputs.update(named_tensors(final_state, "final_state"))
    generator = torch.Generator().manual_seed(PROJECTION_SEED)
    loss = sum((x * torch.randn(x.shape, generator=generator, dtype=torch.float64).to(x.device, x.dtype)).sum()
               for x in outputs.values() if x.is_floating_point())
    leaves = {name: x for name, x in named_tensors(inputs, "") if x.requires_grad}
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=allow_unused) if leaves else ()
    return Results({name: x.detach() for name, x in outputs.items()},
                   {name: torch.zeros_like(x) if grad is None else grad
                    for (name, x), grad in zip(leaves.items(), grads)})


def _by_name(value: Any) -> dict[str, torch.Tensor]:
    if isinstance(value, Results):
        return value.all()
    return value if isinstance(value, dict) else dict(named_tensors(value, "state"))


def assert_close(actual: Any, expected: Any, atol: float, rtol: float = 0.0, check_dtype: bool = True) -> None:
    """The same tensors by name, of the same dtype (unless ``check_dtype`` is off: a run compared
    with a reference of another precision); each ``actual`` tensor finite and within
    ``atol + rtol * |expected|`` of ``expected`` in float64 (bool tensors: equal). ``actual`` and
    ``expected``: two :class:`Results`, two dicts of tensors, or two states (NamedTuples of tensors)."""
    actual, expected = _by_name(actual), _by_name(expected)
    assert actual.keys() == expected.keys(), (sorted(actual), sorted(expected))
    for name, want in expected.items():
        got = actual[name]
        assert not check_dtype or got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
        if want.dtype == torch.bool:
            assert torch.equal(got, want), f"{name} differs"
            continue
        assert torch.isfinite(got).all(), f"{name} is not finite"
        torch.testing.assert_close(got.double(), want.double(), atol=atol, rtol=rtol,
                                   msg=lambda message: f"{name}: {message}")
