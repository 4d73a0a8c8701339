"""Kinetics figures: fitted JMAK curves with data and a confidence band, the Avrami plot, and the
Arrhenius plot. Built on :class:`matplotlib.figure.Figure` (no pyplot state, no display) and
saved atomically.

Example:
    >>> fig = plot_jmak_fits(curves, result)           # curves: list of KineticsCurve
    >>> save_figure(fig, "fits.png")
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

# save_figure stays out of __all__: other plot modules define their own of the same name
__all__ = ["KineticsCurve", "jmak_band", "plot_arrhenius", "plot_avrami", "plot_jmak_fits",
           "plot_prior_posterior", "plot_suggestion"]

Z_95 = 1.959963984540054


@dataclass
class KineticsCurve:
    """One measured curve and where its fit sits in a :class:`~matmeta.fitting.FitResult`.

    Attributes:
        label: legend / title text.
        time_s: (n,) times in seconds.
        fraction: (n,) measured fractions.
        fraction_std: (n,) standard deviations or None.
        fit_index: row of the curve's fit in the result.
        temperature_K: the isotherm temperature (for Arrhenius-coupled fits), or None.
    """

    label: str
    time_s: np.ndarray
    fraction: np.ndarray
    fraction_std: np.ndarray | None
    fit_index: int
    temperature_K: float | None = None


def _grid(curve: KineticsCurve, n: int = 200) -> np.ndarray:
    t = curve.time_s[curve.time_s > 0]
    lo = t.min() if len(t) else 1.0
    hi = curve.time_s.max() if len(curve.time_s) else 10.0
    # a decade beyond the data on each side: with few points (MAP under a prior) the band is
    # meant to show how it widens where nothing was measured
    return np.geomspace(lo / 10.0, max(hi, lo * 1.01) * 10.0, n)


def _inputs(curve: KineticsCurve, t: np.ndarray, arrhenius: bool) -> torch.Tensor:
    tt = torch.as_tensor(t, dtype=torch.float64)
    if arrhenius:
        return torch.stack([tt, torch.full_like(tt, float(curve.temperature_K))], dim=-1)
    return tt


def jmak_band(result, curve: KineticsCurve, t_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fitted fraction and its 95% half-width (delta method) at times ``t_s``.

    Example:
        >>> f, half = jmak_band(result, curve, np.geomspace(1, 1e4, 50))
    """
    model = result.model
    arrhenius = model.name == "arrhenius_jmak"
    i = curve.fit_index
    theta = result.theta[i:i + 1]
    f, jac = model.value_and_jacobian(theta, _inputs(curve, t_s, arrhenius).unsqueeze(0))
    cov = result.cov[i]
    var = torch.einsum("np,pq,nq->n", jac[0], cov, jac[0]).clamp_min(0)
    return f[0].detach().numpy(), (Z_95 * var.sqrt()).detach().numpy()


