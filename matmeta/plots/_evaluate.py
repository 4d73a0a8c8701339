"""Figures of k-shot evaluation: error against support size per method, with intervals."""

from __future__ import annotations

import os

import pandas as pd

from matmeta.plots._common import save_figure

__all__ = ["plot_coverage", "plot_learning_curves"]

_STYLE = {
    "meta": ("C0", "o", "-"), "meta_init": ("C0", "o", ":"), "map": ("C3", "D", "-"),
    "independent": ("C2", "s", "-"), "pretrained": ("0.4", "x", ":"),
    "finetune": ("C1", "^", "-"), "offset": ("C4", "v", "-"), "scratch": ("C5", "P", "--"),
    "bayes_linear": ("C6", "o", "-"), "gp": ("C9", "s", "-"),
    "pretrained_bayes_linear": ("C6", "o", ":"), "pretrained_gp": ("C9", "s", ":"),
    "ensemble": ("C8", "*", "-"),
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


def _coverage_by_method(table: pd.DataFrame) -> pd.DataFrame:
    """(k, method) -> coverage_50, coverage_90: a results table as is; a tasks table averaged
    per group, then over groups (as the evaluation's summary does)."""
    cols = ["coverage_50", "coverage_90"]
    if "repeat" in table:
        per_group = table.groupby(["k", "method", "group"])[cols].mean()
        return per_group.groupby(level=[0, 1]).mean().reset_index()
    return table[["k", "method", *cols]]


def plot_coverage(table: pd.DataFrame, path: str | os.PathLike | None = None,
                  title: str = "Calibration on held-out families"):
    """Observed coverage of the central 50% and 90% predictive intervals, per method and k,
    against the nominal level (the diagonal is perfect calibration; below it, overconfident).

    Example:
        >>> fig = plot_coverage(result.table, "coverage.png")     # or result.tasks

    Args:
        table: :attr:`EvaluationResult.table` or ``.tasks`` (columns ``k``, ``method``,
            ``coverage_50``, ``coverage_90``; methods without a predictive std, all NaN, are
            left out).
        path: PNG to write atomically (None: only return the figure).

    Returns:
        The :class:`matplotlib.figure.Figure`.
    """
    from matplotlib.figure import Figure

    cov = _coverage_by_method(table).dropna(subset=["coverage_50", "coverage_90"], how="all")
    fig = Figure(figsize=(5.6, 4.8), dpi=120)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="calibrated")
    ax.fill_between([0.88, 0.92], 0.85, 0.95, color="0.88", zorder=0, lw=0)
    ks = sorted(set(cov["k"].astype(int))) if len(cov) else []
    lines = ["-", "--", ":", "-."]
    for i, m in enumerate(dict.fromkeys(cov["method"])):
        color, marker, _ = _STYLE.get(m, (f"C{i % 10}", "o", "-"))
        for j, k in enumerate(ks):
            row = cov[(cov["method"] == m) & (cov["k"] == k)]
            if row.empty:
                continue
            y = [float(row["coverage_50"].iloc[0]), float(row["coverage_90"].iloc[0])]
            # the same head on pretrained features: hollow markers
            face = "white" if m.startswith("pretrained_") else color
            ax.plot([0.5, 0.9], y, color=color, marker=marker, ls=lines[j % len(lines)], lw=1.2,
                    ms=5, mfc=face, label=f"{m}, k={k}")
    ax.set_xlim(0.4, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xticks([0.5, 0.9])
    ax.set_xlabel("nominal coverage of the central interval")
    ax.set_ylabel("observed coverage of held-out values\n(mean over families)")
    if not len(cov):
        ax.text(0.7, 0.5, "no method with a predictive std", ha="center", va="center")
    ax.set_title(title + "\n(shaded: 85-95% at the 90% level)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig
