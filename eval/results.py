"""Evaluation results: one record per (task, metric, setting), the JSON file and the summary table.

``results.json`` (schema ``recurlm.eval/1``)::

    {"schema": "recurlm.eval/1", "step": 1000, "checkpoint": "...", "config_hash": "3f2a...",
     "train_seq_len": 256, "model": {"family": ..., "params": ..., "state_bytes": ...},
     "eval_config": {...}, "plots": {"ppl_by_position": "ppl_by_position.png", ...},
     "results": [{"task": "ppl", "metric": "loss", "value": 3.1, "settings": {...},
                  "step": 1000, "config_hash": "3f2a..."}, ...]}

``config_hash`` is a sha256 prefix of the evaluation config and the model config, so numbers
from different settings are never compared by accident.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional

SCHEMA = "recurlm.eval/1"


@dataclass
class Record:
    task: str
    """Task name (``ppl``, ``mqar``, ``lm_eval:<task>``...)."""
    metric: str
    """What ``value`` measures (``loss``, ``ppl``, ``accuracy``...)."""
    value: float
    settings: dict[str, Any] = field(default_factory=dict)
    """The setting this value belongs to (e.g. ``{"num_pairs": 16}``); empty for a task summary."""
    summary: bool = False
    """True for the headline number of a task (shown in the Markdown table)."""


def config_hash(*configs: Any) -> str:
    """Stable 12-hex-digit hash of dataclasses / dicts (key order does not matter)."""
    plain = [dataclasses.asdict(c) if dataclasses.is_dataclass(c) else c for c in configs]
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:12]


def write_results(out_dir: str, records: list[Record], step: int, chash: str, header: dict[str, Any],
                  plots: dict[str, str]) -> str:
    """Write ``<out_dir>/results.json`` atomically; returns its path."""
    os.makedirs(out_dir, exist_ok=True)
    doc = {"schema": SCHEMA, "step": step, "config_hash": chash, **header, "plots": plots,
           "results": [{"task": r.task, "metric": r.metric, "value": r.value, "settings": r.settings,
                        "summary": r.summary, "step": step, "config_hash": chash} for r in records]}
    path = os.path.join(out_dir, "results.json")
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(path + ".tmp", path)
    return path


def _fmt(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown_table(records: list[Record], step: Optional[int] = None) -> str:
    """The headline records as a Markdown table (task, metric, value, setting)."""
    rows = [r for r in records if r.summary]
    title = f"recurlm-eval results (step {step})" if step is not None else "recurlm-eval results"
    lines = [f"### {title}", "", "| task | metric | value | setting |", "|---|---|---|---|"]
    for r in rows:
        setting = ", ".join(f"{k}={v}" for k, v in r.settings.items())
        lines.append(f"| {r.task} | {r.metric} | {_fmt(r.value)} | {setting} |")
    return "\n".join(lines)


def wandb_metrics(records: list[Record]) -> dict[str, float]:
    """``eval/<task>/<metric>[/<k>=<v>...]`` → value, for W&B or metrics.jsonl."""
    out = {}
    for r in records:
        key = "/".join(["eval", r.task.replace(":", "_"), r.metric,
                        *(f"{k}={v}" for k, v in r.settings.items())])
        out[key] = r.value
    return out
