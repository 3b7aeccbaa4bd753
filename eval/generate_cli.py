"""``recurlm-generate``: sample from a checkpoint, streaming tokens as they are produced.

    recurlm-generate checkpoint=outputs/run/checkpoints 'prompt="def fibonacci(n):"' max_new_tokens=100
    recurlm-generate checkpoint=<export dir> 'prompts=["import os", "class A:"]' temperature=0.8 top_p=0.9
    recurlm-generate checkpoint=<dir> prompt_file=prompts.txt 'stop=["\\n\\n"]'

A single prompt is streamed to stdout token by token; several prompts run as one batch and are
printed when done. Every prompt starts with BOS.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from omegaconf import MISSING

from recurlm.data import Tokenizer
from recurlm.eval.cli import apply_overrides
from recurlm.eval.generate import SamplingConfig, generate
from recurlm.models.pretrained import load_for_inference


@dataclass
class GenerateCommand:
    checkpoint: str = MISSING
    """A run dir, its checkpoints dir, one checkpoint, or an export dir."""
    prompt: str = ""
    """One prompt (streamed)."""
    prompts: List[str] = field(default_factory=list)
    """Several prompts, generated as one batch."""
    prompt_file: str = ""
    """A text file with one prompt per line (added to ``prompts``)."""
    max_new_tokens: int = 64
    """Tokens to generate at most per prompt."""
    temperature: float = 0.0
    """0: greedy."""
    top_k: int = 0
    """Sample among the k most likely tokens (0: all)."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1: off)."""
    stop: List[str] = field(default_factory=list)
    """Stop strings: a row ends once its text contains one (the text is cut before it)."""
    seed: int = 0
    """Sampling seed."""
    prefill_chunk: int = 0
    """Prefill the prompt in chunks of this many tokens (0: one chunk)."""
    device: str = "cpu"
    """Device to run on."""


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    try:
        cmd: GenerateCommand = apply_overrides(GenerateCommand, argv)
    except ValueError as err:
        print(f"recurlm-generate: error: {err}", file=sys.stderr)
        return 2
    texts = ([cmd.prompt] if cmd.prompt else []) + list(cmd.prompts)
    if cmd.prompt_file:
        with open(cmd.prompt_file) as f:
            texts += [line.rstrip("\n") for line in f if line.strip()]
    if not texts:
        texts = [""]
    model, tokenizer_path, _ = load_for_inference(cmd.checkpoint, device=cmd.device)
    if tokenizer_path is None:
        print(f"recurlm-generate: error: {cmd.checkpoint} has no tokenizer.model", file=sys.stderr)
        return 2
    tokenizer = Tokenizer(tokenizer_path)
    prompts = [[tokenizer.bos_id] + tokenizer.encode(t) for t in texts]
    sampling = SamplingConfig(cmd.max_new_tokens, cmd.temperature, cmd.top_k, cmd.top_p, cmd.seed)
    streamed: list[int] = []
    printed = [0]

    def stream(row: int, token: int) -> None:
        streamed.append(token)
        text = tokenizer.decode(streamed)
        sys.stdout.write(text[printed[0]:])
        sys.stdout.flush()
        printed[0] = len(text)

    single = len(prompts) == 1
    if single:
        sys.stdout.write(texts[0])
    t0 = time.perf_counter()
    outputs = generate(model, prompts, sampling, tokenizer=tokenizer, stop=cmd.stop,
                       prefill_chunk=cmd.prefill_chunk, on_token=stream if single else None)
    seconds = time.perf_counter() - t0
    if single:
        sys.stdout.write("\n")
    else:
        for text, out in zip(texts, outputs):
            print(f"--- prompt: {text!r} ({out.finish_reason})\n{text}{out.text}")
    n = sum(len(o.tokens) for o in outputs)
    print(f"[{n} tokens in {seconds:.2f}s, {n / max(seconds, 1e-9):.1f} tokens/s, "
          f"state {model.state_bytes() * len(prompts):,} bytes]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
