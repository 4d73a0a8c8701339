"""Fit parametric laws to many curves at once: multi-start batched Levenberg-Marquardt, MAP
with a Gaussian prior, standard errors from the Jacobian, and flags for poorly determined fits.

Objective for curve ``c`` (``w`` sample weights, ``sigma`` per-point std when given)::

    sum_i w_i ((f(x_i) - y_i) / s_i)^2  +  |W (theta - mu)|^2        (second term: MAP only)

with ``s_i = sigma_i`` when sigmas are given, else ``noise_std`` (only matters with a prior),
and ``W^T W = cov_prior^-1``. Without a prior the standard errors follow
``scipy.optimize.curve_fit`` (``absolute_sigma=False``): ``cov = s^2 (J^T J)^-1`` with
``s^2 = RSS / (n - P)``. With a prior they are the Laplace posterior ``(J^T J)^-1`` over data and
prior residuals together.

Example:
    >>> res = fit_jmak([t1_s, t2_s], [f1, f2])               # two curves, one call
    >>> res.table()[["k_per_s", "k_per_s_se", "n", "t_half_s", "rmse", "converged"]]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from matmeta.errors import InputError
from matmeta.fitting._lm import (
    LMResult,
    _lm_loop,
    from_namespace,
    loop_namespace,
    to_namespace,
)
from matmeta.models.parametric._base import ParametricModel, Prior
from matmeta.models.parametric._jmak import JMAK
from matmeta.models.parametric._units import seconds_per

__all__ = ["FitResult", "fit_curves", "fit_jmak", "DEFAULT_NOISE_STD", "pad_curves"]

# std of one fraction measurement assumed for MAP fits when neither the data (fraction_std) nor
# the prior (noise_std) says: typical of hardness- or DSC-derived fractions.
DEFAULT_NOISE_STD = 0.05

# iterations of the adaptive multi-start's first pass (most curves converge in under 10, and with
# valley jumps the creeping ones in under 20, which keeps them out of the second pass)
FIRST_PASS_ITER = 20
# the adaptive multi-start runs every start at once on curves with at most this many points per
# free parameter: on sparse curves distinct local minima with similar costs are common, and no
# test on one fit tells them apart
SPARSE_POINTS_PER_PARAM = 5

# the loop evaluates the model on at most this many curves at a time (see gram_fn)
GRAM_CHUNK = 512

# thresholds of the "poorly determined" flag (transformed space: ln k, ln n)
SE_LN_N_MAX = 0.25
SE_LN_K_MAX = 0.5
NK_CORR_MAX = 0.99


def _join(parts: Sequence[Any], flat: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Array-likes joined along their first axis as float64 (one call for a thousand curves),
    and each one's length; ``flat``: each part raveled first (targets given as columns)."""
    try:
        lengths = np.fromiter(map(len, parts), dtype=np.intp, count=len(parts))
        joined = (np.concatenate(parts, axis=0, dtype=np.float64) if len(parts)
                  else np.zeros(0))
        if not flat or joined.ndim == 1:
            return joined, lengths
    except (TypeError, ValueError):
        pass  # scalars, ragged trailing shapes: one part at a time below
    arrays = [np.asarray(a, dtype=np.float64) for a in parts]
    if flat:
        arrays = [a.reshape(-1) for a in arrays]
    elif any(a.ndim == 0 for a in arrays):
        i = next(i for i, a in enumerate(arrays) if a.ndim == 0)
        raise InputError(f"curve {i}: a single number where an array of points was expected")
    for i, a in enumerate(arrays[1:], start=1):
        if a.shape[1:] != arrays[0].shape[1:]:
            raise InputError(f"curve {i}: points of shape {a.shape[1:]}, but curve 0's are "
                             f"{arrays[0].shape[1:]}")
    lengths = np.fromiter(map(len, arrays), dtype=np.intp, count=len(arrays))
    return np.concatenate(arrays, axis=0) if arrays else np.zeros(0), lengths


