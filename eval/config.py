"""What to evaluate, during training and with ``recurlm-eval``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from recurlm.data.synthetic import GROUPS

TASKS = ("ppl", "ppl_by_position", "effrem", "passkey", "mqar", "state_tracking", "lm_eval:<task>")
"""Evaluation tasks (``lm_eval:<task>[,<task>...]`` names lm-evaluation-harness tasks)."""

STATE_TRACKING_TASKS = ("parity", "modcount", *GROUPS)
"""The state-tracking tasks: sums modulo 2 and modulo ``state_tracking_modulus``, and the word problems
of the groups S5 and A5."""


@dataclass
class EvalConfig:
    tasks: List[str] = field(default_factory=lambda: ["ppl"])
    """Tasks to run: ppl, ppl_by_position, effrem, passkey, mqar, state_tracking, lm_eval:<task>[,<task>...]."""
    every: int = 0
    """During training: run ``tasks`` every this many steps (0: only at the end)."""
    out_dir: str = ""
    """Results directory; empty = <run_dir>/eval/<step>/."""
    batch_size: int = 8
    """Sequences per evaluation batch."""
    max_batches: int = 16
    """Batches for ppl (0: the whole split)."""
    seq_len: int = 0
    """ppl: tokens per row (0: the training length)."""
    length_multiple: int = 16
    """ppl_by_position: evaluate up to this many times the training length."""
    position_sequences: int = 8
    """ppl_by_position / effrem: number of long sequences averaged per position."""
    effrem_context: int = 0
    """effrem: context length T (0: ``length_multiple`` x the training length)."""
    effrem_points: int = 16
    """effrem: evenly spaced cut points t in [0, T), plus t = T - 2^k (one forward of T - t tokens each)."""
    chunk_len: int = 0
    """Long inputs are run in chunks of this many tokens with the recurrent state carried from one
    chunk to the next (constant memory; 0: the training length)."""
    passkey_lengths: List[int] = field(default_factory=lambda: [256, 1024, 4096])
    """passkey: context lengths in tokens (approximate: whole filler sentences are added)."""
    passkey_depths: List[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    """passkey: relative positions of the key in the filler (0 = start, 1 = end)."""
    passkey_trials: int = 4
    """passkey: random keys per (length, depth) cell."""
    mqar_pairs: List[int] = field(default_factory=lambda: [4, 8, 16, 32, 64])
    """mqar: numbers of key-value pairs stored before the queries."""
    mqar_examples: int = 16
    """mqar: sequences per number of pairs (every pair is queried once per sequence)."""
    mqar_value_digits: int = 3
    """mqar: digits per value (as the training source's ``value_digits``; chance is 10^-digits)."""
    state_tracking_tasks: List[str] = field(default_factory=lambda: ["parity", "modcount"])
    """state_tracking: which sequences (parity = sum mod 2, modcount = sum mod ``modulus``, s5 / a5 =
    the permutation word problems: the composition of random group elements)."""
    state_tracking_lengths: List[int] = field(default_factory=lambda: [4, 8, 16, 32, 64, 128])
    """state_tracking: sequence lengths (number of digits)."""
    state_tracking_modulus: int = 5
    """state_tracking: the modulus of ``modcount``."""
    state_tracking_examples: int = 32
    """state_tracking: sequences per (task, length)."""
    seed: int = 1234
    """Seed of the synthetic evaluation examples (training data uses other seeds by default)."""
    lm_eval_limit: Optional[int] = None
    """lm_eval: documents per task (None: all)."""
    lm_eval_num_fewshot: Optional[int] = None
    """lm_eval: few-shot examples (None: the task's default)."""
    lm_eval_include_path: str = ""
    """lm_eval: a directory of extra task YAMLs (local tasks, fully offline)."""
    plots: bool = True
    """Write PNG plots next to the results JSON."""
    wandb_mode: str = "offline"
    """recurlm-eval: W&B mode (offline, online, disabled); resumes the run's W&B id when known."""
    device: str = "cpu"
    """recurlm-eval: device to evaluate on."""

    def __post_init__(self) -> None:
        unknown = [t for t in self.state_tracking_tasks if t not in STATE_TRACKING_TASKS]
        if unknown:
            raise ValueError(f"eval.state_tracking_tasks: unknown {unknown}; choose from {', '.join(STATE_TRACKING_TASKS)}")
        known = [t.split(":")[0] for t in TASKS]
        for task in self.tasks:
            name = task.split(":", 1)[0]
            if name not in known or (name == "lm_eval" and ":" not in task):
                raise ValueError(f"eval.tasks: unknown evaluation task {task!r}; choose from {', '.join(TASKS)}")


SCHEMAS = [("eval", "eval_schema", EvalConfig)]
"""``(group, name, dataclass)`` stored in Hydra's ConfigStore by ``recurlm.configs``."""
