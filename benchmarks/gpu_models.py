"""The model sections of ``gpu_acceptance.py``: each family trained for a few steps in bf16 under
DeepSpeed ZeRO-2 (tokens/s, MFU, peak memory, loss falls, first-step start-up), host-device
synchronisations per training step by layer type, and decoding with flat memory.
"""
from __future__ import annotations

import contextlib
import time
import warnings
from collections import Counter
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn

from recurlm.models import build_model, to_model_config

TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "hgrn2": {"size": "150m"}, "griffin": {"size": "100m"}, "hawk": {"size": "100m"},
    # RWKV-6 has no preset near 125M: the 0.1B-class shape of RWKV-7's "0.1b" with RWKV-6's mixers
    "rwkv6": {"size": "custom", "d_model": 768, "n_layers": 12, "head_dim": 64, "ffn_hidden": 2688,
              "mix_lora": 32, "decay_lora": 64},
    "rwkv7": {"size": "0.1b"}, "titans_mac": {"size": "170m"}, "titans_mag": {"size": "170m"},
    "titans_mal": {"size": "170m"}, "xlstm": {"size": "125m"},
}
"""The ~125M configuration of every family (size presets of ``configs/model_sizes/``)."""


def model_config(family: str, overrides: dict[str, Any], vocab_size: int):
    return to_model_config({"family": family, "vocab_size": vocab_size, **overrides})


