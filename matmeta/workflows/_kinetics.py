"""JMAK from a few time points with a meta-learned prior: MAP fit, Laplace band, parameter table
with uncertainties, the influence of each point (exact leave-one-out refits), and a report folder.

The prior (a :class:`~matmeta.models.parametric.Prior` over ``ln k, ln n`` of one isotherm, or
``ln k0, Q, ln n`` of Arrhenius-JMAK over a sample's isotherms) comes from meta-learning across
known families (:func:`matmeta.learn_prior`, ``matmeta meta-train --prior FILE``). Adaptation is
the MAP fit under it with its Laplace posterior (:func:`matmeta.bayes.adapt_parametric`); the band
is drawn from that posterior (prior included), so it is narrow where the points are and widens
where there are none.

Example:
    >>> fit = fit_jmak_with_prior([600, 1800, 5400], [0.05, 0.4, 0.9], "w_prior.json")
    >>> fit.parameters()[["quantity", "posterior", "posterior_se"]]    # k_per_s, n, t_half_s
    >>> fit.influence()                     # change of k, n, t_half when each point is left out
    >>> write_jmak_report([fit], "report/")  # CSVs, fit.png, report.md; published whole
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from matmeta.errors import InputError

__all__ = [
    "JMAKPriorFit",
    "fit_jmak_with_prior",
    "kinetics_model_for",
    "load_kinetics_prior",
    "map_loo_influence",
    "summary_line",
    "write_jmak_report",
]

Z_95 = 1.959963984540054
F64 = torch.float64


def kinetics_model_for(prior: Any, source: str = "prior") -> Any:
    """The JMAK law a prior was made for (its ``model`` name and ``model_config``)."""
    from matmeta.models.parametric import JMAK, ArrheniusJMAK

    cfg = dict(prior.model_config or {})
    cfg.pop("prior", None)
    try:
        if prior.model == "jmak":
            model = JMAK(**{k: v for k, v in cfg.items() if k in ("fit_t0", "fit_fmax")})
        elif prior.model == "arrhenius_jmak":
            keep = ("temperatures_K", "shared_n", "fit_fmax")
            model = ArrheniusJMAK(**{k: v for k, v in cfg.items() if k in keep})
        else:
            raise InputError(f"{source}: prior is for model {prior.model!r}; a JMAK fit needs a "
                             "prior for 'jmak' (one isotherm) or 'arrhenius_jmak' (isotherms "
                             "coupled by Arrhenius)")
    except TypeError as exc:
        raise InputError(f"{source}: model_config {cfg} does not fit {prior.model!r} "
                         f"({exc})") from None
    prior.check(model, source=source)
    return model


def load_kinetics_prior(prior: Any) -> tuple[Any, Any]:
    """``(Prior, model)`` from a prior file path or a :class:`Prior`; refuses other laws' priors.

    Example:
        >>> prior, model = load_kinetics_prior("w_prior.json")     # model: JMAK()
    """
    from matmeta.models.parametric import Prior

    source = "prior"
    if isinstance(prior, (str, os.PathLike)):
        source = str(prior)
        prior = Prior.load(prior)
    if not isinstance(prior, Prior):
        raise InputError(f"prior: expected a Prior or a prior file path, got "
                         f"{type(prior).__name__}")
    return prior, kinetics_model_for(prior, source)


def _phys_quantities(model: Any, temperatures: Sequence[float | None]) -> list[tuple]:
    """(name, unit, log_scale, fn(theta) -> scalar on that scale) for the parameter table."""
    from matmeta.suggest._kinetics import kinetics_target

    out: list[tuple] = []
    if model.name == "jmak":
        out.append(("k_per_s", "1/s", True, lambda th: kinetics_target(model, th, "k")))
        out.append(("n", "", True, lambda th: kinetics_target(model, th, "n")))
        out.append(("t_half_s", "s", True, lambda th: kinetics_target(model, th, "t_half")))
        if model.fit_t0:
            i = model.flat_names.index("ln_t0_s")
            out.append(("t0_s", "s", True, lambda th, i=i: th[i]))
    else:
        i0 = model.flat_names.index("ln_k0")
        out.append(("k0_per_s", "1/s", True, lambda th: th[i0]))
        out.append(("Q_kJ_per_mol", "kJ/mol", False, lambda th: kinetics_target(model, th, "Q")))
        if model.shared_n:
            out.append(("n", "", True, lambda th: kinetics_target(model, th, "n")))
        for temp in temperatures:
            out.append((f"k_per_s at {temp:g} K", "1/s", True,
                        lambda th, T=temp: kinetics_target(model, th, "k", T)))
            out.append((f"t_half_s at {temp:g} K", "s", True,
                        lambda th, T=temp: kinetics_target(model, th, "t_half", T)))
    if getattr(model, "fit_fmax", False):
        j = model.flat_names.index("logit_fmax")
        out.append(("f_max", "", False, lambda th, j=j: torch.sigmoid(th[j])))
    return out


def _summarise(fn, theta: Tensor, cov: Tensor, log_scale: bool) -> tuple[float, ...]:
    """Value, standard error (delta method) and 95% interval of one quantity."""
    g = fn(theta)
    a = torch.func.grad(fn)(theta)
    sd = float(torch.sqrt((a @ cov @ a).clamp_min(0)))
    v = float(g)
    if log_scale:
        return math.exp(v), math.exp(v) * sd, math.exp(v - Z_95 * sd), math.exp(v + Z_95 * sd)
    return v, sd, v - Z_95 * sd, v + Z_95 * sd


@dataclass
class JMAKPriorFit:
    """A JMAK (or Arrhenius-JMAK) fit of a few points under a meta-learned prior.

    Attributes:
        posterior: the Laplace posterior (:class:`~matmeta.bayes.ParametricPosterior`).
        time_s, fraction: the measured points (s, 0..1).
        temperature_K: per point (Arrhenius-JMAK), else None.
        fraction_std: per-point std of the fractions, or None.
        label: the curve's name in tables and plots.
        samples: posterior draws behind bands and predictive std (seeded by ``seed``).
    """

    posterior: Any
    time_s: np.ndarray
    fraction: np.ndarray
    temperature_K: np.ndarray | None
    fraction_std: np.ndarray | None
    label: str = "curve"
    samples: int = 2000
    seed: int = 0

    @property
    def model(self) -> Any:
        return self.posterior.model

    @property
    def prior(self) -> Any:
        return self.posterior.prior

    @property
    def arrhenius(self) -> bool:
        return self.model.name == "arrhenius_jmak"

    def temperatures(self) -> list[float | None]:
        """The measured temperatures in K (Arrhenius-JMAK), else ``[None]``."""
        if not self.arrhenius:
            return [None]
        return sorted({float(v) for v in self.temperature_K})

    def inputs(self, time_s: Any, temperature_K: float | None = None) -> Tensor:
        """Model inputs for times (s) at one temperature (K; Arrhenius-JMAK only)."""
        t = torch.as_tensor(np.asarray(time_s, dtype=np.float64), dtype=F64).reshape(-1)
        if not self.arrhenius:
            return t
        if temperature_K is None:
            raise InputError("an Arrhenius-JMAK curve needs a temperature_K")
        return torch.stack([t, torch.full_like(t, float(temperature_K))], -1)

    def t_half_s(self, temperature_K: float | None = None) -> float:
        """Posterior (MAP) half time in s (at ``temperature_K`` for Arrhenius-JMAK)."""
        from matmeta.suggest._kinetics import kinetics_target

        if self.arrhenius and temperature_K is None:
            temperature_K = self.temperatures()[0]
        return math.exp(float(kinetics_target(self.model, self.posterior.theta, "t_half",
                                              temperature_K)))

    def parameters(self) -> pd.DataFrame:
        """Prior and posterior of every physical quantity, with standard errors and 95% intervals.

        Example:
            >>> fit.parameters().set_index("quantity").loc["t_half_s", "posterior_se"]

        Returns:
            One row per quantity (``k_per_s``, ``n``, ``t_half_s``; Arrhenius-JMAK: ``k0_per_s``,
            ``Q_kJ_per_mol``, ``n`` and ``k_per_s`` / ``t_half_s`` at each measured temperature):
            ``quantity, unit, prior, prior_se, prior_low95, prior_high95, posterior,
            posterior_se, posterior_low95, posterior_high95``. Positive quantities are Gaussian in
            their logarithm: the intervals are asymmetric and the ``_se`` is the delta method.
        """
        rows = []
        mean, cov = self.prior.mean.to(F64), self.prior.cov.to(F64)
        theta, pcov = self.posterior.theta.to(F64), self.posterior.cov.to(F64)
        for name, unit, log_scale, fn in _phys_quantities(self.model, self.temperatures()
                                                          if self.arrhenius else []):
            pr = _summarise(fn, mean, cov, log_scale)
            po = _summarise(fn, theta, pcov, log_scale)
            rows.append({"quantity": name, "unit": unit,
                         "prior": pr[0], "prior_se": pr[1], "prior_low95": pr[2],
                         "prior_high95": pr[3], "posterior": po[0], "posterior_se": po[1],
                         "posterior_low95": po[2], "posterior_high95": po[3]})
        return pd.DataFrame(rows)

    def band(self, time_s: Any, temperature_K: float | None = None, level: float = 0.95,
             source: str = "posterior") -> pd.DataFrame:
        """The fitted curve with its central ``level`` band, from posterior (or prior) draws.

        The band is that of the curve (parameter uncertainty, prior included); the predictive
        std adds the measurement noise.

        Example:
            >>> fit.band(np.geomspace(10, 1e5, 100))[["time_s", "mean", "lower", "upper"]]

        Returns:
            ``time_s, (temperature_K), map, mean, lower, upper, predictive_std``.
        """
        if source not in ("posterior", "prior"):
            raise InputError(f"band source {source!r}: expected 'posterior' or 'prior'")
        x = self.inputs(time_s, temperature_K)
        if source == "posterior":
            mean_theta, cov = self.posterior.theta.to(F64), self.posterior.cov.to(F64)
        else:
            mean_theta, cov = self.prior.mean.to(F64), self.prior.cov.to(F64)
        gen = torch.Generator().manual_seed(self.seed)
        chol = torch.linalg.cholesky(cov + 1e-12 * torch.diag(torch.diagonal(cov)))
        z = torch.randn(self.samples, mean_theta.numel(), generator=gen, dtype=F64)
        theta = mean_theta + z @ chol.T
        f, _ = self.model.value_and_jacobian(theta, x.unsqueeze(0).expand(self.samples, *x.shape))
        f_map, _ = self.model.value_and_jacobian(mean_theta.unsqueeze(0), x.unsqueeze(0))
        lo = torch.quantile(f, (1 - level) / 2, dim=0)
        hi = torch.quantile(f, (1 + level) / 2, dim=0)
        noise = float(self.posterior.noise_std)
        frame = pd.DataFrame({"time_s": x[:, 0].numpy() if self.arrhenius else x.numpy()})
        if self.arrhenius:
            frame["temperature_K"] = float(temperature_K)
        frame["map"] = f_map[0].numpy()
        frame["mean"] = f.mean(0).numpy()
        frame["lower"] = lo.numpy()
        frame["upper"] = hi.numpy()
        frame["predictive_std"] = (f.var(0) + noise**2).sqrt().numpy()
        return frame

    def predict(self, time_s: Any, temperature_K: float | None = None) -> tuple[Tensor, Tensor]:
        """Predictive mean and std (with measurement noise) at times in s, from posterior draws.

        Example:
            >>> mean, std = fit.predict([100.0, 1000.0])
        """
        return self.posterior.predict(self.inputs(time_s, temperature_K), samples=self.samples,
                                      seed=self.seed)

    def grid(self, temperature_K: float | None = None, n: int = 200) -> np.ndarray:
        """Log-spaced times (s) over the data and the posterior's transition at a temperature."""
        t = self.time_s if temperature_K is None else self.time_s[
            np.isclose(self.temperature_K, temperature_K)]
        th = self.t_half_s(temperature_K)
        pos = t[t > 0]
        lo = min(pos.min() / 3.0 if len(pos) else th / 30.0, th / 30.0)
        hi = max(t.max() * 3.0 if len(t) else th * 30.0, th * 30.0)
        return np.geomspace(lo, hi, n)

    def influence(self, targets: Sequence[str] | None = None) -> pd.DataFrame:
        """Influence of each measured point: exact leave-one-out MAP refits.

        Each point is removed in turn and the MAP fit under the prior is redone (cheap at a few
        points); the scores follow :mod:`matmeta.influence`'s sign convention,
        ``target(fit without the point) - target(fit with all)``.

        Example:
            >>> fit.influence()[["sample", "t_half", "t_half_change_percent"]]

        Args:
            targets: physical quantities (default ``k, n, t_half``; Arrhenius-JMAK ``Q, n``).

        Returns:
            One row per point (``sample`` = ``"t=...s"``), a column per target and, for each,
            ``<target>_change_percent`` (relative to the fit with all points).
        """
        from matmeta.influence import InfluenceRequest, explain_request
        from matmeta.models import Samples

        if targets is None:
            targets = ("Q", "n") if self.arrhenius else ("k", "n", "t_half")
        if len(self.time_s) < 2:
            raise InputError("influence needs at least 2 measured points (removing the only "
                             "point leaves the prior alone)")
        model = self.model
        params = model.unflatten(self.posterior.theta.detach().clone())
        x = self.inputs(self.time_s) if not self.arrhenius else torch.stack(
            [torch.as_tensor(self.time_s, dtype=F64),
             torch.as_tensor(self.temperature_K, dtype=F64)], -1)
        support = Samples(x, torch.as_tensor(self.fraction, dtype=F64),
                          torch.as_tensor(self._weights(), dtype=F64))
        ids = [f"t={t:.4g}s" + (f"@{T:g}K" if self.arrhenius else "")
               for t, T in zip(self.time_s, self.temperature_K if self.arrhenius
                               else [None] * len(self.time_s), strict=True)]
        # The request's inner loop is not run: map_loo_influence refits by MAP instead; steps and
        # lr only satisfy the request's checks.
        request = InfluenceRequest(model, params, support, {"steps": 1, "lr": 0.0},
                                   targets=tuple(targets), ids=ids)
        frame = explain_request(request, map_loo_influence, prior=self.prior,
                                noise_std=float(self.posterior.noise_std))
        base = request.evaluate(params).detach().numpy()
        for j, name in enumerate(request.target_names()):
            frame[f"{name}_change_percent"] = 100.0 * frame[name] / base[j] if base[j] else np.nan
        return frame

    def _weights(self) -> np.ndarray:
        """Per-point weights so that each residual counts as ``1 / fraction_std^2``."""
        if self.fraction_std is None:
            return np.ones(len(self.time_s))
        s = float(self.posterior.noise_std)
        return (s / np.asarray(self.fraction_std, dtype=np.float64)) ** 2


