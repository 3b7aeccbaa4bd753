"""The grid of shapes the compile gate covers: every op of every size preset, at that preset's dims.

Each family's presets (``configs/model_sizes/<family>.yaml``) are built on the meta device (no
storage) and each layer's ``init_state`` shapes give the head dims its op runs at, so the grid
follows the presets (a new preset is covered without touching the gate). Batch and sequence length
are small: they reach a kernel only through runtime integers and strides, not through the
constexprs and tile shapes that decide whether it compiles and fits.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch

FLA_OPS = ("gla", "rwkv6", "dplr_delta_rule")
"""Ops whose Triton path is flash-linear-attention's kernels (kernels/fla_adapter.py)."""
OWN_OPS = ("linear_scan", "local_attention", "mlstm", "slstm", "titans_memory")
"""Ops with recurlm's own Triton kernels."""
UNTILED_DIMS = ("heads", "kv_heads", "window")
"""Dims that reach no tile shape (head counts index the grid and pointers, the window is a runtime
loop bound): presets differing only in them share one scenario (the first preset's values)."""
STATE_OP = {"hgrn2": "gla", "rwkv6": "rwkv6", "rwkv7": "dplr_delta_rule"}
"""The fla op behind a family's [H, K, V] matrix state."""


@dataclass(frozen=True)
class Scenario:
    """One op at one set of dims (shared by every preset listed in ``presets``)."""

    op: str
    """Kernel op (a folder of recurlm/kernels)."""
    dims: tuple[tuple[str, int], ...]
    """The op's size arguments, e.g. (("heads", 4), ("head_dim", 384))."""
    presets: tuple[str, ...] = field(default=(), compare=False)
    """family/size of every preset that runs the op at these dims."""

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.dims)


def _layer_scenarios(family: str, cfg, state: dict[str, tuple[int, ...]]) -> Iterable[tuple[str, dict]]:
    """(op, dims) of the ops one layer runs, read from its state shapes (batch dim dropped)."""
    if "C" in state:                                        # mLSTM: C [H, K, V]
        heads, dk, dv = state["C"]
        yield "mlstm", {"heads": heads, "dk": dk, "dv": dv}
    if "c" in state and "h" in state:                       # sLSTM: c, n, m, h [H, D]
        heads, dim = state["c"]
        yield "slstm", {"heads": heads, "dim": dim}
    if "h" in state and len(state["h"]) == 1:               # Griffin/Hawk RG-LRU: h [W]
        yield "linear_scan", {"dim": state["h"][0]}
    if "k" in state:                                        # local attention cache [window - 1, Hkv, D]
        cached, kv_heads, head_dim = state["k"]
        yield "local_attention", {"heads": cfg.n_heads, "kv_heads": kv_heads, "head_dim": head_dim,
                                  "window": cached + 1}
    if "mem_w0" in state:                                   # Titans memory [H, D, *]: the Triton path is linear
        heads, dim, _ = state["mem_w0"]
        yield "titans_memory", {"heads": heads, "dim": dim, "chunk_size": cfg.memory_chunk_size}
    for key in ("wkv", "S"):                                # fla ops: [H, K, V]
        if key in state and family in STATE_OP:
            heads, dk, dv = state[key]
            yield STATE_OP[family], {"heads": heads, "dk": dk, "dv": dv}


def preset_scenarios(families: Iterable[str] | None = None) -> list[Scenario]:
    """Every distinct (op, dims) of every size preset of ``families`` (default: all)."""
    from recurlm.models.config import preset_table
    from recurlm.models.registry import FAMILIES, build_model, to_model_config

    found: dict[tuple[str, tuple], tuple[dict, list[str]]] = {}
    for family in families or FAMILIES:
        for size in preset_table(family):
            cfg = to_model_config({"family": family, "size": size, "vocab_size": 256})
            with torch.device("meta"):
                model = build_model(cfg)
            for block in model.blocks:
                state = {k: tuple(t.shape[1:]) for k, t in (block.init_state(1, device="meta") or {}).items()}
                for op, dims in _layer_scenarios(family, cfg, state):
                    key = tuple((k, v) for k, v in dims.items() if k not in UNTILED_DIMS)
                    _, presets = found.setdefault((op, key), (dims, []))
                    if f"{family}/{size}" not in presets:
                        presets.append(f"{family}/{size}")
    return sorted((Scenario(op, tuple(dims.items()), tuple(presets)) for (op, _), (dims, presets) in found.items()),
                  key=lambda s: (s.op, s.dims))