def _job(zero_stage: int, precision: str, seq_len: int, lr: float):
    """A job config for ``build_engine``: the gpu_zero2_bf16-like DeepSpeed node, AdamW at ``lr``."""
    from recurlm.configs import compose

    return compose([f"deepspeed=gpu_zero{zero_stage}_bf16", f"deepspeed.precision={precision}",
                    f"train.seq_len={seq_len}", f"optim.lr={lr}", "schedule=constant", "optim.grad_clip=1.0"])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_family(family: str, overrides: dict[str, Any], steps: int, micro: int, seq_len: int, vocab: int,
                 precision: str, peak_flops: float, device: torch.device) -> dict[str, Any]:
    """``steps`` optimizer steps of one family on a fixed random batch (the loss must fall: the
    model memorises it) through the trainer's ``build_engine`` (DeepSpeed ZeRO-2, one rank)."""
    from recurlm.train.engine import build_engine

    cfg = model_config(family, overrides, vocab)
    engine, model = build_engine(_job(2, precision, seq_len, lr=1e-3), cfg, micro, micro, 1)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (micro, seq_len + 1), generator=generator)
    resets = torch.zeros(micro, seq_len, dtype=torch.bool)
    resets[:, 0], resets[:, seq_len // 2] = True, True  # two documents per row: the varlen paths run
    inputs, labels, resets = (t.to(engine.device) for t in (ids[:, :-1], ids[:, 1:], resets))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses, times = [], []
    for _ in range(steps):
        start = time.perf_counter()
        loss, _ = engine(inputs, resets=resets, labels=labels)
        engine.backward(loss)
        engine.step()
        losses.append(float(loss.detach()))  # one sync per step (as the trainer's loss log)
        _sync(device)
        times.append(time.perf_counter() - start)
    steady = sorted(times[1:])[len(times[1:]) // 2] if len(times) > 1 else times[0]
    tokens_per_s = micro * seq_len / steady
    flops_per_token = 3 * model.flops_per_token(seq_len)
    result = {"family": family, "config": overrides, "params": model.num_params(), "steps": steps,
              "micro_batch": micro, "seq_len": seq_len, "precision": precision,
              "first_step_s": times[0], "steady_step_s": steady, "startup_s": times[0] - steady,
              "tokens_per_s": tokens_per_s, "flops_per_token": flops_per_token,
              "mfu": flops_per_token * tokens_per_s / peak_flops if peak_flops else None,
              "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
              "first_loss": losses[0], "last_loss": losses[-1]}
    tail = losses[-max(1, steps // 5):]
    result["ok"] = all(map(torch.isfinite, torch.tensor(losses))) and sum(tail) / len(tail) < losses[0]
    return result


# -- host-device synchronisations --------------------------------------------------------------
HOST_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "nonzero", "cpu")
"""Tensor methods that read device data on the host; counted on CPU in a dry run, where
``torch.cuda.set_sync_debug_mode`` does not exist."""


@contextlib.contextmanager
def count_syncs(model: nn.Module, device: torch.device) -> Iterator[Counter]:
    """Count host-device synchronisations inside the block, by the type of the innermost block
    (``model.blocks``) running at the time, forward and backward ("outside blocks" otherwise).

    On CUDA: ``torch.cuda.set_sync_debug_mode("warn")`` warns at every synchronising CUDA call;
    the warnings are caught and attributed (warnings raised on autograd's device threads are
    replayed by PyTorch after backward returns, so those land in "outside blocks"). On CPU (dry run): calls of :data:`HOST_READS` on
    tensors are counted instead (the plumbing is the same)."""
    counts: Counter = Counter()
    stack: list[str] = []
    handles = []
    def enter(name: str) -> Callable[..., None]:
        def hook(*_) -> None:  # hooks must return None: a value would replace the block's output
            stack.append(name)
        return hook

    def leave(*_) -> None:
        if stack:
            stack.pop()

    for block in model.blocks:
        name = type(block).__name__
        handles += [block.register_forward_pre_hook(enter(name)), block.register_forward_hook(leave),
                    block.register_full_backward_pre_hook(enter(name)), block.register_full_backward_hook(leave)]

    def record() -> None:
        counts[stack[-1] if stack else "outside blocks"] += 1

    patched = {}
    with warnings.catch_warnings():
        try:
            if device.type == "cuda":
                # called at the synchronising operation itself, so the block stack is current
                show = warnings.showwarning

                def on_warning(message, *args, **kwargs):
                    if "synchroniz" in str(message):
                        record()
                    else:
                        show(message, *args, **kwargs)

                warnings.simplefilter("always")
                warnings.showwarning = on_warning
                torch.cuda.set_sync_debug_mode("warn")
            else:
                for method in HOST_READS:
                    patched[method] = original = getattr(torch.Tensor, method)

                    def wrapper(self, *args, _original=original, **kwargs):
                        record()
                        return _original(self, *args, **kwargs)

                    setattr(torch.Tensor, method, wrapper)
            yield counts
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
            for method, original in patched.items():
                setattr(torch.Tensor, method, original)
            for handle in handles:
                handle.remove()


def syncs_per_step(family: str, overrides: dict[str, Any], micro: int, seq_len: int, vocab: int,
                   dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
    """Host-device synchronisations of one training forward+backward (after a warm-up step, so
    compilation and autotuning are not counted), by block type."""
    model = build_model(model_config(family, overrides, vocab)).to(device=device, dtype=dtype)
    ids = torch.randint(0, vocab, (micro, seq_len), device=device)
    resets = torch.zeros(micro, seq_len, dtype=torch.bool, device=device)
    resets[:, 0], resets[:, seq_len // 2] = True, True

    def step() -> None:
        loss, _ = model(ids, resets=resets, labels=ids)
        loss.backward()

    step()
    _sync(device)
    with count_syncs(model, device) as counts:
        step()
        _sync(device)
    return {"family": family, "syncs_by_block": dict(counts), "total": sum(counts.values()),
            "per_layer": sum(v for k, v in counts.items() if k != "outside blocks") / len(model.blocks),
            "method": "torch.cuda.set_sync_debug_mode('warn')" if device.type == "cuda"
            else f"calls of Tensor.{{{','.join(HOST_READS)}}} (CPU dry run)", "ok": True}


def decode_family(family: str, overrides: dict[str, Any], tokens: int, batches: tuple[int, ...], vocab: int,
                  dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
    """``tokens`` decode steps (``model.step``) at each batch size: tokens/s, and memory that stays
    flat (state bytes, and on CUDA allocated bytes, equal after 1/8 of the steps and at the end)."""
    model = build_model(model_config(family, overrides, vocab)).to(device=device, dtype=dtype).eval()
    result: dict[str, Any] = {"family": family, "tokens": tokens, "batches": {}}
    for batch in batches:
        state = model.init_state(batch, device=device)
        token = torch.zeros(batch, dtype=torch.long, device=device)
        early = None
        _sync(device)
        start = time.perf_counter()
        for i in range(tokens):
            logits, state = model.step(token, state)
            token = logits.argmax(-1)
            if i == tokens // 8:
                _sync(device)
                early = (state.nbytes(), torch.cuda.memory_allocated(device) if device.type == "cuda" else 0)
        _sync(device)
        seconds = time.perf_counter() - start
        late = (state.nbytes(), torch.cuda.memory_allocated(device) if device.type == "cuda" else 0)
        result["batches"][batch] = {"tokens_per_s": batch * tokens / seconds, "state_bytes": late[0],
                                    "allocated_growth_bytes": late[1] - early[1], "flat": late == early}
    result["ok"] = all(b["flat"] for b in result["batches"].values())
    return result
