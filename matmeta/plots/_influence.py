"""Influence figures: a ranked bar chart; a kinetics curve with points sized by influence."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from matmeta.plots._common import save_figure

__all__ = ["plot_influence_bars", "plot_influence_curve", "save_figure"]

HELPFUL = "#2b8cbe"
HARMFUL = "#d7301f"


def _score_column(df: pd.DataFrame, column: str | None) -> str:
    targets = df.attrs.get("targets") or [c for c in df.columns if c not in (
        "sample", "effect", "harm_rank") and not c.startswith("loo:")]
    if column is None:
        column = "query_loss" if "query_loss" in targets else targets[0]
    if column not in df.columns:
        raise KeyError(f"no influence column {column!r}; have {', '.join(targets)}")
    return column


def plot_influence_bars(df: pd.DataFrame, column: str | None = None, top: int | None = 30,
                        path: str | os.PathLike | None = None) -> Figure:
    """Ranked horizontal bar chart of one influence column (helpful blue, harmful red).

    Example:
        >>> df = explain(model, params, support, query, inner=inner, check_loo=True)
        >>> plot_influence_bars(df, path="influence.png")

    Args:
        df: the DataFrame :func:`matmeta.influence.explain` returns.
        column: the target column (default ``query_loss`` when present, else the first).
        top: show at most this many samples, largest |influence| first (None: all).
        path: also save the figure there (atomically).
    """
    column = _score_column(df, column)
    data = df[["sample", column]].copy()
    data["abs"] = data[column].abs()
    data = data.sort_values("abs", ascending=False)
    if top is not None:
        data = data.head(top)
    data = data.iloc[::-1]
    loss_like = column == "query_loss"
    colors = [HELPFUL if v > 0 else HARMFUL for v in data[column]]
    fig = Figure(figsize=(6.5, 0.3 * len(data) + 1.5))
    ax = fig.add_subplot()
    ax.barh(np.arange(len(data)), data[column], color=colors)
    loo_col = f"loo:{column}"
    if loo_col in df.columns:
        loo = df.set_index("sample").loc[data["sample"], loo_col].to_numpy()
        ax.scatter(loo, np.arange(len(data)), marker="|", s=120, color="black", zorder=3,
                   label="exact leave-one-out")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(np.arange(len(data)), [str(s) for s in data["sample"]], fontsize=8)
    ax.axvline(0.0, color="grey", lw=0.8)
    est = df.attrs.get("estimator", "")
    if loss_like:
        ax.set_xlabel("query loss without the sample - with all (positive: helpful, "
                      "negative: harmful)")
    else:
        ax.set_xlabel(f"{column} without the sample - with all")
    title = f"Influence of each support sample ({est})"
    agree = df.attrs.get("agreement", {}).get(column)
    if agree:
        title += f"\nvs LOO: Spearman {agree['spearman']:.2f}, Pearson {agree['pearson']:.2f}"
    ax.set_title(title, fontsize=10)
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_influence_curve(df: pd.DataFrame, time_s: np.ndarray, fraction: np.ndarray,
                         curve_time_s: np.ndarray, curve_fraction: np.ndarray,
                         column: str | None = None, query_time_s: np.ndarray | None = None,
                         query_fraction: np.ndarray | None = None,
                         path: str | os.PathLike | None = None) -> Figure:
    """The adapted kinetics curve with each support measurement sized and coloured by influence.

    The point that bends the fit stands out: marker area grows with |influence|, colour says
    helpful (blue) or harmful (red) on the query loss.

    Example:
        >>> plot_influence_curve(df, t_s, f, grid_s, model.forward(adapted, grid), path="fit.png")

    Args:
        df: the explain() DataFrame (rows in the support order of ``time_s``).
        time_s, fraction: the support measurements (seconds, fraction transformed).
        curve_time_s, curve_fraction: the adapted curve on a grid.
        column: influence column (default ``query_loss`` when present).
        query_time_s, query_fraction: held-out measurements to draw as open circles.
        path: also save the figure there (atomically).
    """
    column = _score_column(df, column)
    score = df[column].to_numpy(dtype=float)
    mag = np.abs(score)
    size = 20 + 300 * (mag / mag.max() if mag.max() > 0 else mag)
    loss_like = column == "query_loss"
    colors = [HELPFUL if v > 0 else HARMFUL for v in score]
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.add_subplot()
    ax.plot(curve_time_s, curve_fraction, color="black", lw=1.5, label="adapted fit")
    ax.scatter(time_s, fraction, s=size, c=colors, alpha=0.8, edgecolors="black",
               linewidths=0.5, zorder=3, label="support (size = |influence|)")
    if query_time_s is not None and query_fraction is not None:
        ax.scatter(query_time_s, query_fraction, s=30, facecolors="none", edgecolors="grey",
                   zorder=2, label="query")
    worst = int(np.argmin(score)) if loss_like else int(np.argmax(mag))
    ax.annotate(str(df["sample"].iloc[worst]), (time_s[worst], fraction[worst]),
                textcoords="offset points", xytext=(8, 8), fontsize=8)
    if np.all(np.asarray(time_s) > 0) and np.all(np.asarray(curve_time_s) > 0):
        ax.set_xscale("log")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("fraction transformed")
    ax.set_title(f"Adapted curve; support coloured by influence on {column} "
                 f"(blue helpful, red harmful)", fontsize=9)
    ax.legend(fontsize=8, loc="best")
    if path is not None:
        save_figure(fig, path)
    return fig
