"""``python -m recurlm.configs.summary``: what a model configuration costs, from a composed job.

    python -m recurlm.configs.summary model=hgrn2 model.size=1b
    python -m recurlm.configs.summary model=griffin model.size=14b model.lru_width=16384 train.seq_len=4096
    python -m recurlm.configs.summary --presets [family ...]   # every preset vs the papers' counts

The counting (parameters, recurrent state, FLOPs, built on the meta device) is
``recurlm.models.summary``'s; this command lives with the configs because it composes a job
(``model.*`` overrides, ``train.seq_len``) the way ``recurlm-train`` does.
"""
from __future__ import annotations

import sys
from typing import Sequence

from recurlm.configs import ConfigError, compose
from recurlm.models.registry import FAMILIES
from recurlm.models.summary import format_preset_table, format_summary, preset_rows, summarize


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0
    if args[:1] == ["--presets"]:
        unknown = sorted(set(args[1:]) - set(FAMILIES))
        if unknown:
            print(f"recurlm.configs.summary: unknown families {unknown}; choose from {sorted(FAMILIES)}", file=sys.stderr)
            return 2
        print(format_preset_table(preset_rows(args[1:] or None)))
        return 0
    try:
        job = compose(args)
    except ConfigError as err:
        print(f"recurlm.configs.summary: configuration error:\n{err}", file=sys.stderr)
        return 2
    print(format_summary(summarize(job.model, job.train.seq_len)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