def pad_curves(inputs: Sequence[Any], ys: Sequence[Any], weights: Sequence[Any] | None = None,
               sigmas: Sequence[Any] | None = None, *, dtype: torch.dtype = torch.float64,
               device: torch.device | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Pad curves of different lengths into batch tensors; padding gets weight 0.

    Example:
        >>> x, y, w, s = pad_curves([[1.0, 2.0], [1.0, 2.0, 3.0]], [[0.1, 0.5], [0.1, 0.4, 0.9]])
        >>> x.shape, w[0].tolist()
        (torch.Size([2, 3]), [1.0, 1.0, 0.0])

    Returns:
        inputs (B, N, ...), y (B, N), weight (B, N), sigma (B, N) or None.
    """
    if len(inputs) != len(ys):
        raise InputError(f"{len(inputs)} input arrays but {len(ys)} target arrays")
    x_cat, x_lengths = _join(inputs)
    y_cat, lengths = _join(ys, flat=True)
    if (x_lengths != lengths).any():
        i = int(np.flatnonzero(x_lengths != lengths)[0])
        raise InputError(f"curve {i}: {x_lengths[i]} inputs but {lengths[i]} targets")
    b, nmax = len(lengths), int(lengths.max()) if len(lengths) else 0
    mask = np.arange(nmax)[None, :] < lengths[:, None]

    def pad(joined: np.ndarray, fill: float) -> Tensor:
        out = np.full((b, nmax, *joined.shape[1:]), fill, dtype=np.float64)
        if b:
            out[mask] = joined
        return torch.as_tensor(out, dtype=dtype, device=device)

    def per_point(values: Sequence[Any], what: str) -> np.ndarray:
        """Per-point values of every curve, joined (None: ones for that curve)."""
        if len(values) != b:
            raise InputError(f"{len(values)} {what} arrays for {b} curves")
        parts = []
        for i, (v, n) in enumerate(zip(values, lengths.tolist(), strict=True)):
            a = np.ones(n) if v is None else np.asarray(v, dtype=np.float64).reshape(-1)
            if len(a) != n:
                raise InputError(f"curve {i}: {len(a)} {what} for {n} points")
            parts.append(a)
        return np.concatenate(parts) if parts else np.zeros(0)

    # padding inputs get a finite dummy value (1.0): they carry weight 0
    x_pad = pad(x_cat, 1.0)
    y_pad = pad(y_cat, 0.0)
    if weights is None:
        w_pad = torch.as_tensor(mask, dtype=dtype, device=device)
    else:
        w_pad = pad(per_point(weights, "weights"), 0.0)
    s_pad = None if sigmas is None else pad(per_point(sigmas, "sigmas"), 1.0)
    return x_pad, y_pad, w_pad, s_pad


@dataclass
class FitResult:
    """Fitted parameters of B curves with their uncertainties.

    Attributes:
        model: the fitted :class:`ParametricModel`.
        theta: (B, P) best parameters in transformed space (``model.flat_names`` order).
        cov: (B, P, P) covariance of ``theta`` (NaN where the curvature is singular).
        rmse: (B,) root mean square of ``f - y`` over each curve's points (sample-weighted).
        cost: (B,) the minimised objective.
        converged: (B,) convergence flag of the best start.
        n_points: (B,) points with non-zero weight.
        iterations: LM iterations run.
        start_index: (B,) which start won.
        map: whether a prior was used.
        labels: optional curve labels.
        n_determining: (B,) points where the fitted curve still moves (the law's
            ``fit_determining_points``; JMAK: inside its transition), or None (a MAP fit, or a
            law without the test).
    """

    model: ParametricModel
    theta: Tensor
    cov: Tensor
    rmse: Tensor
    cost: Tensor
    converged: Tensor
    n_points: Tensor
    iterations: int
    start_index: Tensor
    map: bool = False
    labels: list[Any] | None = None
    n_determining: Tensor | None = None

    def __len__(self) -> int:
        return int(self.theta.shape[0])

    @property
    def params(self) -> dict[str, Tensor]:
        """Transformed parameter dict with a leading batch dimension (B, ...)."""
        return self.model.unflatten(self.theta)

    @property
    def stderr(self) -> Tensor:
        """(B, P) standard errors in transformed space."""
        return self.cov.diagonal(dim1=1, dim2=2).clamp_min(0).sqrt()

    def curve_params(self, i: int) -> dict[str, Tensor]:
        """Transformed parameters of curve ``i`` (no batch dimension)."""
        return self.model.unflatten(self.theta[i])

    def correlation(self, a: str, b: str) -> Tensor:
        """(B,) correlation of flat parameters ``a`` and ``b`` (e.g. ``"ln_k"``, ``"ln_n"``)."""
        names = self.model.flat_names
        i, j = names.index(a), names.index(b)
        se = self.stderr
        return self.cov[:, i, j] / (se[:, i] * se[:, j])

    def physical(self) -> dict[str, np.ndarray]:
        """Physical values and their standard errors (delta method), by physical name.

        Keys: ``k_per_s``, ``k_per_s_se``, ``n``, ``n_se``, ... (``n[1]`` for vector entries).
        """
        phys = self.model.physical_flat(self.theta)
        dphys = self.model.physical_jacobian_diag(self.theta)
        se = dphys.abs() * self.stderr
        out: dict[str, np.ndarray] = {}
        for j, (_, spec, idx) in enumerate(self.model.flat_specs()):
            key = spec.physical_name if idx is None else f"{spec.physical_name}[{idx}]"
            out[key] = phys[:, j].detach().cpu().numpy()
            out[f"{key}_se"] = se[:, j].detach().cpu().numpy()
        return out

    def derived(self) -> dict[str, np.ndarray]:
        """Derived outputs (``t_half_s`` for JMAK) and their standard errors (delta method)."""
        model = self.model
        probe = model.derived(model.unflatten(self.theta[0]))
        if not probe:
            return {}

        def d(th: Tensor) -> dict[str, Tensor]:
            return model.derived(model.unflatten(th))

        vals = torch.func.vmap(d)(self.theta)
        jacs = torch.func.vmap(torch.func.jacrev(d))(self.theta)
        out: dict[str, np.ndarray] = {}
        for key, v in vals.items():
            g = jacs[key]  # (B, P) or (B, K, P)
            if g.dim() == 2:
                var = torch.einsum("bp,bpq,bq->b", g, self.cov, g)
                out[key] = v.detach().cpu().numpy()
                out[f"{key}_se"] = var.clamp_min(0).sqrt().detach().cpu().numpy()
            else:
                var = torch.einsum("bkp,bpq,bkq->bk", g, self.cov, g)
                for k in range(v.shape[1]):
                    out[f"{key}[{k}]"] = v[:, k].detach().cpu().numpy()
                    out[f"{key}[{k}]_se"] = var[:, k].clamp_min(0).sqrt().detach().cpu().numpy()
        return out

    @property
    def nk_correlation(self) -> Tensor | None:
        """(B,) correlation of ln k and ln n (JMAK fits), else None."""
        names = self.model.flat_names
        if "ln_k" in names and "ln_n" in names:
            return self.correlation("ln_k", "ln_n")
        return None

    @property
    def poorly_determined(self) -> Tensor:
        """(B,) True where k and n (or, for other laws, any parameter) are poorly determined.

        JMAK: a non-finite standard error, ``se(ln n) > 0.25``, ``se(ln k) > 0.5`` or
        ``|corr(ln k, ln n)| > 0.99``, or (without a prior) fewer than two points where the
        fitted curve still moves (``n_determining``, 0.1-99.9% of ``f_max``: a step fitted
        exactly by a near-vertical curve has tiny standard errors, but k and n are only
        bounded). Other laws: any non-finite standard error.
        """
        se = self.stderr
        bad = ~torch.isfinite(se).all(-1)
        if self.n_determining is not None:
            bad = bad | (self.n_determining < 2)
        names = self.model.flat_names
        if "ln_k" in names and "ln_n" in names:
            ik, i_n = names.index("ln_k"), names.index("ln_n")
            corr = self.correlation("ln_k", "ln_n")
            bad = (bad | (se[:, i_n] > SE_LN_N_MAX) | (se[:, ik] > SE_LN_K_MAX)
                   | ~torch.isfinite(corr) | (corr.abs() > NK_CORR_MAX))
        return bad

    def table(self) -> pd.DataFrame:
        """One row per curve: physical values, ``*_se`` standard errors, derived outputs,
        ``rmse``, ``n_points``, ``converged``, and for JMAK ``nk_correlation`` and
        ``poorly_determined``."""
        cols: dict[str, Any] = {}
        if self.labels is not None:
            cols["curve"] = list(self.labels)
        cols.update(self.physical())
        cols.update(self.derived())
        cols["rmse"] = self.rmse.detach().cpu().numpy()
        cols["n_points"] = self.n_points.detach().cpu().numpy()
        cols["converged"] = self.converged.detach().cpu().numpy()
        corr = self.nk_correlation
        if corr is not None:
            cols["nk_correlation"] = corr.detach().cpu().numpy()
        cols["poorly_determined"] = self.poorly_determined.detach().cpu().numpy()
        return pd.DataFrame(cols)


def _inverse_spd(a: Tensor) -> Tensor:
    """Inverse of batched symmetric positive semi-definite (B, P, P) matrices; NaN where
    singular. Closed form for P <= 2 (a LAPACK call per matrix costs more than the fit).

    A parameter the data do not touch at all (a zero column of the Jacobian, so a zero row
    and column here: e.g. the exponent of an isotherm without points) gets NaN in its own
    row and column only; the others come from the rest of the matrix, which is then all
    there is to invert."""
    p = a.shape[-1]
    untouched = a.diagonal(dim1=1, dim2=2) == 0
    if p > 1 and bool(untouched.any()):
        eye = torch.diag_embed(untouched.to(a.dtype))
        inv = _inverse_spd(a + eye)
        nan = untouched[:, :, None] | untouched[:, None, :]
        return torch.where(nan, torch.full_like(inv, float("nan")), inv)
    if p > 2:
        inv, info = torch.linalg.inv_ex(a)
        return torch.where((info == 0)[:, None, None], inv, torch.full_like(inv, float("nan")))
    if p == 1:
        inv = 1.0 / a
        return torch.where(a > 0, inv, torch.full_like(inv, float("nan")))
    a00, a01, a11 = a[:, 0, 0], a[:, 0, 1], a[:, 1, 1]
    det = a00 * a11 - a01 * a01
    inv = torch.stack([torch.stack([a11, -a01], -1), torch.stack([-a01, a00], -1)], -2)
    inv = inv / det[:, None, None]
    # a Gram matrix is singular when its determinant is not positive (to rounding)
    return torch.where((det > 0)[:, None, None], inv, torch.full_like(inv, float("nan")))


def _label(labels: Sequence[Any] | None, i: int) -> str:
    return f"curve {labels[i]}" if labels is not None else f"curve {i}"


def fit_curves(
    model: ParametricModel,
    inputs: Sequence[Any] | Tensor,
    y: Sequence[Any] | Tensor,
    *,
    weight: Sequence[Any] | Tensor | None = None,
    sigma: Sequence[Any] | Tensor | None = None,
    prior: Prior | None = None,
    noise_std: float | None = None,
    absolute_sigma: bool = False,
    starts: Tensor | None = None,
    max_iter: int = 200,
    multistart: str = "all",
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float64,
    labels: Sequence[Any] | None = None,
) -> FitResult:
    """Fit ``model`` independently to each of B curves in one batched call.

    Example:
        >>> res = fit_curves(JMAK(fit_fmax=True), [t1_s, t2_s], [f1, f2])
        >>> res.physical()["f_max"], res.converged

    Args:
        model: a :class:`ParametricModel` (its ``prior``, if any, is used unless ``prior`` is
            given).
        inputs: a list of per-curve inputs (times in s for JMAK; (n, 2) [time_s, temperature_K]
            for ArrheniusJMAK), or a padded tensor (B, N, ...) with ``weight`` 0 on padding.
        y: a list of per-curve targets, or a padded (B, N) tensor.
        weight: per-point sample weights (multiply the squared residuals); None means 1.
        sigma: per-point standard deviations of ``y`` (``fraction_std``); weights ``1/sigma^2``.
        prior: a :class:`Prior` over the transformed parameters: MAP fit, allows fewer points
            than parameters.
        noise_std: std of one measurement when ``sigma`` is absent (MAP only); defaults to the
            prior's ``noise_std``, else ``DEFAULT_NOISE_STD``.
        absolute_sigma: as in ``curve_fit``: take ``sigma`` as absolute (no rescaling by the
            residual variance).
        starts: extra starting points (B, S', P) in transformed space, added to the model's.
        max_iter: LM iteration cap.
        multistart: ``"all"`` (default): run every start of every curve to convergence and
            keep the best (the lowest objective among converged starts, else among those that
            reached ``max_iter``; objectives equal to 1e-12 go to the earliest start). For laws
            with a ``fit_merge_tol`` (JMAK: 0.01 in every transformed parameter), two starts of
            one curve that meet on their way are heading for the same minimum, and the one with
            the higher objective stops there: on well-determined curves this moves the
            objective by < 1.5e-7 relative (the loop's own convergence tolerance is 1.5e-8 per
            step), on poorly determined ones (flat valleys, 1-2 points under a prior) by up to
            the stall tolerance, 1e-4 relative, with parameters well inside their standard
            errors. ``"adaptive"``:
            a first pass of up to 20 iterations runs every curve from its first start, and
            sparse curves (at most 5 points per free parameter, where distinct minima are
            common) from all their starts; each curve whose fit is then suspect (still
            running, weighted R^2 < 0.99, or k or n poorly determined) continues its unfinished
            starts, with their damping, next to the starts it has not run yet; every curve keeps
            its best start by the same rule. A curve that ran all its starts gets the
            ``"all"`` result, up to where a flat valley's stall test stops (~1e-6 in RMSE);
            a curve whose first fit looks sound but is not the best minimum keeps it (an
            outside check found 2-3 such curves in 3,000 synthetic ones with ``t0`` or
            ``f_max``, up to 20% higher RMSE; none without them): hence ``"all"`` by
            default.
        device: ``"cpu"``, ``"cuda"``, ``"auto"`` or None (CPU, or the device of tensor inputs).
        dtype: float64 by default (the curvature of flat JMAK valleys needs it).
        labels: curve labels for error messages and :meth:`FitResult.table`.

    Returns:
        A :class:`FitResult`.

    Raises:
        InputError: non-finite values, fewer points than free parameters without a prior, all
            targets equal, non-positive sigma, or a prior for another model.
    """
    from matmeta.config import resolve_device

    dev = resolve_device(device) if device is not None else (
        inputs.device if isinstance(inputs, Tensor) else torch.device("cpu"))
    if isinstance(y, Tensor) and y.dim() == 2 and isinstance(inputs, Tensor):
        x_pad = inputs.to(dev, dtype)
        y_pad = y.to(dev, dtype)
        w_pad = (torch.ones_like(y_pad) if weight is None
                 else torch.as_tensor(weight, dtype=dtype, device=dev))
        s_pad = None if sigma is None else torch.as_tensor(sigma, dtype=dtype, device=dev)
    else:
        x_pad, y_pad, w_pad, s_pad = pad_curves(
            list(inputs), list(y), None if weight is None else list(weight),
            None if sigma is None else list(sigma), dtype=dtype, device=dev)
    b = y_pad.shape[0]
    if b == 0:
        raise InputError("no curves to fit: the inputs and targets are empty")
    p = model.num_params
    if labels is not None and len(labels) != b:
        raise InputError(f"{len(labels)} labels for {b} curves")
    live = w_pad > 0
    # (weights made here from the curves' lengths need no check)
    if weight is not None and ((w_pad < 0).any() or not torch.isfinite(w_pad).all()):
        raise InputError("weights must be finite and non-negative")

    def finite(t: Tensor, name: str, fill: float) -> Tensor:
        """``t`` checked finite at every point with weight; elsewhere (padding a caller left
        as NaN) a non-finite value becomes ``fill``: it carries no weight, but NaN * 0 is NaN."""
        fin = torch.isfinite(t)
        if bool(fin.all()):  # (padding included: the common case, one check)
            return t
        bad = ~fin.reshape(b, t.shape[1], -1).all(-1) & live
        if bad.any():
            i, j = (int(v) for v in bad.nonzero()[0])
            raise InputError(f"{_label(labels, i)}, point {j}: {name} must be finite")
        return torch.where(fin, t, torch.full_like(t, fill))

    x_pad, y_pad = finite(x_pad, "inputs", 1.0), finite(y_pad, "targets", 0.0)
    if s_pad is not None:
        bad = live & ~(torch.isfinite(s_pad) & (s_pad > 0))
        if bad.any():
            i, j = (int(v) for v in bad.nonzero()[0])
            raise InputError(f"{_label(labels, i)}, point {j}: sigma must be positive and finite")

    prior = prior if prior is not None else model.prior
    if prior is not None:
        prior.check(model)
    if noise_std is not None and not (noise_std > 0 and math.isfinite(noise_std)):
        raise InputError(f"noise_std {noise_std}: expected a positive number")
    if max_iter < 1:
        raise InputError(f"max_iter {max_iter}: expected a positive integer")
    n_points = live.sum(-1)
    few = (n_points < p) if prior is None else (n_points < 1)
    if few.any():
        i = int(few.nonzero()[0, 0])
        raise InputError(
            f"{_label(labels, i)}: {int(n_points[i])} points for {p} free parameters "
            f"({', '.join(model.flat_names)}); measure more points or give a prior")
    # Under a prior the MAP fit of constant targets (two points both at f = 0) is well defined.
    if prior is None:
        big = torch.finfo(dtype).max
        y_hi = torch.where(live, y_pad, big * -1.0).amax(-1)
        y_lo = torch.where(live, y_pad, big).amin(-1)
        flat = (y_hi == y_lo) & (n_points > 1)
        if flat.any():
            i = int(flat.nonzero()[0, 0])
            raise InputError(f"{_label(labels, i)}: all {int(n_points[i])} target values "
                             f"equal {float(y_hi[i]):g}; a curve needs values that change")

    # residual scale: 1/sigma when given, else 1/noise_std (matters only against a prior)
    if s_pad is not None:
        inv_s = 1.0 / torch.where(live, s_pad, torch.ones_like(s_pad))
    else:
        scale = 1.0
        if prior is not None:
            scale = noise_std or prior.noise_std or DEFAULT_NOISE_STD
        inv_s = None if scale == 1.0 else torch.full_like(y_pad, 1.0 / scale)
    sqrt_w = torch.sqrt(w_pad) if inv_s is None else torch.sqrt(w_pad) * inv_s

    try:
        theta0 = model.initial_guesses(x_pad, y_pad, w_pad).to(dev, dtype)
    except InputError:
        if prior is None:
            raise
        # the law cannot read starts from these data alone (an Arrhenius law from one
        # isotherm), but the prior makes the fit well posed: starts from what the data say
        # and the prior the rest (the prior's mean follows below)
        theta0 = model.prior_starts(x_pad, y_pad, w_pad, prior).to(dev, dtype)
    if prior is not None:
        theta0 = torch.cat([theta0, prior.mean.to(dev, dtype).expand(b, 1, p)], dim=1)
    if starts is not None:
        theta0 = torch.cat([theta0, torch.as_tensor(starts, dtype=dtype, device=dev)], dim=1)
    s = theta0.shape[1]
    prepared = model.fit_inputs(x_pad)
    if prior is not None:
        w_prior = prior.precision_sqrt.to(dev, dtype)
        mu = prior.mean.to(dev, dtype)

    # the loop's array namespace (numpy on the CPU: see matmeta.fitting._lm)
    xp = loop_namespace(dev)
    if prior is not None:
        w_xp = to_namespace(w_prior, xp)
        mu_xp = to_namespace(mu, xp)[:, None]
        # J^T J of the prior's residuals W (theta - mu), the same for every curve
        wtw_xp = w_xp.T @ w_xp

    def gram_fn(theta: Any, x: Any, yy: Any, sw: Any) -> Any:
        """Gram matrix of [J | r] over the data and, for MAP, the prior's residuals; arrays
        batch-last in the loop's namespace."""
        nb = theta.shape[-1]
        if nb > GRAM_CHUNK:
            # in cache-sized pieces: a model's dozen temporaries over thousands of curves
            # outgrow the CPU's cache, which costs more than the extra calls
            parts = [gram_fn(theta[..., i:i + GRAM_CHUNK], x[..., i:i + GRAM_CHUNK],
                             yy[..., i:i + GRAM_CHUNK], sw[..., i:i + GRAM_CHUNK])
                     for i in range(0, nb, GRAM_CHUNK)]
            return xp.concatenate(parts, -1)
        # the loop's curves are in order of extent (run_loop), so the last one has the
        # longest: the padding after it carries weight 0 everywhere and is left out
        last = sw[:, -1].nonzero()
        m = int(last[0][-1] if xp is np else last[-1, 0]) + 1
        if m < sw.shape[0]:
            x, yy, sw = x[:m], yy[:m], sw[:m]
        if fused:
            g = model.fit_gram(theta, x, yy, sw)
        else:
            th = from_namespace(theta).T
            xt, yt, swt = (from_namespace(t).movedim(-1, 0) for t in (x, yy, sw))
            ne = model.fit_normal_equations(th, xt, yt, swt)
            if ne is not None:
                cost, a, jtr = ne
                gt = torch.cat([torch.cat([a, jtr.unsqueeze(-1)], -1),
                                torch.cat([jtr, cost.unsqueeze(-1)], -1).unsqueeze(1)], 1)
            else:
                f, jt = model.fit_value_and_jacobian(th, xt)
                v = torch.cat([swt.unsqueeze(1) * jt, (swt * (f - yt)).unsqueeze(1)], 1)
                gt = v @ v.mT
            g = to_namespace(gt.reshape(len(th), -1).T.contiguous(), xp)
        if prior is not None:
            # the prior's residuals W (theta - mu), Jacobian W: extra rows of [J | r]
            rp = w_xp @ (theta - mu_xp)
            wr = w_xp.T @ rp
            top = xp.concatenate([xp.broadcast_to(wtw_xp[:, :, None], (p, p, rp.shape[1])),
                                  wr[:, None]], 1)
            bottom = xp.concatenate([wr, (rp * rp).sum(0)[None]], 0)[None]
            g = g + xp.concatenate([top, bottom], 0).reshape((p + 1) ** 2, -1)
        return g

    def jump_fn(theta: Any, direction: Any, x: Any, yy: Any, sw: Any) -> Any:
        return model.fit_valley_jump(theta, direction, x, sw)

    # the fit's data batch-last, as the loop takes it: with a fused Gram matrix the model's
    # own targets take the place of y
    targets = model.fit_targets(y_pad, sqrt_w)
    fused = targets is not None
    data_last = tuple(to_namespace(t.movedim(0, -1).contiguous(), xp)
                      for t in (prepared, targets if fused else y_pad, sqrt_w))

    def loop_data(index: Tensor) -> tuple[Any, ...]:
        """The fit's data for the loop: curves ``index``."""
        idx = to_namespace(index, xp)
        return tuple(t[..., idx] for t in data_last)

    # a curve's extent: its last point with non-zero weight (+1); gram_fn leaves out the
    # padding after the longest extent of each piece of curves it evaluates
    extent = (live * torch.arange(1, live.shape[1] + 1, device=dev)).amax(-1)

    # starts of one curve that meet are merged where the model says how near is near enough
    merge_tol = model.fit_merge_tol

    def run_loop(theta0_rows: Tensor, index: Tensor, iters: int,
                 lam0: Tensor | None = None) -> LMResult:
        """Fit rows ``theta0_rows`` on curves ``index``, ordered by extent inside the loop."""
        # (stable: the starts of one curve stay next to each other, as the loop's merging of
        # starts that meet needs)
        order = torch.argsort(extent[index], stable=True)
        res = _lm_loop(gram_fn, to_namespace(theta0_rows[order].T.contiguous(), xp),
                       loop_data(index[order]), xp=xp, max_iter=iters,
                       valley=(model.fit_valley_direction, jump_fn),
                       lam0=1e-3 if lam0 is None else to_namespace(lam0[order].contiguous(), xp),
                       groups=None if merge_tol is None else to_namespace(index[order], xp),
                       merge_tol=merge_tol or 0.0)
        back = torch.empty_like(order)
        back[order] = torch.arange(len(order), device=dev)
        return LMResult(res.theta[back], res.cost[back], res.jtj[back], res.converged[back],
                        res.iterations, res.lam[back],
                        None if res.merged is None else res.merged[back])

    def best_start(cost: Tensor, conv: Tensor, merged: Tensor | None) -> Tensor:
        """(b,) index of each curve's best start: the lowest cost among its converged starts,
        else among those that ran to the iteration cap, else among those merged into another
        (stopped early); costs equal to 1e-12 go to the earliest start."""
        cost = torch.where(torch.isfinite(cost), cost, torch.full_like(cost, float("inf")))
        tier = torch.where(conv, 0, 1 if merged is None else torch.where(merged, 2, 1))
        first = tier == tier.amin(-1, keepdim=True)
        key = torch.where(first, cost, torch.full_like(cost, float("inf")))
        # costs equal to rounding (a flat valley reached from two starts) go to the earliest
        # start, so that the choice does not hang on the last bits of one platform's exp
        tie = first & (key <= key.amin(-1, keepdim=True) * (1.0 + 1e-12))
        return tie.to(torch.uint8).argmax(-1)

    def fitted(theta: Tensor) -> Tensor:
        return model.value_and_jacobian(theta, x_pad)[0]

    def data_rss(theta: Tensor, cost: Tensor) -> Tensor:
        """``sum(sqrt_w^2 (f - y)^2)``: the objective itself unless a prior adds to it."""
        if prior is None:
            return cost
        return ((sqrt_w * (fitted(theta) - y_pad)) ** 2).sum(-1)

    def covariance(a: Tensor, rss: Tensor) -> Tensor:
        inv = _inverse_spd(a)
        if prior is None and not absolute_sigma:
            # a parameter the data do not touch (see _inverse_spd) uses up no degree of freedom
            dof = (n_points - p + (a.diagonal(dim1=1, dim2=2) == 0).sum(-1)).to(dtype)
            s2 = rss / dof
            s2 = torch.where(dof > 0, s2, torch.full_like(s2, float("nan")))
            return inv * s2[:, None, None]
        return inv

    def adaptive() -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, int]:
        """Pass 1 (at most FIRST_PASS_ITER iterations): every curve from its first start, and
        sparse curves from all their starts. Pass 2: each suspect curve (still running, a poor
        fit, k or n poorly determined) continues its unfinished rows, with their damping, next
        to the starts it has not run yet. Each curve then keeps its best row, so the result is
        never worse than pass 1 and, on a curve that ran all its starts, is the ``"all"``
        result (up to where the stall test stops a creep along a flat valley: continued rows
        restart Nielsen's growth factor)."""
        rows_all = torch.arange(b * s, device=dev).reshape(b, s)
        sparse = n_points <= SPARSE_POINTS_PER_PARAM * p
        if "ln_n" in model.flat_names:
            # JMAK: with at most P points inside the transition (5-95% of the highest value)
            # k and n are usually poorly determined, which pass 1 would find out only after a
            # long creep along a flat valley; run their other starts from the outset instead
            y_max = torch.where(live, y_pad, torch.zeros_like(y_pad)).amax(-1, keepdim=True)
            mid = (live & (y_pad > 0.05 * y_max) & (y_pad < 0.95 * y_max)).sum(-1)
            sparse = sparse | (mid <= p)
        ran = torch.zeros(b, s, dtype=torch.bool, device=dev)
        ran[:, 0] = True
        ran[sparse] = True
        th_all = theta0.reshape(b * s, p).clone()
        cost_all = torch.full((b * s,), float("inf"), dtype=dtype, device=dev)
        a_all = torch.full((b * s, p, p), float("nan"), dtype=dtype, device=dev)
        conv_all = torch.zeros(b * s, dtype=torch.bool, device=dev)
        lam_all = torch.full((b * s,), 1e-3, dtype=dtype, device=dev)
        # rows stopped where another start of their curve met them: finished, not running
        merged_all = torch.zeros(b * s, dtype=torch.bool, device=dev)

        def run_rows(idx: Tensor, iters: int) -> int:
            res = run_loop(th_all[idx], idx // s, iters, lam_all[idx])
            th_all[idx], cost_all[idx], a_all[idx] = res.theta, res.cost, res.jtj
            conv_all[idx], lam_all[idx] = res.converged, res.lam
            if res.merged is not None:
                merged_all[idx] = res.merged
            return res.iterations

        first = min(FIRST_PASS_ITER, max_iter)
        iters = run_rows(rows_all[ran], first)
        best = best_start(cost_all.reshape(b, s), conv_all.reshape(b, s),
                          merged_all.reshape(b, s))
        pick = rows_all[torch.arange(b, device=dev), best]
        theta, a = th_all[pick], a_all[pick]
        rss = data_rss(theta, cost_all[pick])
        cov = covariance(a, rss)
        sw2 = sqrt_w**2
        ybar = (sw2 * y_pad).sum(-1, keepdim=True) / sw2.sum(-1, keepdim=True)
        tss = (sw2 * (y_pad - ybar) ** 2).sum(-1)
        tmp = FitResult(model, theta, cov, rss, cost_all[pick], conv_all[pick], n_points, iters,
                        best)
        running = ran & ~(conv_all | merged_all).reshape(b, s)
        suspect = running.any(-1) | (rss > 0.01 * tss) | tmp.poorly_determined
        todo = suspect.unsqueeze(-1) & (running | ~ran)
        if todo.any() and max_iter > first:
            # rows that stopped at the first pass's cap carry on where they were
            iters += run_rows(rows_all[todo], max_iter - first)
            best = best_start(cost_all.reshape(b, s), conv_all.reshape(b, s),
                              merged_all.reshape(b, s))
            pick = rows_all[torch.arange(b, device=dev), best]
        return (th_all[pick], a_all[pick], cost_all[pick], conv_all[pick], best, iters)

    if multistart not in ("adaptive", "all"):
        raise InputError(f"multistart {multistart!r}: expected 'adaptive' or 'all'")
    if s == 1 or multistart == "all":
        # every start of every curve as one row of a single batched run
        res = run_loop(theta0.reshape(b * s, p),
                       torch.arange(b, device=dev).repeat_interleave(s), max_iter)
        costs, convs = res.cost.reshape(b, s), res.converged.reshape(b, s)
        start_index = best_start(costs, convs,
                                 None if res.merged is None else res.merged.reshape(b, s))
        pick = torch.arange(b, device=dev) * s + start_index
        theta, a, conv, iters = res.theta[pick], res.jtj[pick], res.converged[pick], res.iterations
        cost = res.cost[pick]
    else:
        theta, a, cost, conv, start_index, iters = adaptive()
    cov = covariance(a, data_rss(theta, cost))
    if s_pad is None and prior is None:
        # then sqrt_w^2 = w, and the objective is the weighted sum of squares itself
        sq_sum = cost
    else:
        sq_sum = (w_pad * (fitted(theta) - y_pad) ** 2).sum(-1)
    rmse = torch.sqrt(sq_sum / w_pad.sum(-1))
    return FitResult(model, theta, cov, rmse, cost, conv, n_points, iters, start_index,
                     prior is not None,
                     None if labels is None else list(labels),
                     None if prior is not None else model.fit_determining_points(theta, x_pad,
                                                                                 w_pad))


def _as_numpy(v: Any) -> np.ndarray:
    if isinstance(v, Tensor):
        return v.detach().cpu().double().numpy()
    if isinstance(v, Sequence) and any(isinstance(e, Tensor) for e in v):
        return np.asarray([float(e) for e in v], dtype=np.float64)
    return np.asarray(v, dtype=np.float64)


def fit_jmak(
    times: Sequence[Any] | Any,
    fractions: Sequence[Any] | Any,
    *,
    fraction_std: Sequence[Any] | Any | None = None,
    weight: Sequence[Any] | Any | None = None,
    time_unit: str = "s",
    fit_t0: bool = False,
    fit_fmax: bool = False,
    prior: Prior | None = None,
    noise_std: float | None = None,
    max_iter: int = 200,
    device: str | torch.device | None = None,
    labels: Sequence[Any] | None = None,
    fraction_tolerance: float = 0.0,
    allow_negative_time: bool = False,
) -> FitResult:
    """Fit JMAK ``f = f_max (1 - exp(-(k max(t - t0, 0))^n))`` to one curve or many.

    Example:
        >>> res = fit_jmak([60, 120, 240, 480], [0.1, 0.35, 0.8, 0.99], time_unit="min")
        >>> float(res.physical()["k_per_s"][0]), float(res.derived()["t_half_s"][0])

    Args:
        times: one curve's times (1-D) or a list of curves' times, in ``time_unit``.
        fractions: the transformed fractions, same structure.
        fraction_std: per-point standard deviations (weights ``1/std^2``), same structure.
        weight: per-point sample weights, same structure.
        time_unit: ``"s"``, ``"min"`` or ``"h"``; results are always in seconds.
        fit_t0: fit an incubation time ``t0_s``.
        fit_fmax: fit a maximum fraction ``f_max`` (incomplete transformations, e.g. bainite).
        prior: a :class:`Prior` for MAP fits from 2-4 points.
        noise_std: std of one fraction measurement for MAP fits without ``fraction_std``.
        max_iter: LM iteration cap.
        device: where to fit (``"cpu"``, ``"cuda"``, ``"auto"``).
        labels: curve labels for messages and the table.
        fraction_tolerance: accept fractions in ``[-tol, 1 + tol]`` (kept as measured, not
            clipped); 0 (default) means strictly [0, 1].
        allow_negative_time: keep negative times (digitisation noise near t = 0) as measured;
            default: refuse them.

    Returns:
        A :class:`FitResult` with ``k_per_s``, ``n`` (and ``t0_s``, ``f_max``), standard errors,
        ``t_half_s``, ``rmse``, ``converged``, ``nk_correlation``, ``poorly_determined``.

    Raises:
        InputError: a time < 0 or a fraction outside [0, 1] (beyond the tolerances), naming the
            curve and point index (the same rules as
            :func:`matmeta.io.kinetics.read_kinetics_table`), and everything
            :func:`fit_curves` refuses.
    """
    from matmeta.io.kinetics import validate_kinetics

    unit_s = seconds_per(time_unit)

    def is_single(v: Any) -> bool:
        a = np.asarray(v, dtype=object) if not isinstance(v, Tensor) else v
        return getattr(a, "ndim", 1) == 1 and (len(a) == 0 or np.isscalar(a[0])
                                                or (isinstance(a[0], Tensor) and a[0].dim() == 0))

    single = is_single(times)
    t_list = [times] if single else list(times)
    f_list = [fractions] if single else list(fractions)
    std_list = None if fraction_std is None else ([fraction_std] if single else list(fraction_std))
    w_list = None if weight is None else ([weight] if single else list(weight))
    if len(t_list) != len(f_list):
        raise InputError(f"{len(t_list)} time arrays but {len(f_list)} fraction arrays")
    if labels is not None and len(labels) != len(t_list):
        raise InputError(f"{len(labels)} labels for {len(t_list)} curves")
    t_s = [_as_numpy(t) * unit_s for t in t_list]
    for i, (t, f) in enumerate(zip(t_s, f_list, strict=True)):
        validate_kinetics(t, _as_numpy(f), fraction_tolerance=fraction_tolerance,
                          allow_negative_time=allow_negative_time,
                          curve=i if labels is None else labels[i])
    model = JMAK(fit_t0=fit_t0, fit_fmax=fit_fmax)
    if prior is not None:
        prior.check(model)
    return fit_curves(model, t_s, f_list, weight=w_list, sigma=std_list, prior=prior,
                      noise_std=noise_std, max_iter=max_iter, device=device, labels=labels)

