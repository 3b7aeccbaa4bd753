"""``recurlm-convert``: move weights between training checkpoints, exports and other formats.

    recurlm-convert export <run dir | checkpoint> [--out DIR]
    recurlm-convert expand-state <run dir | checkpoint | export> --out DIR \
        [--method reinit|inherit] [--layers every:6|all|<i,j,...>] [--merge-heads all|<f>] [--factor f]
    recurlm-convert import <dir | file> --out DIR [--format auto|...]       (recurlm.models.convert.cli)
    recurlm-convert export-hf <run dir | checkpoint | export> --out DIR [--format ...]

``expand-state`` (recurlm.models.expand_state) writes an export whose recurrent state is larger in
the selected layers, as StateX (Shen et al., 2025) does by default: one expandable layer in six
(always the last), its token mixer freshly initialised (``--method reinit``), and for
linear-attention families all heads of that layer merged into one (``--merge-heads all``).
``--method inherit`` (the paper's ablation) keeps the trained weights, mapped onto the larger
state. Griffin/Hawk add ``--factor`` sub-states per RG-LRU channel; Titans' deep memory gets
``--factor`` times the hidden units (default 2). It prints how far the logits moved on a batch of
text (max / mean |diff|, KL, loss before and after; also saved as ``<out>/expand_state.json``), and
is meant to be followed by ``recurlm-train recipe=state_expansion recipe.init_from=<out>``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import sysconfig
from typing import Sequence

import torch

from recurlm.data.tokenizer import Tokenizer
from recurlm.models.checkpoint_files import CheckpointError
from recurlm.models.convert.cli import add_subcommands, run
from recurlm.models.expand_state import expand_state, logit_change, merges_heads
from recurlm.models.pretrained import export_checkpoint, load_for_inference, save_pretrained


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recurlm-convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="checkpoint (any ZeRO stage) → safetensors + config directory")
    export.add_argument("checkpoint", help="a run directory, its checkpoints/ directory, or one checkpoint")
    export.add_argument("--out", default=None, help="output directory (default <checkpoint>/export)")
    expand = sub.add_parser("expand-state", help="a trained model -> an export with a larger recurrent state")
    expand.add_argument("checkpoint", help="a run directory, a checkpoint or an export directory")
    expand.add_argument("--method", choices=("reinit", "inherit"), default="reinit",
                        help="reinit: fresh token mixers in the expanded layers (StateX, default); "
                             "inherit: keep the trained weights (the paper's ablation)")
    expand.add_argument("--layers", default="every:6",
                        help="every:k (every k-th expandable layer from the last; default every:6), all, "
                             "or comma-separated indices")
    expand.add_argument("--merge-heads", default=None,
                        help="linear-attention families: 'all' (one head per layer, the paper's choice and the "
                             "default) or a number of adjacent heads to merge")
    expand.add_argument("--factor", type=int, default=None,
                        help="state growth per expanded layer for Griffin/Hawk sub-states and Titans' deep "
                             "memory (default 2); for head-merging families the same as --merge-heads <f>")
    expand.add_argument("--out", required=True, help="output export directory")
    expand.add_argument("--text", default=None,
                        help="text file the logit change is measured on (default: a few stdlib modules)")
    expand.add_argument("--batch-size", type=int, default=4, help="rows of the measurement batch")
    expand.add_argument("--seq-len", type=int, default=256, help="tokens per row of the measurement batch")
    expand.add_argument("--seed", type=int, default=0,
                        help="seed of the new parameters (Griffin/Hawk decays, Titans memory units)")
    add_subcommands(sub)
    return parser


def measurement_batch(tokenizer_path: str | None, vocab_size: int, text_path: str | None, batch_size: int,
                      seq_len: int):
    """input_ids [B, T]: the text (default: the stdlib modules in STDLIB_SAMPLE) tokenized and cut
    into rows; uniform random tokens when the model has no tokenizer."""
    if tokenizer_path is None:
        return torch.randint(0, vocab_size, (batch_size, seq_len), generator=torch.Generator().manual_seed(0))
    paths = [text_path] if text_path else [os.path.join(sysconfig.get_paths()["stdlib"], name) for name in STDLIB_SAMPLE]
    ids: list[int] = []
    tokenizer = Tokenizer(tokenizer_path)
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            ids += tokenizer.encode(f.read())
    need = batch_size * seq_len
    ids = (ids * (need // max(len(ids), 1) + 1))[:need]
    return torch.tensor(ids, dtype=torch.long).view(batch_size, seq_len)


STDLIB_SAMPLE = ("argparse.py", "inspect.py", "typing.py")


def growth_factor(cfg, merge_heads: str | None, factor: int | None) -> int | str:
    """The ``factor`` argument of ``expand_state`` from ``--merge-heads`` / ``--factor``."""
    if not merges_heads(cfg):
        if merge_heads is not None:
            raise ValueError(f"--merge-heads applies to head-merging families (linear attention, Titans with a "
                             f"linear memory), not to {cfg.family} with these settings; use --factor")
        return factor or 2
    if merge_heads is not None and factor is not None and str(factor) != merge_heads:
        raise ValueError(f"--merge-heads {merge_heads} and --factor {factor} disagree; give one")
    if merge_heads is None:
        return factor or "all"
    return "all" if merge_heads == "all" else int(merge_heads)


def expand_state_command(args) -> int:
    model, tokenizer, info = load_for_inference(args.checkpoint)
    factor = growth_factor(model.config, args.merge_heads, args.factor)
    expanded = expand_state(model, factor, seed=args.seed, method=args.method, layers=args.layers)
    ids = measurement_batch(tokenizer, model.config.vocab_size, args.text, args.batch_size, args.seq_len)
    change = logit_change(model, expanded, ids)
    save_pretrained(args.out, expanded.config, expanded.state_dict(), tokenizer,
                    {**info, "expanded_from": os.path.abspath(args.checkpoint), "state_factor": factor,
                     "method": args.method, "layers": args.layers,
                     "logit_change": change})
    with open(os.path.join(args.out, "expand_state.json"), "w") as f:
        json.dump(change, f, indent=1)
    print(f"{model.config.family}: state {change['state_bytes_before']:,} -> {change['state_bytes_after']:,} bytes "
          f"per sequence, parameters {change['params_before']:,} -> {change['params_after']:,} "
          f"({100 * (change['params_after'] / change['params_before'] - 1):+.2f}%)")
    print(f"logit change on {change['tokens']} tokens: max |diff| {change['max_abs_logit_diff']:.4g}, "
          f"mean |diff| {change['mean_abs_logit_diff']:.4g}, KL {change['kl']:.4g} nats/token, "
          f"loss {change['loss_before']:.4f} -> {change['loss_after']:.4f}")
    print(args.out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "export":
        try:
            print(export_checkpoint(args.checkpoint, args.out))
        except CheckpointError as err:
            print(f"recurlm-convert: {err}", file=sys.stderr)
            return 2
    elif args.command in ("import", "export-hf"):
        return run(args)
    elif args.command == "expand-state":
        try:
            return expand_state_command(args)
        except (CheckpointError, NotImplementedError, ValueError) as err:
            print(f"recurlm-convert: {err}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