def _axes_grid(n: int, width: float = 3.6, height: float = 2.9):
    ncols = min(4, max(1, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def plot_jmak_fits(curves: list[KineticsCurve], result, title: str | None = None) -> Figure:
    """Data (error bars from ``fraction_std``), fitted JMAK curve and 95% confidence band, one
    panel per curve, time on a log axis in seconds.

    Example:
        >>> res = fit_jmak([t_s], [f])
        >>> fig = plot_jmak_fits([KineticsCurve("W 1373 K", t_s, f, None, 0)], res)
    """
    fig, axes = _axes_grid(len(curves))
    for ax, c in zip(axes, curves, strict=False):
        t = _grid(c)
        f, half = jmak_band(result, c, t)
        ax.fill_between(t, f - half, f + half, color="C0", alpha=0.25, lw=0, label="95% band")
        ax.plot(t, f, color="C0", lw=1.5, label="JMAK fit")
        tp = np.where(c.time_s > 0, c.time_s, t[0])
        ax.errorbar(tp, c.fraction, yerr=c.fraction_std, fmt="o", ms=3.5, color="C3",
                    elinewidth=0.8, capsize=2, label="data")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # short ranges label minor ticks: overlap
        ax.set_ylim(-0.1, 1.15)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("fraction transformed")
        conv = bool(result.converged[c.fit_index])
        # long material names would run into the next panel's title: wrap them
        label = c.label + ("" if conv else " (not converged)")
        ax.set_title(textwrap.fill(label, 40), fontsize=7)
    if curves:
        axes[0].legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title)
    return fig


def plot_avrami(curves: list[KineticsCurve], result, title: str | None = None) -> Figure:
    """The Avrami plot: ``ln(-ln(1 - f/f_max))`` against ``ln(t - t0)`` with the fitted straight
    lines (slope n); points with ``f/f_max`` outside (0, 1) cannot be shown and are skipped.

    Example:
        >>> fig = plot_avrami(curves, res)       # same arguments as plot_jmak_fits
    """
    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    ax = fig.add_subplot()
    model = result.model
    for j, c in enumerate(curves):
        color = f"C{j % 10}"
        params = model.unflatten(result.theta[c.fit_index])
        phys = model.to_physical(params)
        fmax = float(phys.get("f_max", 1.0))
        t0 = float(phys.get("t0_s", 0.0))
        if model.name == "arrhenius_jmak":
            temp = torch.tensor([float(c.temperature_K)], dtype=torch.float64)
            ln_k = float(model.ln_k(params, temp)[0])
            n = float(model._n(params, temp).reshape(-1)[0])
        else:
            ln_k, n = float(params["ln_k"]), float(phys["n"])
        y = c.fraction / fmax
        ok = (y > 0) & (y < 1) & (c.time_s > t0)
        x = np.log(c.time_s[ok] - t0)
        ax.plot(x, np.log(-np.log1p(-y[ok])), "o", ms=3.5, color=color, label=c.label)
        if ok.any():
            xs = np.linspace(x.min() - 0.5, x.max() + 0.5, 2)
            ax.plot(xs, n * (ln_k + xs), "-", color=color, lw=1)
    ax.set_xlabel("ln(t - t0)  [t in s]")
    ax.set_ylabel("ln(-ln(1 - f / f_max))")
    ax.axhline(np.log(np.log(2.0)), color="0.6", lw=0.8, ls=":")
    if len(curves) <= 12:
        ax.legend(fontsize=7)
    ax.set_title(title or "Avrami plot (slope = n)")
    return fig


def plot_arrhenius(temperature_K: np.ndarray, ln_k: np.ndarray, ln_k_se: np.ndarray | None,
                   groups: list[str], lines: dict[str, tuple[float, float]] | None = None,
                   title: str | None = None) -> Figure:
    """The Arrhenius plot: ``ln k`` (k in 1/s) against ``1000 / T`` with error bars, one colour
    per group, and each group's line ``ln k0 - Q / (R T)`` when ``lines[group] = (ln_k0, Q)``
    (Q in kJ/mol).

    Example:
        >>> fig = plot_arrhenius([1400, 1500], [-12.1, -10.3], [0.1, 0.1], ["W", "W"],
        ...                      lines={"W": (25.0, 440.0)})
    """
    from matmeta.models.parametric._units import R_J_PER_MOL_K

    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    ax = fig.add_subplot()
    temperature_K = np.asarray(temperature_K, dtype=float)
    ln_k = np.asarray(ln_k, dtype=float)
    for j, g in enumerate(dict.fromkeys(groups)):
        sel = np.array([gg == g for gg in groups])
        color = f"C{j % 10}"
        x = 1000.0 / temperature_K[sel]
        yerr = None if ln_k_se is None else np.asarray(ln_k_se, dtype=float)[sel]
        ax.errorbar(x, ln_k[sel], yerr=yerr, fmt="o", ms=4, color=color, capsize=2, label=g)
        if lines and g in lines:
            ln_k0, q = lines[g]
            xs = np.linspace(x.min() * 0.98, x.max() * 1.02, 2)
            ax.plot(xs, ln_k0 - q * 1e3 / R_J_PER_MOL_K * xs / 1000.0, "-", color=color, lw=1,
                    label=f"{g}: Q = {q:.0f} kJ/mol")
    ax.set_xlabel("1000 / T  (1/K)")
    ax.set_ylabel("ln k  (k in 1/s)")
    ax.legend(fontsize=7)
    ax.set_title(title or "Arrhenius plot")
    return fig


def plot_prior_posterior(panels: list[dict], title: str | None = None) -> Figure:
    """Prior band, data, and the adapted curve with its band: one panel per curve (isotherm).

    Each panel is a dict: ``label``, ``time_s`` (grid, s), ``prior`` and ``posterior`` as
    ``(curve, lower, upper)`` arrays on the grid, ``data_time_s``, ``data_fraction``,
    ``data_std`` (or None). :func:`matmeta.workflows._kinetics.write_jmak_report` builds them.

    Example:
        >>> fig = plot_prior_posterior([{"label": "W 1373 K", "time_s": t, "prior": (m, lo, hi),
        ...                              "posterior": (m2, lo2, hi2), "data_time_s": ts,
        ...                              "data_fraction": fs, "data_std": None}])
    """
    fig, axes = _axes_grid(len(panels))
    for ax, p in zip(axes, panels, strict=False):
        t = np.asarray(p["time_s"], dtype=float)
        pm, plo, phi = (np.asarray(a, dtype=float) for a in p["prior"])
        qm, qlo, qhi = (np.asarray(a, dtype=float) for a in p["posterior"])
        ax.fill_between(t, plo, phi, color="0.6", alpha=0.25, lw=0, label="prior 95% band")
        ax.plot(t, pm, color="0.45", lw=1.0, ls="--", label="prior mean")
        ax.fill_between(t, qlo, qhi, color="C0", alpha=0.3, lw=0, label="adapted 95% band")
        ax.plot(t, qm, color="C0", lw=1.6, label="adapted (MAP)")
        td = np.asarray(p["data_time_s"], dtype=float)
        td = np.where(td > 0, td, t[0])
        ax.errorbar(td, p["data_fraction"], yerr=p.get("data_std"), fmt="o", ms=4.5,
                    color="C3", elinewidth=0.8, capsize=2, label="measured", zorder=5)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(-0.05, 1.1)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("fraction transformed")
        ax.set_title(textwrap.fill(str(p["label"]), 40), fontsize=7)
    if panels:
        axes[0].legend(fontsize=6, loc="upper left")
    if title:
        fig.suptitle(title)
    return fig


def plot_suggestion(panels: list, title: str | None = None) -> Figure:
    """What to measure next: per curve, the adapted curve with its band and data (top), and the
    expected posterior std of the target after one measurement at each candidate (bottom, one
    line per candidate temperature), the best candidate marked.

    Example:
        >>> fig = plot_suggestion([(fit, ranked)])   # JMAKPriorFit, suggest_jmak_measurement table
    """
    n = len(panels)
    ncols = min(4, max(1, n))
    fig = Figure(figsize=(3.8 * ncols, 5.2), layout="constrained")
    axes = fig.subplots(2, ncols, squeeze=False, sharex="col")
    for j, (fit, ranked) in enumerate(panels[:ncols]):
        top, bottom = axes[0, j], axes[1, j]
        best = ranked.iloc[0]
        temps = fit.temperatures()
        for c, temp in enumerate(temps):
            grid = fit.grid(temp)
            band = fit.band(grid, temp)
            color = f"C{c % 10}"
            tag = "" if temp is None else f" {temp:g} K"
            top.fill_between(grid, band["lower"], band["upper"], color=color, alpha=0.25, lw=0)
            top.plot(grid, band["map"], color=color, lw=1.4, label="adapted" + tag)
            sel = slice(None) if temp is None else np.isclose(fit.temperature_K, temp)
            td = fit.time_s[sel]
            top.plot(np.where(td > 0, td, grid[0]), fit.fraction[sel], "o", ms=4, color=color)
        if "temperature_K" in ranked.columns:
            for c, (temp, part) in enumerate(ranked.groupby("temperature_K", sort=True)):
                part = part.sort_values("time_s")
                bottom.plot(part["time_s"], part["target_sd_after"], color=f"C{c % 10}",
                            lw=1.2, label=f"{temp:g} K")
        else:
            part = ranked.sort_values("time_s")
            bottom.plot(part["time_s"], part["target_sd_after"], color="C0", lw=1.2)
        bottom.axhline(float(best["target_sd_now"]), color="0.5", ls=":", lw=1,
                       label="sd now")
        for ax in (top, bottom):
            ax.axvline(float(best["time_s"]), color="C3", lw=1, ls="--")
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        top.set_ylim(-0.05, 1.1)
        top.set_ylabel("fraction transformed")
        top.set_title(textwrap.fill(fit.label, 40), fontsize=7)
        bottom.set_xlabel("time of the next measurement (s)")
        bottom.set_ylabel(f"expected sd of {best['target_scale']}")
        bottom.legend(fontsize=6)
        top.legend(fontsize=6, loc="upper left")
    for j in range(len(panels[:ncols]), ncols):
        axes[0, j].set_visible(False)
        axes[1, j].set_visible(False)
    if title:
        fig.suptitle(title)
    return fig
