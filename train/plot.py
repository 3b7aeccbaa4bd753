"""Plot a run's training and validation loss: ``python -m recurlm.train.plot <run_dir> [out.png]``."""
from __future__ import annotations

import json
import os
import sys


def plot_run(run_dir: str, out: str | None = None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    # float(): metrics.jsonl writes non-finite values as the strings "nan" / "inf"
    train = [(r["tokens"], float(r["loss"])) for r in records if "loss" in r]
    valid = [(r["tokens"], float(r["val_loss"])) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", alpha=0.6)
    if valid:
        ax.plot(*zip(*valid), "o-", label="validation loss")
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(os.path.basename(os.path.abspath(run_dir)))
    ax.grid(alpha=0.3)
    ax.legend()
    out = out or os.path.join(run_dir, "loss.png")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    print(plot_run(*sys.argv[1:]))
