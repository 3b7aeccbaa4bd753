"""Record every Triton launch an op makes, forward and backward, without a GPU.

``capturing(arch)`` makes this process look like a node with one GPU of compute capability
``arch`` to Triton and to flash-linear-attention (a stand-in driver reporting that target and its
shared memory; ``torch.cuda``'s capability queries answer ``arch``), then swaps
``JITFunction.run`` for a step that binds the launch's arguments exactly as Triton does (signature,
constexprs, divisibility/alignment attributes, compile options) and records them instead of
launching, and ``Autotuner.run`` for a step that records the autotuner's configs (every config its
``prune_configs_by`` keeps; without pruning a sample, see ``sample_configs``). The ops then run on
small CPU tensors with ``impl="triton"``: their PyTorch glue executes for real, the kernels' outputs
are uninitialised memory, which is harmless since only the launches are kept. Run it in a process
of its own (the compile gate starts one per target): the stand-ins are never undone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from recurlm.kernels.gpu_arch import shared_memory_limit
from recurlm.kernels.examples import grad_leaves
from recurlm.launch.compile_gate.scenarios import Scenario

BATCH, SEQ_LEN = 2, 24
"""Small runtime sizes: they reach the kernels only as runtime integers, strides and grids."""


@dataclass
class Launch:
    """One kernel launch as Triton would compile it."""

    fn: Any                         # the JITFunction
    signature: dict[str, str]
    constexprs: dict[tuple, Any]
    attrs: dict[tuple, Any]
    options: dict[str, Any]
    config: str                     # which autotune config ("" without autotune)
    site: str                       # the autotuned launch it is a candidate of ("" without autotune)

    @property
    def key(self) -> str:
        """Identity of the compiled artifact (two launches with the same key compile once)."""
        return repr((self.fn.module, self.fn.__name__, sorted(self.signature.items()),
                     sorted(self.constexprs.items(), key=str), sorted(self.attrs.items(), key=str),
                     sorted((k, str(v)) for k, v in self.options.items())))

    def named_constexprs(self) -> dict[str, Any]:
        names = list(self.signature)
        return {names[path[0]]: value for path, value in self.constexprs.items()
                if isinstance(value, (int, float, bool, str))}


def sample_configs(configs: list, count: int) -> list:
    """``count`` configs of an autotuner without pruning: the one it lists first, then those with the
    most and the least on-chip demand (stages x warps x product of block sizes) -- the ends most
    likely to overflow shared memory or spill."""
    def demand(config) -> int:
        blocks = 1
        for value in config.kwargs.values():
            blocks *= value if isinstance(value, int) and not isinstance(value, bool) else 1
        return config.num_stages * config.num_warps * blocks

    ranked = sorted(configs, key=demand)
    picked = []
    for config in [configs[0], ranked[-1], ranked[0], *ranked[len(ranked) // 2:len(ranked) // 2 + 1]]:
        if config not in picked and len(picked) < count:
            picked.append(config)
    return picked


class _Driver:
    """What Triton and fla ask of the active driver, answered for a GPU of compute capability ``arch``."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)
        self.props = {"max_shared_mem": shared_memory_limit(arch), "multiprocessor_count": 132 if arch >= 90 else 108,
                      "max_num_regs": 65536, "warpSize": 32}
        self.utils = self

    def get_current_target(self):
        return self.target

    def get_device_properties(self, device: int = 0) -> dict:
        return self.props

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int = 0) -> int:
        return 0

    def is_active(self) -> bool:
        return True

    def get_benchmarker(self):
        raise RuntimeError("the compile gate never benchmarks: configs are recorded, not timed")


