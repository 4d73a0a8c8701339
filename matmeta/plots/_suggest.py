"""Figures of "what to measure next": ranked candidates, and error against measurements added."""

from __future__ import annotations

import os
import textwrap

import numpy as np
import pandas as pd

from matmeta.plots._common import save_figure

__all__ = ["plot_suggestion_curves", "plot_suggestions"]

# score columns of matmeta.suggest's tables, named after the strategy and the target's units
_SCORES = ("expected_variance_reduction_", "predictive_variance_", "member_variance_")


def plot_suggestions(table: pd.DataFrame, target: str, path: str | os.PathLike | None = None,
                     top: int = 30, title: str | None = None):
    """Candidates ranked for the next measurement: prediction with its 90% interval, and the
    strategy's score, the suggested batch highlighted.

    Example:
        >>> fig = plot_suggestions(ranked, "yield_strength_MPa", "next.png")

    Args:
        table: the ranked table of :meth:`matmeta.suggest.Suggestions.table` (columns ``rank``,
            ``in_batch``, the score (``score`` or the named variance column),
            ``predicted_<target>``, ``lower90_<target>``, ``upper90_<target>``,
            ``in_target_region``).
        target: the target's column name (units in it).
        path: PNG to write atomically (None: only return the figure).
        top: how many of the best-ranked candidates to show.
        title: figure title.

    Returns:
        The :class:`matplotlib.figure.Figure`.
    """
    from matplotlib.figure import Figure

    rows = table.head(int(top))
    labels = [str(v) for v in rows[_label_column(rows)]]
    n = len(rows)
    fig = Figure(figsize=(9.0, 1.2 + 0.22 * max(n, 4)), dpi=120)
    ax_pred, ax_score = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [3, 2]})
    y = np.arange(n)[::-1]
    pred = rows[f"predicted_{target}"].to_numpy(dtype=float)
    lo = rows[f"lower90_{target}"].to_numpy(dtype=float)
    hi = rows[f"upper90_{target}"].to_numpy(dtype=float)
    batch = rows["in_batch"].to_numpy(dtype=bool)
    region = rows["in_target_region"].to_numpy(dtype=bool)
    colors = np.where(batch, "C3", np.where(region, "C0", "0.55"))
    ax_pred.hlines(y, lo, hi, colors=colors, lw=2)
    ax_pred.scatter(pred, y, c=colors, s=18, zorder=3)
    ax_pred.set_yticks(y)
    ax_pred.set_yticklabels(labels, fontsize=7)
    ax_pred.set_xlabel(f"predicted {target} with 90% interval")
    score_col = next((c for c in rows.columns if c == "score" or c.startswith(_SCORES)), None)
    score = (rows[score_col].to_numpy(dtype=float) if score_col is not None
             else np.full(n, np.nan))
    if np.isfinite(score).any():
        ax_score.barh(y, np.nan_to_num(score), color=colors)
        ax_score.set_title(score_col.replace("_", " ") if score_col != "score"
                           else "score of one more measurement", fontsize=8)
    else:
        ax_score.text(0.5, 0.5, "random order: no score", ha="center", va="center",
                      transform=ax_score.transAxes)
    ax_score.tick_params(labelleft=False)
    handles = [ax_pred.scatter([], [], c=c, s=18, label=lab) for c, lab in
               (("C3", "suggested batch"), ("C0", "target region"), ("0.55", "other"))]
    ax_pred.legend(handles=handles, fontsize=7, loc="best")
    fig.suptitle("\n".join(textwrap.wrap(title or f"Next measurements (top {n} of "
                                         f"{len(table)} candidates)", 90)), fontsize=10)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


def _label_column(rows: pd.DataFrame) -> str:
    for col in ("id", "name", "composition", "formula", "candidate"):
        if col in rows.columns:
            return col
    return "rank"


def plot_suggestion_curves(curves: pd.DataFrame, path: str | os.PathLike | None = None,
                           error: str = "MAE", units: str = "",
                           title: str = "Error against measurements added",
                           baseline: str = "random"):
    """Error of the adapted model against the number of measurements, per strategy.

    With columns ``ratio``, ``ratio_low``, ``ratio_high`` (each strategy's error over the
    baseline's on the same families and starts, with an interval that resamples families), a
    second panel shows them: family-to-family spread hides paired differences in the first.

    Example:
        >>> fig = plot_suggestion_curves(curves, "curves.png", units="MPa")

    Args:
        curves: one row per (strategy, measurements): columns ``strategy``, ``measurements``,
            ``error``, and optionally ``ci_low``, ``ci_high`` (drawn as a band) and the ratio
            columns above.
        path: PNG to write atomically (None: only return the figure).
        error, units: the y-axis label.
        title: figure title.
        baseline: the strategy drawn dotted in grey (and the ratios' denominator).

    Returns:
        The :class:`matplotlib.figure.Figure`.
    """
    from matplotlib.figure import Figure

    paired = {"ratio", "ratio_low", "ratio_high"} <= set(curves.columns)
    fig = Figure(figsize=(11.0 if paired else 6.4, 4.4), dpi=120)
    axes = fig.subplots(1, 2) if paired else [fig.add_subplot()]
    for i, (name, rows) in enumerate(curves.groupby("strategy", sort=False)):
        rows = rows.sort_values("measurements")
        x = rows["measurements"].to_numpy(dtype=float)
        ls = ":" if name == baseline else "-"
        color = "0.35" if name == baseline else f"C{i % 10}"
        axes[0].plot(x, rows["error"].to_numpy(dtype=float), ls=ls, marker="o", ms=3,
                     color=color, label=str(name))
        if {"ci_low", "ci_high"} <= set(rows.columns):
            axes[0].fill_between(x, rows["ci_low"].to_numpy(dtype=float),
                                 rows["ci_high"].to_numpy(dtype=float), color=color, alpha=0.07,
                                 lw=0)
        if paired:
            axes[1].plot(x, rows["ratio"].to_numpy(dtype=float), ls=ls, marker="o", ms=3,
                         color=color, label=str(name))
            if name != baseline:
                axes[1].fill_between(x, rows["ratio_low"].to_numpy(dtype=float),
                                     rows["ratio_high"].to_numpy(dtype=float), color=color,
                                     alpha=0.12, lw=0)
    axes[0].set_xlabel("measurements in the support set")
    axes[0].set_ylabel(f"{error}" + (f" ({units})" if units else ""))
    axes[0].legend(fontsize=8)
    if paired:
        axes[1].axhline(1.0, color="0.35", lw=0.8)
        axes[1].set_xlabel("measurements in the support set")
        axes[1].set_ylabel(f"{error} / {baseline}'s {error} (paired, 95% interval)")
    fig.suptitle("\n".join(textwrap.wrap(title, 110 if paired else 70)), fontsize=10)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig
