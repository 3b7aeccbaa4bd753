"""recurlm.eval: evaluation tasks, generation and the lm-eval adapter.

- :func:`run_tasks` (``recurlm.eval.runner``): ppl, ppl_by_position, passkey, mqar, state_tracking and
  lm_eval:<task> on an in-memory model; results JSON + PNG plots; used by ``recurlm-eval`` and the trainer.
- :func:`generate` (``recurlm.eval.generate``): chunkwise prefill then O(1)-per-token decoding.
- ``recurlm.eval.lm_eval_adapter``: ``@register_model("recurlm")`` for lm-evaluation-harness.
"""
from recurlm.eval.config import EvalConfig
from recurlm.eval.generate import Generation, SamplingConfig, generate, prefill
from recurlm.eval.runner import run_tasks

__all__ = ["EvalConfig", "Generation", "SamplingConfig", "generate", "prefill", "run_tasks"]
