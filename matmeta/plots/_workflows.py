"""Figures of the adapt and screen workflows: support parity, adapted vs initial, ranked
candidates with their intervals. Built on :class:`matplotlib.figure.Figure`; each function saves
atomically to ``path`` (and returns it), or returns the figure when no path is given."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from matmeta.plots._common import save_figure

__all__ = ["plot_adaptation", "plot_candidates", "plot_support_parity"]


def _done(fig: Figure, path: str | os.PathLike | None) -> Path | Figure:
    """Save to ``path`` atomically and return it, or return the figure when no path is given."""
    return fig if path is None else save_figure(fig, path)


def _title(ax, text: str) -> None:
    ax.set_title("\n".join(textwrap.wrap(text, 60)), fontsize=10)


def plot_support_parity(fit: pd.DataFrame, target: str, path: str | os.PathLike | None = None
                        ) -> Path | Figure:
    """Measured vs predicted on the support rows: fitted (in-support) and, when present,
    leave-one-out, with the diagonal.

    Example:
        >>> plot_support_parity(adapted.fit, adapted.target, "support_parity.png")
    """
    fig = Figure(figsize=(4.8, 4.4))
    ax = fig.add_subplot()
    y = fit[target].to_numpy(dtype=float)
    fitted = fit[f"{target}_fitted"].to_numpy(dtype=float)
    if f"{target}_fitted_low90" in fit.columns:
        low = fit[f"{target}_fitted_low90"].to_numpy(dtype=float)
        high = fit[f"{target}_fitted_high90"].to_numpy(dtype=float)
        ax.errorbar(y, fitted, yerr=[fitted - low, high - fitted], fmt="o", ms=5, capsize=2,
                    label="adapted (90% interval)")
    else:
        ax.plot(y, fitted, "o", ms=5, label="adapted (fitted)")
    values = [y, fitted]
    if f"{target}_loo" in fit.columns:
        loo = fit[f"{target}_loo"].to_numpy(dtype=float)
        ax.plot(y, loo, "s", ms=5, mfc="none", label="leave-one-out")
        values.append(loo)
    lo, hi = float(np.nanmin(np.concatenate(values))), float(np.nanmax(np.concatenate(values)))
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8)
    ax.set_xlabel(f"measured {target}")
    ax.set_ylabel(f"predicted {target}")
    ax.legend(fontsize=8)
    _title(ax, f"Support set: {len(fit)} rows")
    return _done(fig, path)


def plot_adaptation(fit: pd.DataFrame, target: str, path: str | os.PathLike | None = None
                    ) -> Path | Figure:
    """Each support row: measured value, the meta-learned initial prediction and the adapted
    prediction, joined by an arrow (how far adaptation moved it).

    Example:
        >>> plot_adaptation(adapted.fit, adapted.target, "adapted_vs_initial.png")
    """
    fig = Figure(figsize=(max(4.8, 0.35 * len(fit) + 2), 4.2))
    ax = fig.add_subplot()
    x = np.arange(len(fit))
    init = fit[f"{target}_meta_init"].to_numpy(dtype=float)
    fitted = fit[f"{target}_fitted"].to_numpy(dtype=float)
    ax.plot(x, fit[target].to_numpy(dtype=float), "k*", ms=9, label="measured")
    ax.plot(x, init, "o", mfc="none", label="meta-learned initial")
    ax.plot(x, fitted, "o", label="adapted")
    for xi, a, b in zip(x, init, fitted, strict=True):
        ax.annotate("", xy=(xi, b), xytext=(xi, a), arrowprops={"arrowstyle": "->", "lw": 0.8})
    ax.set_xticks(x)
    labels = [str(s)[:18] for s in fit["id"]]
    if "row" in fit.columns:
        labels = [f"{lab} (row {r})" for lab, r in zip(labels, fit["row"], strict=True)]
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(target)
    ax.legend(fontsize=8)
    _title(ax, "Prediction before and after adaptation")
    return _done(fig, path)


def plot_candidates(ranked: pd.DataFrame, target: str, path: str | os.PathLike | None = None,
                    top: int = 30, label_columns: Sequence[str] = ()) -> Path | Figure:
    """The best ``top`` candidates by rank: predicted mean with its 90% interval when present.

    Example:
        >>> plot_candidates(ranked, "yield_strength_MPa", "ranked.png",
        ...                 label_columns=["test_temperature_C"])

    ``label_columns``: columns whose values join each candidate's label (process settings that
    tell apart rows of one composition).
    """
    shown = ranked.sort_values("rank").head(top)
    fig = Figure(figsize=(6.4, max(3.0, 0.28 * len(shown) + 1.2)))
    ax = fig.add_subplot()
    y = np.arange(len(shown))[::-1]
    mean = shown[target].to_numpy(dtype=float)
    if f"{target}_low90" in shown.columns:
        low = shown[f"{target}_low90"].to_numpy(dtype=float)
        high = shown[f"{target}_high90"].to_numpy(dtype=float)
        ax.errorbar(mean, y, xerr=[mean - low, high - mean], fmt="o", ms=4, capsize=2,
                    label="mean, 90% interval")
    else:
        ax.plot(mean, y, "o", ms=4, label="prediction")
    if f"{target}_meta_init" in shown.columns:
        ax.plot(shown[f"{target}_meta_init"].to_numpy(dtype=float), y, "x", ms=4,
                color="0.5", label="meta-learned initial")
    ax.set_yticks(y)
    extra = [c for c in label_columns if c in shown.columns]
    labels = []
    for _, row in shown.iterrows():
        more = ", ".join(f"{row[c]:g}" if isinstance(row[c], (int, float)) else str(row[c])
                         for c in extra)
        labels.append(f"{int(row['rank'])}. {str(row['id'])[:24]}" + (f" ({more})" if more
                                                                         else ""))
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xlabel(target)
    ax.legend(fontsize=8)
    goal = ranked.attrs.get("goal", "max")
    _title(ax, f"Top {len(shown)} of {len(ranked)} candidates (goal: {goal})")
    return _done(fig, path)
