"""``recurlm-convert``: move weights between training checkpoints, exports and other formats.

    recurlm-convert export <run dir | checkpoint> [--out DIR]
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recurlm-convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="checkpoint (any ZeRO stage) → safetensors + config directory")
    export.add_argument("checkpoint", help="a run directory, its checkpoints/ directory, or one checkpoint")
    export.add_argument("--out", default=None, help="output directory (default <checkpoint>/export)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "export":
        from recurlm.train.checkpoint import CheckpointError
        from recurlm.train.export import export_checkpoint

        try:
            print(export_checkpoint(args.checkpoint, args.out))
        except CheckpointError as err:
            print(f"recurlm-convert: {err}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