def map_loo_influence(request: Any, *, prior: Any, noise_std: float | None = None,
                      progress: bool | None = None) -> Any:
    """Exact leave-one-out for a MAP fit under a prior: one refit per deleted point.

    An estimator for :func:`matmeta.influence.explain_request` (the request's inner loop is
    replaced by the MAP fit of :func:`matmeta.bayes.adapt_parametric`; its support weights are the
    per-point weights of the fit).

    Example:
        >>> explain_request(request, map_loo_influence, prior=prior, noise_std=0.05)
    """
    from matmeta.bayes import adapt_parametric
    from matmeta.influence import InfluenceScores

    model, sup = request.model, request.support
    w0 = request.weight
    base = request.evaluate(request.params).detach()
    rows = []
    failed = []
    for i in range(request.num_support):
        w = w0.clone()
        w[i] = 0.0
        try:
            post = adapt_parametric(model, prior, sup.inputs, sup.y, noise_std=noise_std,
                                    weight=w)
            rows.append(request.evaluate(model.unflatten(post.theta)).detach())
        except InputError:
            failed.append(request.ids[i])
            rows.append(torch.full_like(base, float("nan")))
    scores = torch.stack(rows) - base
    return InfluenceScores(scores, request.target_names(), "loo",
                           {"loo_mode": "map refit", "failed": failed})


