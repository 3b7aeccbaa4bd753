"""PNG plots of evaluation curves (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_loss_by_position(curve: dict, path: str, title: str) -> str:
    """Loss vs position (log x): per-bucket means, a light per-position trace, training length marked."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    positions = np.arange(1, len(curve["position_loss"]) + 1)
    window = max(1, len(positions) // 200)
    smooth = np.convolve(curve["position_loss"], np.ones(window) / window, mode="same")
    ax.plot(positions, smooth, color="tab:blue", alpha=0.25, lw=0.8, label="per position (smoothed)")
    edges = np.asarray(curve["edges"])
    centers = np.sqrt(edges[:-1] * np.maximum(edges[1:] - 1, edges[:-1]))
    ax.plot(centers, curve["bucket_loss"], "o-", color="tab:blue", lw=2, ms=4, label="bucket mean")
    train_len = curve["train_seq_len"]
    ax.axvline(train_len, color="tab:red", ls="--", lw=1.5)
    ax.text(train_len, ax.get_ylim()[1], f" training length {train_len}", color="tab:red", va="top", fontsize=9)
    ax.set_xscale("log")
    ax.set_xlabel("position (tokens of context)")
    ax.set_ylabel("next-token loss (nats)")
    ax.set_title(f"{title}\n{curve['rows']} sequences ({curve['source']}), state carried across chunks", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def plot_passkey(curve: dict, path: str, title: str) -> str:
    """Heatmap of accuracy: depth (rows) x context length (columns), values written in the cells."""
    grid = np.asarray(curve["accuracy"])
    fig, ax = plt.subplots(figsize=(1.2 * len(curve["lengths"]) + 2.5, 0.55 * len(curve["depths"]) + 1.8))
    image = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(curve["lengths"])), [str(n) for n in curve["lengths"]])
    ax.set_yticks(range(len(curve["depths"])), [f"{d:.0%}" for d in curve["depths"]])
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=9)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("key depth")
    ax.set_title(f"{title}: passkey accuracy", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046)
    return _save(fig, path)


def plot_mqar(curve: dict, path: str, title: str) -> str:
    """Accuracy vs number of pairs, and vs state bytes per stored pair (the recall budget)."""
    pairs = np.asarray(curve["num_pairs"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
    left.plot(pairs, curve["accuracy"], "o-", lw=2)
    left.set_xscale("log", base=2)
    left.set_xlabel("key-value pairs")
    right.plot(curve["state_bytes"] / pairs, curve["accuracy"], "s-", color="tab:purple", lw=2)
    right.set_xscale("log", base=2)
    right.set_xlabel("state bytes per pair")
    for ax in (left, right):
        ax.set_ylim(-0.03, 1.03)
        ax.set_ylabel("recall accuracy")
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"{title}: MQAR (state {curve['state_bytes']:,} bytes per sequence)", fontsize=10)
    return _save(fig, path)


def plot_state_tracking(curve: dict, path: str, title: str) -> str:
    """Accuracy vs sequence length per task, chance level dashed."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown"]
    for (task, accs), color in zip(curve["tasks"].items(), colors):
        ax.plot(curve["lengths"], accs, "o-", color=color, lw=2, label=task)
        ax.axhline(curve["chance"][task], color=color, ls=":", lw=1, label=f"{task} chance")
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("sequence length (digits)")
    ax.set_ylabel("accuracy of the final answer")
    ax.set_title(f"{title}: state tracking", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_effrem(curve: dict, path: str, title: str) -> str:
    """EffRem_T(t) against t: how much the tokens before t still move the prediction at T."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(curve["t"], curve["effrem"], "o-", lw=2, ms=3)
    if curve.get("train_seq_len"):
        ax.axvline(curve["context"] - curve["train_seq_len"], color="tab:red", ls="--", lw=1.2,
                   label="last training length of context")
        ax.legend(fontsize=8)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("t (tokens x_0..x_t-1 removed)")
    ax.set_ylabel("EffRem = TV(q(.|x_0:T), q(.|x_t:T))")
    ax.set_title(f"{title}: effective remembrance, T = {curve['context']} ({curve['rows']} rows)", fontsize=10)
    ax.grid(True, alpha=0.3)
    return _save(fig, path)
