"""Figures of supervised training: parity plot and loss curves."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from matmeta.plots._common import save_figure

__all__ = ["parity_plot", "loss_curves_plot", "save_figure"]


def parity_plot(sets: Mapping[str, tuple[Sequence[float], Sequence[float]]], *,
                target: str = "target", log: bool = False,
                metrics: Mapping[str, Mapping[str, float]] | None = None,
                path: str | os.PathLike | None = None) -> Any:
    """Predicted against true values, one colour per split, with the y = x line.

    Example:
        >>> fig = parity_plot({"test": (y_true, y_pred)}, target="bulk_modulus_GPa", log=True,
        ...                   path="parity.png")

    Args:
        sets: split name -> (true, predicted) in the target's units.
        target: axis label (the target's name with its units).
        log: logarithmic axes (for a log-transformed target such as a modulus).
        metrics: split name -> {"mae", "rmse", "r2"} shown in the legend.
        path: where to save the figure (atomically); None only returns it.

    Returns:
        The ``matplotlib.figure.Figure``.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 5.0))
    ax = fig.add_subplot()
    colours = {"train": "#9e9e9e", "val": "#1f77b4", "test": "#d62728"}
    lo, hi = np.inf, -np.inf
    for name, (t, p) in sets.items():
        t, p = np.asarray(t, dtype=float), np.asarray(p, dtype=float)
        if t.size == 0:
            continue
        label = f"{name} (n={t.size})"
        if metrics and name in metrics:
            m = metrics[name]
            label += f": MAE {m['mae']:.3g}, R² {m['r2']:.3f}"
        ax.scatter(t, p, s=9 if name == "train" else 14, alpha=0.35 if name == "train" else 0.8,
                   color=colours.get(name), label=label, edgecolors="none")
        lo = min(lo, t.min(), p.min())
        hi = max(hi, t.max(), p.max())
    if np.isfinite(lo):
        if log:
            lo = max(lo, 1e-12)
            ax.set_xscale("log")
            ax.set_yscale("log")
            pad = (hi / lo) ** 0.03
            lo, hi = lo / pad, hi * pad
        else:
            pad = 0.03 * (hi - lo or 1.0)
            lo, hi = lo - pad, hi + pad
        ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, ls="--")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
    ax.set_xlabel(f"true {target}")
    ax.set_ylabel(f"predicted {target}")
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    ax.set_title("parity")
    if path is not None:
        save_figure(fig, path)
    return fig


def loss_curves_plot(history: Mapping[str, Sequence[float]], *, loss: str = "mse",
                     best_epoch: int | None = None,
                     path: str | os.PathLike | None = None) -> Any:
    """Training and validation loss per epoch (log scale), with the kept epoch marked.

    Example:
        >>> fig = loss_curves_plot(result.history, best_epoch=result.best_epoch, path="loss.png")

    Args:
        history: ``epoch``, ``train_loss``, ``val_loss`` lists (as in ``TrainResult.history``).
        loss: the loss's name for the axis label.
        best_epoch: the epoch whose parameters were kept (a vertical line).
        path: where to save the figure (atomically); None only returns it.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.add_subplot()
    epochs = np.asarray(history["epoch"], dtype=float)
    ax.plot(epochs, history["train_loss"], label="train", color="#555555")
    if "val_loss" in history and len(history["val_loss"]):
        ax.plot(epochs, history["val_loss"], label="validation", color="#1f77b4")
    if best_epoch is not None and best_epoch > 0:
        ax.axvline(best_epoch, color="#d62728", lw=0.8, ls="--", label=f"kept (epoch {best_epoch})")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{loss} loss (transformed target)")
    ax.legend(frameon=False)
    if path is not None:
        save_figure(fig, path)
    return fig
