"""The ``import`` and ``export-hf`` subcommands of ``recurlm-convert`` (``recurlm.train.convert``).

    recurlm-convert import <dir | file> --out <export dir> [--format auto|<name>] [--tokenizer FILE]
    recurlm-convert export-hf <run dir | checkpoint | export> --out <dir> [--format <name>]
                              [--max-shard-size 5GB]

Formats: ``recurlm.models.convert.formats.FORMATS`` (``--format auto`` reads config.json's
``model_type``, or the tensor names of a file without one). ``export-hf`` picks the family's
format unless told (griffin/hawk: hf-recurrentgemma, xlstm: hf-xlstm, rwkv7: fla-rwkv7, rwkv6:
fla-rwkv6, hgrn2: fla-hgrn2). Both write into a temporary directory renamed to ``--out`` when
complete: after an error nothing is left there.
"""
from __future__ import annotations

import argparse
import re
import sys


def parse_size(text: str) -> int:
    """ "5GB", "200MB", "64kB" or a byte count -> bytes (decimal units, as transformers)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)[bB]?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 5GB, 200MB, 1000000)")
    scale = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}[match.group(2).lower()]
    return int(float(match.group(1)) * scale)


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    from recurlm.models.convert.formats import FORMATS

    imp = sub.add_parser("import", help="another project's checkpoint -> a recurlm export")
    imp.add_argument("source", help="a directory (config.json + weights) or a weights file (.pth, .safetensors)")
    imp.add_argument("--out", required=True, help="output export directory (must not exist or be empty)")
    imp.add_argument("--format", default="auto", choices=["auto", *FORMATS], help="source format (default auto)")
    imp.add_argument("--tokenizer", default=None,
                     help="SentencePiece model to include (default: the source's tokenizer.model, if any)")
    exp = sub.add_parser("export-hf", help="a recurlm model -> a directory another project's loader reads")
    exp.add_argument("checkpoint", help="a run directory, a checkpoint or an export directory")
    exp.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    exp.add_argument("--format", default=None, choices=list(FORMATS), help="target format (default: the family's)")
    exp.add_argument("--max-shard-size", type=parse_size, default=parse_size("5GB"),
                     help="largest safetensors shard (default 5GB; more shards get model.safetensors.index.json)")


def run(args: argparse.Namespace) -> int:
    from recurlm.models.convert.formats import export_checkpoint, import_checkpoint
    from recurlm.models.convert.io import ConversionError
    from recurlm.models.checkpoint_files import CheckpointError

    try:
        if args.command == "import":
            print(import_checkpoint(args.source, args.out, args.format, args.tokenizer))
        else:
            print(export_checkpoint(args.checkpoint, args.out, args.format, args.max_shard_size))
    except (ConversionError, CheckpointError, ValueError, FileNotFoundError) as err:
        print(f"recurlm-convert {args.command}: {err}", file=sys.stderr)
        return 2
    return 0