def capturing(arch: int, launches: list[Launch], configs_per_kernel: int) -> None:
    """Install the stand-ins (module docstring); recorded launches are appended to ``launches``."""
    import triton
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    import recurlm.kernels.dispatch as dispatch

    triton.runtime.driver.set_active(_Driver(arch))
    torch.cuda.get_device_capability = lambda *args, **kwargs: (arch // 10, arch % 10)
    torch.cuda.get_device_name = lambda *args, **kwargs: f"compile target sm_{arch}"
    dispatch.triton_interpreting = lambda: True    # lets impl="triton" accept the CPU tensors
    current_config = ["", ""]                      # (config description, autotuned launch id)
    sites = iter(range(1 << 62))

    def record(self, *args, grid, warmup, **kwargs):
        _, _, _, backend, binder = self.device_caches[0]
        bound, specialization, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = self._pack_args(backend, kwargs, bound, specialization, options)
        launches.append(Launch(self, signature, constexprs, attrs, dict(options.__dict__), *current_config))

    def record_configs(self, *args, **kwargs):
        self.nargs = dict(zip(self.arg_names, args))
        pruned = self.early_config_prune is not None or self.perf_model is not None
        kept = self.prune_configs(kwargs) if pruned else sample_configs(self.configs, configs_per_kernel)
        site = f"{self.base_fn.__name__}#{next(sites)}"
        for n, config in enumerate(kept):
            current_config[:] = (f"{'kept by pruning' if pruned else 'sampled'} {n + 1}/{len(kept)} "
                                 f"of {len(self.configs)}: {config}", site)
            self.fn.run(*args, **kwargs, **config.all_kwargs())
        current_config[:] = ("", "")
        self.nargs = None

    JITFunction.run = record
    Autotuner.run = record_configs


def _inputs(scenario: Scenario, dtype: torch.dtype, with_state: bool) -> tuple[Callable, dict]:
    """(public op, its keyword inputs) at the scenario's dims; ``with_state``: resets, an initial state
    and the final state (the training-on-packed-documents path), else neither."""
    from recurlm import kernels

    d = dict(scenario.dims)
    common = dict(dtype=dtype, requires_grad=True, initial_state=with_state, reset_prob=0.2 if with_state else 0.0)
    if scenario.op == "linear_scan":
        from recurlm.kernels.linear_scan.examples import make_inputs
        return kernels.linear_scan, make_inputs(BATCH, SEQ_LEN, d["dim"], **common)
    if scenario.op == "local_attention":
        from recurlm.kernels.local_attention.examples import make_inputs
        return kernels.local_attention, make_inputs(BATCH, SEQ_LEN, d["heads"], d["kv_heads"], d["head_dim"],
                                                    d["window"], **common)
    if scenario.op == "mlstm":
        from recurlm.kernels.mlstm.examples import make_inputs
        return kernels.mlstm, make_inputs(BATCH, SEQ_LEN, d["heads"], d["dk"], d["dv"], **common)
    if scenario.op == "slstm":
        from recurlm.kernels.slstm.examples import make_inputs
        return kernels.slstm, make_inputs(BATCH, SEQ_LEN, d["heads"], d["dim"], **common)
    if scenario.op == "titans_memory":
        from recurlm.kernels.titans_memory.examples import make_inputs
        inputs = make_inputs(B=BATCH, T=2 * d["chunk_size"] + 1, H=d["heads"], D=d["dim"], depth=1, dtype=dtype,
                             requires_grad=True)
        if with_state:
            inputs["resets"] = torch.zeros(BATCH, inputs["q"].shape[1], dtype=torch.bool)
            inputs["resets"][:, d["chunk_size"] // 2 + 1] = True
        return kernels.titans_memory, {**inputs, "chunk_size": d["chunk_size"]}
    if scenario.op in ("gla", "rwkv6"):
        from recurlm.kernels.gla.examples import make_inputs as gla_inputs
        from recurlm.kernels.rwkv6.examples import make_inputs as rwkv6_inputs
        make = gla_inputs if scenario.op == "gla" else rwkv6_inputs
        return getattr(kernels, scenario.op), make(BATCH, SEQ_LEN, d["heads"], d["dk"], d["dv"], **common)
    if scenario.op == "dplr_delta_rule":
        from recurlm.kernels.dplr_delta_rule.examples import make_inputs
        return kernels.dplr_delta_rule, make_inputs(BATCH, SEQ_LEN, d["heads"], d["dk"], d["dv"], **common)
    raise ValueError(f"no capture recipe for op {scenario.op!r}")


def _float_leaves(inputs: dict) -> list[torch.Tensor]:
    return [t for t in grad_leaves(inputs) if t.is_floating_point()]


def capture_op(scenario: Scenario, dtype: torch.dtype) -> None:
    """Run the op's Triton path forward and backward (with and without resets/states); the launches
    go to the list given to ``capturing``."""
    for with_state in (True, False):
        op, inputs = _inputs(scenario, dtype, with_state)
        output, final_state = op(**inputs, output_final_state=with_state, impl="triton")
        loss = sum(t.float().sum() for t in grad_leaves([output, final_state]))
        torch.autograd.grad(loss, _float_leaves(inputs), allow_unused=True)