def fit_jmak_with_prior(time: Any, fraction: Any, prior: Any, *,
                        temperature_K: Any | None = None, fraction_std: Any | None = None,
                        noise_std: float | None = None, time_unit: str = "s",
                        label: str = "curve", samples: int = 2000, seed: int = 0,
                        fraction_tolerance: float = 0.0,
                        allow_negative_time: bool = False) -> JMAKPriorFit:
    """Fit JMAK to a few points (2-5 are enough) under a meta-learned prior: MAP + Laplace.

    Example:
        >>> fit = fit_jmak_with_prior([10, 30], [0.12, 0.55], "prior.json", time_unit="min")
        >>> fit.parameters()                  # k_per_s, n, t_half_s: prior and posterior
        >>> fit.band(fit.grid())              # curve with its 95% band (widens away from data)
        >>> # isotherms of one sample coupled by Arrhenius (a prior for 'arrhenius_jmak'):
        >>> fit = fit_jmak_with_prior(t_s, f, "w_arrhenius.json", temperature_K=T_K)

    Args:
        time: measured times in ``time_unit``.
        fraction: measured fractions (0..1).
        prior: a :class:`~matmeta.models.parametric.Prior` or its file, for ``jmak`` or
            ``arrhenius_jmak`` (another law's prior is a one-line :class:`InputError`).
        temperature_K: per-point temperatures (required with an Arrhenius-JMAK prior).
        fraction_std: per-point std of the fractions (weights ``1/std^2``).
        noise_std: std of one fraction measurement; default the prior's.
        time_unit: ``"s"``, ``"min"`` or ``"h"``; results are in seconds.
        label: the curve's name in tables and plots.
        samples, seed: posterior draws behind bands and predictive std.
        fraction_tolerance, allow_negative_time: as in :func:`matmeta.fit_jmak`.

    Returns:
        A :class:`JMAKPriorFit`.

    Raises:
        InputError: no points, bad times or fractions (naming the point), a prior for another
            law, a missing temperature for Arrhenius-JMAK.
    """
    from matmeta.bayes import adapt_parametric
    from matmeta.io.kinetics import validate_kinetics
    from matmeta.models.parametric import seconds_per

    prior, model = load_kinetics_prior(prior)
    t = np.asarray(time, dtype=np.float64).reshape(-1) * seconds_per(time_unit)
    f = np.array(fraction, dtype=np.float64).reshape(-1)  # a copy: pandas hands out read-only views
    if len(t) != len(f):
        raise InputError(f"{label}: {len(t)} times but {len(f)} fractions")
    if len(t) == 0:
        raise InputError(f"{label}: no measured points; a fit needs at least one point and a "
                         "prior")
    validate_kinetics(t, f, fraction_tolerance=fraction_tolerance,
                      allow_negative_time=allow_negative_time, curve=label)
    std = None
    if fraction_std is not None:
        std = np.array(fraction_std, dtype=np.float64).reshape(-1)
        if len(std) != len(f) or not np.isfinite(std).all() or (std <= 0).any():
            raise InputError(f"{label}: fraction_std must be one finite value > 0 per point")
    temps = None
    if model.name == "arrhenius_jmak":
        if temperature_K is None:
            raise InputError(f"{label}: an Arrhenius-JMAK prior needs temperature_K per point")
        temps = np.broadcast_to(np.array(temperature_K, dtype=np.float64), t.shape).copy()
        if not np.isfinite(temps).all() or (temps <= 0).any():
            raise InputError(f"{label}: temperature_K must be finite and > 0 K")
        # (one isotherm is enough under the prior: its Q comes from the prior, its k(T) from
        # the points)
        x = np.stack([t, temps], -1)
    else:
        x = t
    s = float(noise_std or prior.noise_std or 0.05)
    weight = None if std is None else (s / std) ** 2
    post = adapt_parametric(model, prior, x, f, noise_std=s, weight=weight)
    if not bool(torch.isfinite(post.cov).all()):
        raise InputError(f"{label}: the Laplace covariance is singular; the prior file may be "
                         "degenerate")
    return JMAKPriorFit(post, t, f, temps, std, label, samples, seed)


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def write_jmak_report(fits: Sequence[JMAKPriorFit], out: str | os.PathLike, *,
                      title: str | None = None, influence: bool = True,
                      prior_source: str | None = None, progress: bool | None = None,
                      overwrite: bool = True) -> Path:
    """Write a report folder: data, prior and posterior parameters, curves with bands, influence.

    Files: ``data.csv``, ``parameters.csv``, ``curves.csv`` (prior and posterior band per curve),
    ``influence.csv``, ``fit.png``, ``report.md``. The folder appears whole or not at all
    (:func:`matmeta.workflows._report.result_folder`).

    Example:
        >>> write_jmak_report([fit], "jmak_report/")

    Args:
        fits: the fits to report (one section of each table per fit).
        out: the report folder (replaced whole when it exists).
        title: the report's title; default from the first fit's label.
        influence: compute each point's exact leave-one-out influence (one refit per point).
        prior_source: where the prior came from, for the report's text.
        progress: a tqdm bar over the fits (default: when stderr is a terminal).

    Returns:
        The folder's path.
    """
    import sys

    from tqdm.auto import tqdm

    from matmeta.plots._common import save_figure
    from matmeta.plots._kinetics import plot_prior_posterior
    from matmeta.workflows._report import Report, result_folder

    fits = list(fits)
    if not fits:
        raise InputError("write_jmak_report: no fits to report")
    data, params, curves, infl, panels = [], [], [], [], []
    disable = (not sys.stderr.isatty()) if progress is None else not progress
    for fit in tqdm(fits, desc="jmak report", disable=disable, leave=False):
        d = pd.DataFrame({"curve": fit.label, "time_s": fit.time_s, "fraction": fit.fraction})
        if fit.arrhenius:
            d["temperature_K"] = fit.temperature_K
        if fit.fraction_std is not None:
            d["fraction_std"] = fit.fraction_std
        data.append(d)
        p = fit.parameters()
        p.insert(0, "curve", fit.label)
        params.append(p)
        for temp in fit.temperatures():
            grid = fit.grid(temp)
            post = fit.band(grid, temp)
            pri = fit.band(grid, temp, source="prior")
            both = post.rename(columns={c: f"posterior_{c}" for c in
                                        ("map", "mean", "lower", "upper", "predictive_std")})
            for c in ("mean", "lower", "upper"):
                both[f"prior_{c}"] = pri[c].to_numpy()
            both.insert(0, "curve", fit.label)
            curves.append(both)
            sel = (slice(None) if temp is None else np.isclose(fit.temperature_K, temp))
            panels.append({
                "label": fit.label + ("" if temp is None else f", {temp:g} K"),
                "time_s": grid, "prior": (pri["mean"], pri["lower"], pri["upper"]),
                "posterior": (post["map"], post["lower"], post["upper"]),
                "data_time_s": fit.time_s[sel], "data_fraction": fit.fraction[sel],
                "data_std": None if fit.fraction_std is None else fit.fraction_std[sel]})
        if influence and len(fit.time_s) >= 2:
            i = fit.influence()
            i.insert(0, "curve", fit.label)
            infl.append(i)
    data_df = pd.concat(data, ignore_index=True)
    params_df = pd.concat(params, ignore_index=True)
    curves_df = pd.concat(curves, ignore_index=True)
    infl_df = pd.concat(infl, ignore_index=True) if infl else None
    fig = plot_prior_posterior(panels)

    first = fits[0]
    report = Report(title or f"JMAK fit with a meta-learned prior: {first.label}"
                    + (f" and {len(fits) - 1} more" if len(fits) > 1 else ""))
    names = ", ".join(first.model.flat_names)
    report.text(
        f"Model: {'Arrhenius-JMAK, ln k(T) = ln k0 - Q/(R T), ' if first.arrhenius else ''}"
        f"f(t) = 1 - exp(-(k t)^n), k in 1/s, t in s. Prior: Gaussian over ({names}) "
        f"{'from ' + prior_source if prior_source else ''}, measurement noise std "
        f"{first.posterior.noise_std:.3g} (fraction units). Fit: MAP under the prior with its "
        f"Laplace posterior; bands are central 95% intervals of the curve from "
        f"{first.samples} posterior draws (parameter uncertainty, prior included; measurement "
        "noise is not in the band).")
    report.heading("Data")
    report.table(None, data_df, note=f"{len(data_df)} points; data.csv.")
    report.heading("Parameters: prior and posterior")
    shown = params_df[["curve", "quantity", "unit", "prior", "prior_low95", "prior_high95",
                       "posterior", "posterior_se", "posterior_low95", "posterior_high95"]]
    report.table(None, shown, note="Positive quantities are Gaussian in their logarithm, so the "
                 "95% intervals are asymmetric; *_se is the delta method. parameters.csv.")
    report.heading("Curves")
    report.figure("prior band, data and adapted curve with its band", "fit.png")
    report.text("Grey: the prior's 95% band (what the known families say before any point of "
                "this sample). Blue: the adapted curve (MAP) and its 95% band. curves.csv holds "
                "both on a log-spaced time grid.")
    report.heading("Influence of each point")
    if infl_df is not None:
        cols = [c for c in infl_df.columns if c not in ("effect", "harm_rank")]
        report.table(None, infl_df[cols], note="Exact leave-one-out: each point removed and the "
                     "MAP fit redone. Score = value without the point - value with all points; "
                     "*_change_percent relative to the fit with all points. influence.csv.")
    else:
        report.text("Not computed (a single point, or turned off).")
    with result_folder(out, overwrite=overwrite) as tmp:
        data_df.to_csv(tmp / "data.csv", index=False)
        params_df.to_csv(tmp / "parameters.csv", index=False)
        curves_df.to_csv(tmp / "curves.csv", index=False)
        if infl_df is not None:
            infl_df.to_csv(tmp / "influence.csv", index=False)
        save_figure(fig, tmp / "fit.png")
        report.write(tmp / "report.md")
    return Path(out)


def summary_line(fit: JMAKPriorFit) -> str:
    """One line: t_half and n with their 95% intervals (for command output)."""
    p = fit.parameters().set_index("quantity")
    parts = []
    for q in ([f"t_half_s at {t:g} K" for t in fit.temperatures()] if fit.arrhenius
              else ["t_half_s"]) + ["n"]:
        if q in p.index:
            r = p.loc[q]
            parts.append(f"{q} = {_fmt(r['posterior'])} [{_fmt(r['posterior_low95'])}, "
                         f"{_fmt(r['posterior_high95'])}]")
    return f"{fit.label}: " + "; ".join(parts)
