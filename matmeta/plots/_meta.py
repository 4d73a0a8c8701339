"""Figures of meta-training: running meta-train and meta-validation losses."""

from __future__ import annotations

import os
from collections.abc import Sequence

from matmeta.plots._common import save_figure

__all__ = ["plot_meta_history"]


def plot_meta_history(history: Sequence[dict], path: str | os.PathLike | None = None,
                      title: str = "meta-training", smooth: int = 20):
    """Plot query loss after adaptation against meta-step (train: running mean; validation).

    Example:
        >>> fig = plot_meta_history(result.history, "meta.png")

    Args:
        history: ``MetaResult.history`` (dicts with ``step``, ``train_loss``, maybe ``val_loss``).
        path: PNG to write atomically (None: only return the figure).
        smooth: window of the running mean over meta-train losses (meta-batches are noisy).

    Returns:
        The :class:`matplotlib.figure.Figure`.
    """
    from matplotlib.figure import Figure

    steps = [h["step"] for h in history]
    train = [h["train_loss"] for h in history]
    run = []
    acc = 0.0
    for i, v in enumerate(train):
        acc += v
        if i >= smooth:
            acc -= train[i - smooth]
        run.append(acc / min(i + 1, smooth))
    fig = Figure(figsize=(6, 4), dpi=120)
    ax = fig.add_subplot()
    if steps:
        ax.plot(steps, train, color="0.8", lw=0.8, label="meta-train (each meta-batch)")
        ax.plot(steps, run, color="C0", label=f"meta-train (running mean of {smooth})")
    val = [(h["step"], h["val_loss"]) for h in history if "val_loss" in h]
    if val:
        ax.plot(*zip(*val, strict=True), "o-", color="C1", ms=3, label="meta-validation")
    positive = all(v > 0 for v in train) and all(v > 0 for _, v in val)
    if steps and positive:
        ax.set_yscale("log")
    ax.set_xlabel("meta-step")
    ax.set_ylabel("query loss after adaptation (MSE, model target space)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig
