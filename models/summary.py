"""Size of a model configuration without building it in memory: parameters, recurrent state, FLOPs.

    python -m recurlm.models.summary model=hgrn2 model.size=1b
    python -m recurlm.models.summary model=griffin model.size=14b model.lru_width=16384 train.seq_len=4096

The model is built on the meta device (no storage), so even 14B parameters cost no memory.
Reported: parameters (total and without the input embedding), recurrent state bytes per sequence
(each layer's ``init_state`` on the meta device: content entries and bookkeeping, e.g. positions),
and forward FLOPs per token at the training length (x3 for a training step). The state-size knobs
are ordinary model fields: HGRN2 ``expand_ratio``, RWKV ``head_dim``, xLSTM ``n_heads`` /
``qk_dim_factor``, Griffin/Hawk ``lru_width``.
"""
from __future__ import annotations

import sys
from typing import Any, Sequence

import torch

from recurlm.models.base import RecurrentLM
from recurlm.models.registry import build_model, to_model_config
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


def main(argv: Sequence[str] | None = None) -> int:
    from recurlm.configs import ConfigError, compose

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        job = compose(args)
    except ConfigError as err:
        print(f"recurlm.models.summary: configuration error:\n{err}", file=sys.stderr)
        return 2
    print(format_summary(summarize(job.model, job.train.seq_len)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
