"""Size of a model configuration without building it in memory: parameters, recurrent state, FLOPs.

The command (``recurlm.configs.summary``, which composes the job the model comes from):

    python -m recurlm.configs.summary model=hgrn2 model.size=1b
    python -m recurlm.configs.summary model=griffin model.size=14b model.lru_width=16384 train.seq_len=4096
    python -m recurlm.configs.summary --presets [family ...]   # every preset vs the papers' counts

The model is built on the meta device (no storage), so even 14B parameters cost no memory.
Reported: parameters (total and without the input embedding), recurrent state bytes per sequence
(each layer's ``init_state`` on the meta device: content entries and bookkeeping, e.g. positions),
and forward FLOPs per token at the training length (x3 for a training step). The state-size knobs
are ordinary model fields: HGRN2 ``expand_ratio``, RWKV ``head_dim``, xLSTM ``n_heads`` /
``qk_dim_factor``, Griffin/Hawk ``lru_width``.

``--presets`` builds every size preset of every family (or of the families named) and prints a
Markdown table of its shape, parameters and recurrent state next to the published count it is checked
against (``configs/model_sizes/paper_sizes.yaml``, also read by ``tests/models/test_presets.py``).
"""
from __future__ import annotations

from importlib import resources
from typing import Any, Sequence

import torch
import yaml

from recurlm.models.base import RecurrentLM
from recurlm.models.config import preset_table
from recurlm.models.registry import FAMILIES, build_model, to_model_config
from recurlm.models.state import is_content

DEFAULT_VOCAB = 4096
"""Vocabulary assumed when the config leaves it to the tokenizer (the default run's 4096 pieces)."""


def summarize(model_cfg: Any, seq_len: int) -> dict[str, Any]:
    """Parameters, state bytes (per layer and total, per sequence) and FLOPs per token of a config."""
    cfg = to_model_config(model_cfg)
    if not cfg.vocab_size:
        cfg.vocab_size = DEFAULT_VOCAB
    with torch.device("meta"):
        model: RecurrentLM = build_model(cfg)
    layers = []
    for i, block in enumerate(model.blocks):
        state = block.init_state(1, device="meta") or {}
        content = sum(t.numel() * t.element_size() for k, t in state.items() if is_content(k))
        total = sum(t.numel() * t.element_size() for t in state.values())
        layers.append({"layer": i, "kind": getattr(block, "kind", type(block).__name__), "state_bytes": total,
                       "content_bytes": content, "shapes": {k: list(t.shape[1:]) for k, t in state.items()}})
    return {"family": cfg.family, "size": cfg.size, "vocab_size": cfg.vocab_size, "seq_len": seq_len,
            "params": model.num_params(), "non_embedding_params": model.num_params(non_embedding=True),
            "state_bytes": sum(layer["state_bytes"] for layer in layers), "layers": layers,
            "flops_per_token": model.flops_per_token(seq_len)}


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}P"


def format_summary(s: dict[str, Any]) -> str:
    lines = [f"{s['family']} {s['size']} (vocab {s['vocab_size']}, T = {s['seq_len']})",
             f"parameters:          {s['params']:,} ({_human(s['params'])}), non-embedding "
             f"{s['non_embedding_params']:,} ({_human(s['non_embedding_params'])})",
             f"recurrent state:     {s['state_bytes']:,} bytes per sequence ({_human(s['state_bytes'])}B)",
             f"forward FLOPs/token: {_human(s['flops_per_token'])} (training step ~3x: "
             f"{_human(3 * s['flops_per_token'])})",
             "layer  kind                 state bytes  content bytes  shapes (per sequence)"]
    for layer in s["layers"]:
        shapes = ", ".join(f"{k} {v}" for k, v in layer["shapes"].items())
        lines.append(f"{layer['layer']:>5}  {str(layer['kind']):<20} {layer['state_bytes']:>11,}  "
                     f"{layer['content_bytes']:>13,}  {shapes}")
    return "\n".join(lines)


COUNTS = ("total", "non_embedding", "blocks")
"""What a reference counts: every parameter, all but the input embedding, or all but the input
embedding and the (untied) output head."""


def count_params(model: RecurrentLM, count: str) -> int:
    """Parameters of ``model`` under one of :data:`COUNTS`."""
    if count not in COUNTS:
        raise ValueError(f"count must be one of {COUNTS}, got {count!r}")
    if count == "total":
        return model.num_params()
    head = 0 if model.head is None or count == "non_embedding" else model.head.weight.numel()
    return model.num_params(non_embedding=True) - head


def reference_sizes() -> dict[str, dict[str, dict[str, Any]]]:
    """Published counts of the paper-size presets: {family: {size: entry}}, each entry resolved from
    ``configs/model_sizes/paper_sizes.yaml`` (family defaults, then the entry's own keys) to
    ``params`` (absolute), ``count``, ``vocab``, ``tolerance``, ``source`` and ``overrides``."""
    text = resources.files("recurlm.configs").joinpath("model_sizes", "paper_sizes.yaml").read_text()
    table = {}
    for family, spec in yaml.safe_load(text).items():
        defaults = {k: v for k, v in spec.items() if k != "sizes"}
        table[family] = {}
        for size, entry in spec["sizes"].items():
            ref = {"overrides": {}, **defaults, **entry}
            ref["params"] = round(ref.pop("params_m") * 1e6)
            table[family][str(size)] = ref
    return table


def build_preset(family: str, size: str, vocab_size: int, overrides: dict[str, Any] | None = None) -> RecurrentLM:
    """The model of a size preset on the meta device (no storage)."""
    with torch.device("meta"):
        return build_model({"family": family, "size": size, "vocab_size": vocab_size, **(overrides or {})})


def preset_rows(families: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per size preset: shape, parameters and state at the reference vocabulary (presets
    without a reference, e.g. tiny, at :data:`DEFAULT_VOCAB`), with the reference and the ratio."""
    references = reference_sizes()
    rows = []
    for family in families or FAMILIES:
        for size in preset_table(family):
            ref = references.get(family, {}).get(str(size))
            model = build_preset(family, size, ref["vocab"] if ref else DEFAULT_VOCAB, ref and ref["overrides"])
            row = {"family": family, "size": size, "d_model": model.config.d_model, "n_layers": model.config.n_layers,
                   "vocab": model.config.vocab_size, "params": model.num_params(),
                   "non_embedding": model.num_params(non_embedding=True), "state_bytes": model.state_bytes(),
                   "reference": ref}
            if ref:
                row["ratio"] = count_params(model, ref["count"]) / ref["params"]
            rows.append(row)
    return rows


def format_preset_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of :func:`preset_rows`."""
    lines = ["| family | size | d_model | layers | vocab | params | non-embedding | state/seq | paper | counted | ours/paper |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = r["reference"]
        paper = f"{_human(ref['params'])} | {ref['count']} | {r['ratio']:.3f}" if ref else "- | - | -"
        lines.append(f"| {r['family']} | {r['size']} | {r['d_model']} | {r['n_layers']} | {r['vocab']} | "
                     f"{_human(r['params'])} | {_human(r['non_embedding'])} | {_human(r['state_bytes'])}B | {paper} |")
    return "\n".join(lines)
