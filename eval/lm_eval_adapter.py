"""recurlm as an lm-evaluation-harness model (``@register_model("recurlm")``).

    python -m recurlm.eval.lm_eval_adapter run --model recurlm --model_args pretrained=<export dir> --tasks ...
    recurlm-eval checkpoint=<dir> 'tasks=[lm_eval:<task>]'

(lm-eval discovers models only through imports, so the stock ``lm_eval`` command knows
``recurlm`` once this module is imported: the ``python -m`` form above imports it and hands the
arguments to lm-eval's own CLI.)

Recurrent prefill: requests sharing a context (the choices of a multiple-choice question) run the
context once; its final state is copied to every continuation, which then run as one batch.
Long inputs run in chunks with the state carried, so there is no context-length limit.
"""
from __future__ import annotations

import sys
from typing import Any, Optional

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from recurlm.eval.generate import SamplingConfig, generate, prefill
from recurlm.eval.perplexity import chunked_map
from recurlm.models.base import RecurrentLM
from recurlm.models.state import ModelState


@register_model("recurlm")
class RecurLMHarness(LM):
    """An lm-eval ``LM`` over a recurlm model and its SentencePiece tokenizer."""

    def __init__(self, pretrained: Optional[str] = None, model: Optional[RecurrentLM] = None, tokenizer: Any = None,
                 device: str = "cpu", batch_size: int | str = 8, chunk_len: int = 2048,
                 max_gen_toks: int = 256, **_: Any):
        super().__init__()
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            device = "cpu"  # lm-eval's CLI asks for cuda by default
        if model is None:
            if not pretrained:
                raise ValueError("recurlm lm-eval model: pass pretrained=<export dir, checkpoint or run dir>")
            from recurlm.data import Tokenizer
            from recurlm.models.pretrained import load_for_inference

            model, tokenizer_path, _ = load_for_inference(pretrained, device=device)
            if tokenizer_path is None:
                raise ValueError(f"{pretrained} has no tokenizer.model: lm-eval needs text in and out")
            tokenizer = Tokenizer(tokenizer_path)
        self.model, self.tokenizer = model.eval(), tokenizer
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8
        self.chunk_len, self.max_gen_toks = int(chunk_len), int(max_gen_toks)
        self._device = next(model.parameters()).device

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.path

    # -- scoring --------------------------------------------------------------------------------
    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """As lm-eval's HF model: trailing spaces of the context move to the continuation, and the
        continuation's tokens are those of the whole text past the context's tokens."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        context_ids = [self.tokenizer.bos_id] + self.tokenizer.encode(context)
        whole = [self.tokenizer.bos_id] + self.tokenizer.encode(context + continuation)
        if whole[:len(context_ids)] == context_ids and len(whole) > len(context_ids):
            return context_ids, whole[len(context_ids):]
        return context_ids, self.tokenizer.encode(continuation)

    @torch.no_grad()
    def _score_continuations(self, first_logits: torch.Tensor, state: ModelState,
                             continuations: list[list[int]]) -> list[tuple[float, bool]]:
        """Sum log-probabilities and greedy flags of continuations that all follow one context."""
        results = []
        for i in range(0, len(continuations), self.batch_size):
            group = continuations[i:i + self.batch_size]
            length = max(len(c) for c in group)
            ids = torch.full((len(group), length), self.tokenizer.pad_id, dtype=torch.long, device=self._device)
            for row, cont in enumerate(group):
                ids[row, :len(cont)] = torch.tensor(cont)
            rows = torch.zeros(len(group), dtype=torch.long, device=self._device)
            batch_state = state.select(rows)
            logits = chunked_map(self.model, ids, self.chunk_len, lambda lg, s, e: lg.float().log_softmax(-1),
                                 state=batch_state) if length > 1 else None
            for row, cont in enumerate(group):
                # the first continuation token is predicted by the context's last logits
                steps = [first_logits.float().log_softmax(-1)]
                if len(cont) > 1:
                    steps += list(logits[row, :len(cont) - 1])
                logprobs = torch.stack(steps)
                target = torch.tensor(cont, device=self._device)
                total = float(logprobs.gather(-1, target[:, None]).sum())
                results.append((total, bool((logprobs.argmax(-1) == target).all())))
        return results

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = [self._encode_pair(*req.args) for req in requests]
        by_context: dict[tuple[int, ...], list[int]] = {}
        for index, (context_ids, _) in enumerate(pairs):
            by_context.setdefault(tuple(context_ids), []).append(index)
        out: list[Optional[tuple[float, bool]]] = [None] * len(pairs)
        for context_ids, indices in by_context.items():
            first_logits, state = prefill(self.model, [list(context_ids)], self.chunk_len)
            first_logits = first_logits[0]
            scores = self._score_continuations(first_logits, state, [pairs[i][1] for i in indices])
            for i, score in zip(indices, scores):
                out[i] = score
                self.cache_hook.add_partial("loglikelihood", requests[i].args, score)
        return out

    @torch.no_grad()
    def loglikelihood_rolling(self, requests) -> list[float]:
        """Whole-document log-likelihood: every token predicted once with the full preceding
        context (the recurrent state makes the context unbounded)."""
        out = []
        for req in requests:
            ids = [self.tokenizer.bos_id] + self.tokenizer.encode(req.args[0])
            tokens = torch.tensor([ids], device=self._device)
            logprob = -chunked_map(
                self.model, tokens[:, :-1], self.chunk_len,
                lambda lg, s, e: F.cross_entropy(lg[0].float(), tokens[0, s + 1:e + 1], reduction="none")[None],
            ).sum().item()
            out.append(logprob)
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, logprob)
        return out

    def generate_until(self, requests) -> list[str]:
        out = []
        for req in requests:
            context, gen_kwargs = req.args
            kwargs = dict(gen_kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            sampling = SamplingConfig(max_new_tokens=int(kwargs.get("max_gen_toks", self.max_gen_toks)),
                                      temperature=float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0,
                                      top_k=int(kwargs.get("top_k") or 0), top_p=float(kwargs.get("top_p") or 1.0))
            prompt = [self.tokenizer.bos_id] + self.tokenizer.encode(context)
            text = generate(self.model, [prompt], sampling, tokenizer=self.tokenizer, stop=until,
                            prefill_chunk=self.chunk_len)[0].text
            out.append(text)
            self.cache_hook.add_partial("generate_until", req.args, text)
        return out


def evaluate(model: RecurrentLM, tokenizer: Any, tasks: list[str], limit: Optional[int] = None,
             num_fewshot: Optional[int] = None, include_path: str = "", batch_size: int = 8,
             chunk_len: int = 2048) -> dict[str, dict[str, float]]:
    """Run lm-eval tasks on an in-memory model; returns ``{task: {metric: value}}`` (numbers only,
    lm-eval's ``,none`` filter suffix dropped)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    harness = RecurLMHarness(model=model, tokenizer=tokenizer, batch_size=batch_size, chunk_len=chunk_len)
    manager = None
    if include_path:  # local tasks only: skip indexing lm-eval's thousands of built-in YAMLs when possible
        manager = TaskManager(include_path=include_path, include_defaults=False)
        if not set(tasks) <= set(manager.all_tasks):
            manager = None
    manager = manager or TaskManager(include_path=include_path or None)
    result = simple_evaluate(model=harness, tasks=list(tasks), limit=limit, num_fewshot=num_fewshot,
                             task_manager=manager, log_samples=False, bootstrap_iters=0)
    table = {}
    for task, metrics in result["results"].items():
        table[task] = {k.split(",")[0]: float(v) for k, v in metrics.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return table


def main() -> None:
    """lm-eval's own command line with the ``recurlm`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    sys.exit(cli_evaluate())


if __name__ == "__main__":
    main()
