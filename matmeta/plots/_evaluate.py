"""Figures of k-shot evaluation: error against support size per method, with intervals."""

from __future__ import annotations

import os

import pandas as pd

from matmeta.plots._common import save_figure

__all__ = ["plot_learning_curves"]

_STYLE = {
    "meta": ("C0", "o", "-"), "meta_init": ("C0", "o", ":"), "map": ("C3", "D", "-"),
    "independent": ("C2", "s", "-"), "pretrained": ("0.4", "x", ":"),
    "finetune": ("C1", "^", "-"), "offset": ("C4", "v", "-"), "scratch": ("C5", "P", "--"),
}


def plot_learning_curves(table: pd.DataFrame, path: str | os.PathLike | None = None,
                         title: str = "k-shot evaluation on held-out families"):
    """Plot error against k (support samples per task) for each method, with its interval.

    Example:
        >>> fig = plot_learning_curves(result.table, "evaluate.png")

    Args:
        table: :attr:`EvaluationResult.table` (columns ``k``, ``method``, ``error``, ``ci_low``,
            ``ci_high``, ``metric``, ``units``).
        path: PNG to write atomically (None: only return the figure).

    Returns:
        The :class:`matplotlib.figure.Figure`.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), dpi=120)
    ax = fig.add_subplot()
    methods = list(dict.fromkeys(table["method"])) if len(table) else []
    n = max(len(methods), 1)
    for i, m in enumerate(methods):
        rows = table[table["method"] == m].sort_values("k")
        color, marker, ls = _STYLE.get(m, (f"C{i % 10}", "o", "-"))
        # spread the markers a little so overlapping intervals stay readable
        shift = 1.0 + 0.03 * (i - (n - 1) / 2)
        x = rows["k"].to_numpy(dtype=float) * shift
        y = rows["error"].to_numpy(dtype=float)
        err = [y - rows["ci_low"].to_numpy(dtype=float), rows["ci_high"].to_numpy(dtype=float) - y]
        ax.errorbar(x, y, yerr=err, color=color, marker=marker, ls=ls, ms=4, capsize=2, lw=1.2,
                    label=m)
    if len(table):
        ax.set_xscale("log")
        ks = sorted(set(table["k"].astype(int)))
        ax.set_xticks(ks)
        ax.set_xticklabels([str(k) for k in ks])
        ax.minorticks_off()
        metric = str(table["metric"].iloc[0]).upper()
        units = str(table["units"].iloc[0]) if "units" in table else ""
        ax.set_ylabel(f"{metric} on query samples" + (f" ({units})" if units else "")
                      + ", mean over families")
    else:
        ax.text(0.5, 0.5, "no results", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("k (support samples of the new family)")
    ax.set_title(title + "\n(bars: bootstrap interval resampling families)", fontsize=9)
    if methods:
        ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig
