"""Model benchmarks on CPU: recurlm vs the reference implementation of each family, same config and
same weights (through ``models/convert``), side by side in one process.

    python -m recurlm.benchmarks.models            # full: ~20M-parameter configs, T = 2048
    python -m recurlm.benchmarks.models --quick    # tiny configs, T = 256
    python -m recurlm.benchmarks.models --families griffin,xlstm
    python -m recurlm.benchmarks.models --families xlstm --autocast bf16   # training steps in bf16 autocast

Training step: forward + backward of the mean next-token loss on a batch of B x T random tokens
(gradients zeroed each step, no optimizer), best of N interleaved rounds; tokens/s = B T / time.
Peak memory: ``common.PeakTensorMemory`` over one training step (activations, gradients and
temporaries; parameters excluded since they exist before). Target: recurlm >= 1.5x the reference.
Roofline: the matmul FLOPs of recurlm's training step (``torch.utils.flop_counter``: mm, bmm,
addmm, attention) over this machine's float32 matmul rate (``common.matmul_gflops``, measured in
the same run) give the step's *matmul floor*, the time of its matmuls alone at peak speed; "ref /
floor" is then the largest speed-up over the reference that any implementation doing the same
matmuls could reach (non-matmul work and matmul inefficiency both zero).

Decode: recurlm's ``model.step`` with its O(1) state, one token at a time (batch 1); tokens/s over
``--decode-tokens`` steps, the state size, and the peak tensor memory of a single step early in the
sequence vs at the end (equal when decode memory is constant per token). The reference's decode is
timed where its package has a stepping API that runs on CPU (rwkv).

References: transformers RecurrentGemma (Griffin, Hawk; ``convert.recurrentgemma``), xlstm's
xLSTMLarge with mlstm_kernels' native torch kernels (``convert.xlstm``), BlinkDL's ``rwkv`` package
for RWKV-7 (forward only, ``convert.rwkv_official``), flash-linear-attention's HGRN2ForCausalLM and
RWKV6ForCausalLM with their Triton ops swapped for fla's torch references (``tests/helpers/fla_cpu.py``:
sequential recurrences, one Python step per token; ``convert.fla_hgrn2``, ``convert.fla_rwkv``), whose
logits are checked against recurlm's on the benchmark batch first. Families without a reference that
trains on CPU with mapped weights are listed with the reason.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from torch.utils.flop_counter import FlopCounterMode

from recurlm.benchmarks.common import (best_times, fmt_bytes, fmt_ratio, fmt_time, matmul_gflops,
                                       peak_memory_bytes, print_table, set_threads)

SKIPPED = {
    "titans_mac": "no whole-model reference: titans-pytorch's MemoryAsContextTransformer segments and attends "
                  "differently (chunked attention + neural memory per segment), so only its NeuralMemory module "
                  "is matched (tests/models/test_titans.py)",
}


@dataclass
class Pair:
    family: str
    ours: torch.nn.Module
    ours_loss: Callable[[torch.Tensor], torch.Tensor]
    ref_name: str
    ref_loss: Callable[[torch.Tensor], torch.Tensor] | None  # None: the reference cannot train on CPU
    ref_forward: Callable[[torch.Tensor], object]
    ref_params: Callable[[], list[torch.nn.Parameter]]
    ref_decode: Callable[[list[int]], None] | None = None


def _our_loss(model) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda ids: model(ids, labels=ids)[0]


def _ce(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1).float(), ids.flatten())


def griffin_pair(family: str, d: int, layers: int, vocab: int, window: int) -> Pair:
    import transformers

    from recurlm.models.convert.recurrentgemma import from_transformers

    block_types = ["recurrent", "recurrent", "attention"] if family == "griffin" else ["recurrent"]
    hf_config = transformers.RecurrentGemmaConfig(
        num_hidden_layers=layers, vocab_size=vocab, hidden_size=d, intermediate_size=2 * 3 * d,
        num_attention_heads=max(1, d // 64), num_key_value_heads=1, lru_width=d, attention_window_size=window,
        block_types=block_types, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    hf = transformers.RecurrentGemmaForCausalLM(hf_config).train()
    ours = from_transformers(hf).train()
    return Pair(family, ours, _our_loss(ours), "transformers RecurrentGemmaForCausalLM",
                lambda ids: hf(ids, labels=ids, use_cache=False).loss,
                lambda ids: hf(ids, use_cache=False).logits, lambda: list(hf.parameters()))


def xlstm_pair(d: int, layers: int, vocab: int) -> Pair:
    from xlstm.xlstm_large.model import xLSTMLarge, xLSTMLargeConfig

    from recurlm.models.convert.xlstm import from_xlstm_large

    cfg = xLSTMLargeConfig(embedding_dim=d, num_heads=max(1, d // 96), num_blocks=layers, vocab_size=vocab,
                           chunk_size=64, mode="train", chunkwise_kernel="chunkwise--native_autograd",
                           sequence_kernel="native_sequence__native", step_kernel="native",
                           autocast_kernel_dtype="float32", return_last_states=True)
    ref = xLSTMLarge(cfg).train()
    ours = from_xlstm_large(ref).train()
    return Pair("xlstm", ours, _our_loss(ours), "xlstm xLSTMLarge (mlstm_kernels chunkwise--native_autograd)",
                lambda ids: _ce(ref(ids)[0], ids), lambda ids: ref(ids)[0], lambda: list(ref.parameters()))


def rwkv7_pair(d: int, layers: int, vocab: int, workdir: str) -> Pair:
    import importlib
    import sys

    from recurlm.models import build_model
    from recurlm.models.convert.rwkv_official import to_official
    from recurlm.models.rwkv7 import RWKV7Config

    lora = 8 if d < 128 else 32
    ours = build_model(RWKV7Config(size="tiny", vocab_size=vocab, d_model=d, n_layers=layers,
                                   head_dim=min(64, d // 4), ffn_hidden=4 * d, decay_lora=lora, iclr_lora=lora,
                                   value_lora=lora, gate_lora=2 * lora)).train()
    path = os.path.join(workdir, "rwkv7")
    torch.save(to_official(ours), path + ".pth")
    os.environ.update(RWKV_V7_ON="1", RWKV_CUDA_ON="0")
    module = sys.modules.get("rwkv.model")
    module = importlib.reload(module) if module is not None else importlib.import_module("rwkv.model")
    ref = module.RWKV(path, "cpu fp32")

    def decode(tokens: list[int]) -> None:
        state = None
        for t in tokens:
            _, state = ref.forward([t], state)

    return Pair("rwkv7", ours, _our_loss(ours), "rwkv 0.8 (BlinkDL) RWKV x070, cpu fp32", None,
                lambda ids: ref.forward(ids[0].tolist(), None, full_output=True), lambda: [], decode)


def fla_pair(family: str, d: int, layers: int, vocab: int, ids: torch.Tensor) -> Pair:
    """fla's HGRN2ForCausalLM / RWKV6ForCausalLM (``family`` "hgrn2" / "rwkv6") on fla's torch
    references, and recurlm's model with its weights; prints the largest logit difference on ``ids``.
    Loss: torch cross-entropy on the logits, as recurlm's."""
    import fla.models

    from recurlm.models import build_model
    from recurlm.tests.helpers.fla_cpu import describe, fla_torch_references  # run from a checkout
    from recurlm.models.convert.fla_hgrn2 import from_fla
    from recurlm.models.convert.fla_rwkv import from_fla_rwkv6

    small = d < 128
    with fla_torch_references(family):  # fla's layers bind their activations when built
        if family == "hgrn2":
            ref = fla.models.HGRN2ForCausalLM(fla.models.HGRN2Config(
                hidden_size=d, num_hidden_layers=layers, vocab_size=vocab, expand_ratio=16 if small else 64)).train()
            ours = from_fla(ref).train()
        else:
            head_dim = 16 if small else 64
            config = fla.models.RWKV6Config(
                hidden_size=d, num_hidden_layers=layers, num_heads=d // head_dim, expand_k=1, expand_v=1,
                vocab_size=vocab, proj_low_rank_dim=8 if small else 32, gate_low_rank_dim=16 if small else 64,
                intermediate_size=int(3.5 * d) // 32 * 32)
            ref = fla.models.RWKV6ForCausalLM(config).train()
            cfg, state_dict = from_fla_rwkv6(config, ref.state_dict())
            ours = build_model(cfg).train()
            ours.load_state_dict(state_dict)

    def on_torch(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        def run(ids: torch.Tensor) -> torch.Tensor:
            with fla_torch_references(family):
                return fn(ids)

        return run

    forward = on_torch(lambda ids: ref(input_ids=ids, use_cache=False).logits)
    with torch.no_grad():
        diff = (forward(ids) - ours(ids)[0]).abs().max().item()
    print(f"# {family}: max |fla - recurlm| logits on the benchmark batch: {diff:.2e}", flush=True)
    return Pair(family, ours, _our_loss(ours), f"fla {type(ref).__name__}, torch references: {describe(family)}",
                on_torch(lambda ids: _ce(ref(input_ids=ids, use_cache=False).logits, ids)), forward,
                lambda: list(ref.parameters()))


def train_step(loss_fn: Callable[[torch.Tensor], torch.Tensor], params: Callable[[], list], ids,
               autocast: torch.dtype | None = None) -> Callable[[], None]:
    """One training step's forward + backward; with ``autocast`` the forward and loss run inside
    ``torch.autocast("cpu", autocast)`` and the backward outside, PyTorch's AMP recipe."""
    def step() -> None:
        for p in params():
            p.grad = None
        with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            loss = loss_fn(ids)
        loss.backward()

    return step


def matmul_flops(step: Callable[[], None]) -> int:
    """FLOPs of the matmuls (and attention) that one call of ``step`` runs, forward and backward."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def decode_loop(model, tokens: list[int]) -> Callable[[], None]:
    def run() -> None:
        state = model.init_state(1)
        for t in tokens:
            _, state = model.step(torch.tensor([t]), state)

    return run


def decode_step_memory(model, tokens: list[int]) -> tuple[int, int]:
    """Peak tensor bytes of one ``step`` after 1 token and after len(tokens) tokens."""
    with torch.no_grad():
        state = model.init_state(1)
        _, state = model.step(torch.tensor([tokens[0]]), state)
        early = peak_memory_bytes(lambda: model.step(torch.tensor([tokens[1]]), state))
        for t in tokens[1:]:
            _, state = model.step(torch.tensor([t]), state)
        late = peak_memory_bytes(lambda: model.step(torch.tensor([tokens[0]]), state))
    return early, late


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny configs, T = 256")
    parser.add_argument("--families", default="griffin,hawk,xlstm,rwkv7,hgrn2,rwkv6")
    parser.add_argument("--seq-len", type=int, default=None, help="T (default 2048; quick 256)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds, best kept (default 3; quick 2)")
    parser.add_argument("--decode-tokens", type=int, default=None, help="default 256; quick 64")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (see common.set_threads)")
    parser.add_argument("--autocast", choices=["bf16"], default=None,
                        help="training steps under CPU bf16 autocast, both models (default: float32)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    quick = args.quick
    T = args.seq_len or (256 if quick else 2048)
    B = args.batch
    repeats = args.repeats or (2 if quick else 3)
    n_decode = args.decode_tokens or (64 if quick else 256)
    d, layers, vocab = (64, 3, 512) if quick else (384, 6, 16384)  # 3: Griffin gets its attention block
    window = 64 if quick else 2048
    threads = set_threads(args.threads)
    torch.manual_seed(0)
    autocast = torch.bfloat16 if args.autocast else None
    precision = "training steps under bf16 autocast" if autocast else "float32"
    print(f"# recurlm models vs references, CPU {precision}, {threads} thread(s), {'quick' if quick else 'full'} mode")
    print(f"# config: d_model={d}, n_layers={layers}, vocab={vocab}, batch {B} x T={T}, Griffin window {window}; "
          f"best of {repeats} interleaved rounds; decode {n_decode} tokens")
    ceiling = matmul_gflops()
    print(f"# float32 matmul ceiling (2048^3, best of 5, this run): {ceiling:.1f} GFLOP/s")

    ids = torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(0))
    decode_tokens = ids[0, :n_decode].tolist()
    train_rows, fwd_rows, decode_rows, skipped = [], [], [], dict(SKIPPED)
    with tempfile.TemporaryDirectory() as workdir:
        for family in [f for f in args.families.split(",") if f]:
            try:
                if family in ("griffin", "hawk"):
                    pair = griffin_pair(family, d, layers, vocab, window)
                elif family == "xlstm":
                    pair = xlstm_pair(d, layers, vocab)
                elif family == "rwkv7":
                    pair = rwkv7_pair(d, layers, vocab, workdir)
                elif family in ("hgrn2", "rwkv6"):
                    pair = fla_pair(family, d, layers, vocab, ids)
                else:
                    continue
            except Exception as e:  # a reference that does not build here is reported, not fatal
                skipped[family] = f"reference failed to build: {type(e).__name__}: {e}"
                continue
            params = f"{pair.ours.num_params() / 1e6:.1f}M"
            ours_train = train_step(pair.ours_loss, lambda: list(pair.ours.parameters()), ids, autocast)
            # the ceiling is a float32 matmul: no floor for bf16 steps
            floor = matmul_flops(ours_train) / (ceiling * 1e9) if autocast is None else None
            if pair.ref_loss is not None:
                ref_train = train_step(pair.ref_loss, pair.ref_params, ids, autocast)
                t = best_times({"ours": ours_train, "ref": ref_train}, repeats=repeats)
                train_rows.append([family, params, pair.ref_name, f"{B * T / t['ref']:.0f}", f"{B * T / t['ours']:.0f}",
                                   fmt_ratio(t["ref"] / t["ours"]), fmt_time(floor), fmt_ratio(floor and t["ref"] / floor),
                                   fmt_bytes(peak_memory_bytes(ref_train)), fmt_bytes(peak_memory_bytes(ours_train))])
            else:
                t = best_times({"ours": ours_train}, repeats=repeats)
                train_rows.append([family, params, pair.ref_name + " (cannot train)", "-", f"{B * T / t['ours']:.0f}",
                                   "-", fmt_time(floor), "-", "-", fmt_bytes(peak_memory_bytes(ours_train))])
            with torch.no_grad():
                t = best_times({"ours": lambda: pair.ours(ids[:1]), "ref": lambda: pair.ref_forward(ids[:1])},
                               repeats=repeats)
            fwd_rows.append([family, pair.ref_name, f"{T / t['ref']:.0f}", f"{T / t['ours']:.0f}",
                             fmt_ratio(t["ref"] / t["ours"])])

            pair.ours.eval()
            candidates = {"ours": decode_loop(pair.ours, decode_tokens)}
            if pair.ref_decode is not None:
                candidates["ref"] = lambda: pair.ref_decode(decode_tokens)
            t = best_times(candidates, repeats=repeats)
            early, late = decode_step_memory(pair.ours, decode_tokens)
            ref_tps = n_decode / t["ref"] if "ref" in t else None
            decode_rows.append([family, "-" if ref_tps is None else f"{ref_tps:.0f}", f"{n_decode / t['ours']:.0f}",
                                fmt_ratio(None if ref_tps is None else t["ref"] / t["ours"]),
                                fmt_bytes(pair.ours.state_bytes()), fmt_bytes(early), fmt_bytes(late)])
            print(f"# {family} done", flush=True)

    print_table(["family", "params", "reference", "ref tok/s", "recurlm tok/s", "recurlm / ref", "matmul floor",
                 "ref / floor", "ref peak mem", "recurlm peak mem"], train_rows,
                title=f"training step (fwd+bwd), batch {B} x T={T} (target: recurlm / ref >= 1.5x)")
    print_table(["family", "reference", "ref tok/s", "recurlm tok/s", "recurlm / ref"], fwd_rows,
                title=f"forward only (no grad), 1 x T={T}")
    print_table(["family", "ref tok/s", "recurlm tok/s", "recurlm / ref", "state / sequence",
                 "step peak mem @1", f"step peak mem @{n_decode}"], decode_rows,
                title=f"decode, batch 1, {n_decode} tokens, recurlm model.step with O(1) state")
    for family, reason in skipped.items():
        print(f"# skipped {family}: {reason}")


if __name__ == "__main__":
    main()
