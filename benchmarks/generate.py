"""Decoding benchmark on CPU: tokens/s and memory vs generated length for every family, and
recurlm's generate vs transformers' generate for RecurrentGemma with the same weights.

    python -m recurlm.benchmarks.generate                 # small configs, lengths 128, 512, 2048
    python -m recurlm.benchmarks.generate --quick         # tiny configs, lengths 32, 128
    python -m recurlm.benchmarks.generate --families hgrn2,rwkv7 --lengths 256,4096

recurlm: ``recurlm.eval.generate`` (chunkwise prefill of a 32-token prompt, then ``model.step``
with the O(1) state), greedy, batch 1. Memory is the peak tensor memory of the whole call
(``common.PeakTensorMemory``): it stays flat as the generated length grows, while a KV cache
grows linearly. Baseline: transformers' ``RecurrentGemmaForCausalLM.generate`` (greedy,
``min_new_tokens = max_new_tokens``) on the same weights (``models.convert.recurrentgemma``),
timed interleaved with recurlm in the same process; the ratio column is recurlm / transformers.
"""
from __future__ import annotations

import argparse
import warnings

import torch

from recurlm.benchmarks.common import best_times, fmt_bytes, fmt_ratio, peak_memory_bytes, print_table, set_threads
from recurlm.eval.generate import SamplingConfig, generate
from recurlm.models import build_model

FAMILIES = ["hgrn2", "griffin", "hawk", "rwkv6", "rwkv7", "titans_mac", "xlstm"]
VOCAB = 4096
PROMPT = 32


def recurlm_decode(model, n: int):
    prompt = torch.randint(4, VOCAB, (PROMPT,), generator=torch.Generator().manual_seed(0)).tolist()
    return lambda: generate(model, [prompt], SamplingConfig(max_new_tokens=n), eos_id=-1)


def family_table(families: list[str], size: str, lengths: list[int], repeats: int) -> None:
    rows = []
    for family in families:
        model = build_model({"family": family, "size": size, "vocab_size": VOCAB}).eval()
        speeds, memories = [], []
        for n in lengths:
            seconds = best_times({"decode": recurlm_decode(model, n)}, repeats=repeats, warmup=0)["decode"]
            speeds.append(f"{n / seconds:.0f}")
            memories.append(fmt_bytes(peak_memory_bytes(recurlm_decode(model, n))))
        rows.append([family, fmt_bytes(model.state_bytes())] + speeds + memories)
    print_table(["family", "state"] + [f"tok/s @{n}" for n in lengths] + [f"peak mem @{n}" for n in lengths], rows,
                title=f"recurlm decode, size={size}, prompt {PROMPT} tokens, batch 1, greedy")


def recurrentgemma_table(lengths: list[int], quick: bool, repeats: int) -> None:
    import transformers

    from recurlm.models.convert.recurrentgemma import from_transformers

    d = 64 if quick else 256
    torch.manual_seed(0)
    hf_config = transformers.RecurrentGemmaConfig(
        num_hidden_layers=3 if quick else 6, vocab_size=VOCAB, hidden_size=d, intermediate_size=6 * d,
        num_attention_heads=4, num_key_value_heads=1, lru_width=d, attention_window_size=2048,
        block_types=["recurrent", "recurrent", "attention"], pad_token_id=0, eos_token_id=1, bos_token_id=2)
    hf = transformers.RecurrentGemmaForCausalLM(hf_config).eval()
    ours = from_transformers(hf).eval()
    prompt = torch.randint(4, VOCAB, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    rows = []
    for n in lengths:
        def hf_decode(n=n):
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return hf.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

        def ours_decode(n=n):
            return generate(ours, [prompt[0].tolist()], SamplingConfig(max_new_tokens=n), eos_id=-1)

        times = best_times({"transformers": hf_decode, "recurlm": ours_decode}, repeats=repeats, warmup=0)
        same = hf_decode()[0, PROMPT:].tolist() == ours_decode()[0].tokens
        rows.append([n, f"{n / times['recurlm']:.0f}", f"{n / times['transformers']:.0f}",
                     fmt_ratio(times["transformers"] / times["recurlm"]),
                     fmt_bytes(peak_memory_bytes(ours_decode)), fmt_bytes(peak_memory_bytes(hf_decode)),
                     "yes" if same else "no"])
    print_table(["new tokens", "recurlm tok/s", "transformers tok/s", "speed ratio", "recurlm peak mem",
                 "transformers peak mem", "same tokens"], rows,
                title=f"RecurrentGemma (Griffin, d={d}) greedy decode: recurlm vs transformers.generate, same weights")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny configs and short lengths")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--lengths", default="", help="generated lengths, comma separated")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    set_threads(args.threads)
    lengths = [int(x) for x in args.lengths.split(",")] if args.lengths else ([32, 128] if args.quick else [128, 512, 2048])
    family_table(args.families.split(","), "tiny" if args.quick else "small", lengths, args.repeats)
    recurrentgemma_table(lengths, args.quick, args.repeats)


if __name__ == "__main__":
    main()
