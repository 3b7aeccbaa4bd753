"""Example inputs of ``titans_memory``: random tensors with realistic gates, document resets and states.

Runtime code, not test code: the GPU compile gate (``launch/compile_gate/capture.py``) and
``recurlm-doctor`` (``launch/doctor.py``) build the inputs they launch every kernel with from
here; the kernel tests and benchmarks use the same inputs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def make_inputs(B: int = 2, T: int = 32, H: int = 2, D: int = 16, depth: int = 1, hidden: int | None = None,
                dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", seed: int = 0,
                log_eta_min: float = -1.0, log_keep_min: float = -0.2, theta_max: float = 0.5,
                requires_grad: bool = False) -> dict:
    """Keyword arguments for ``titans_memory``: q, k, v [B, T, H, D], theta, eta, alpha [B, T, H],
    init_weights (depth 1: (W [H, D, D],); depth 2: (W1 [H, D, E], W2 [H, E, D]), E = hidden or 2 D).

    q and k are l2-normalised (as in Titans), theta ~ U(0, theta_max), log eta ~ U(log_eta_min, 0),
    log(1 - alpha) ~ U(log_keep_min, 0); pass e.g. -20 for strong decays. Leaves require grad if asked.
    """
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    E = hidden or 2 * D
    dims = (D, D) if depth == 1 else (D, E, D)
    inputs = dict(
        q=F.normalize(randn(B, T, H, D), dim=-1),
        k=F.normalize(randn(B, T, H, D), dim=-1),
        v=randn(B, T, H, D),
        theta=theta_max * rand(B, T, H),
        eta=torch.exp(log_eta_min * rand(B, T, H)),
        alpha=-torch.expm1(log_keep_min * rand(B, T, H)),
        init_weights=tuple(randn(H, din, dout) / din ** 0.5 for din, dout in zip(dims[:-1], dims[1:])),
    )
    as_leaf = lambda x: x.to(device=device, dtype=dtype).requires_grad_(requires_grad)
    return {name: tuple(map(as_leaf, x)) if isinstance(x, tuple) else as_leaf(x) for name, x in inputs.items()}
