"""JMAK (Johnson-Mehl-Avrami-Kolmogorov) kinetics: one isotherm, and Arrhenius-coupled isotherms.

``f(t) = f_max * (1 - exp(-(k * max(t - t0, 0))^n))`` in the ``(k t)^n`` convention, k in 1/s,
t in s. Parameters live in log space (``ln_k``, ``ln_n``, ``ln_t0_s``) and logit space
(``logit_fmax``); ``n`` is not forced into 1..4 (real fits give 0.5 to 8).

Numerics: the power ``(k tau)^n`` is evaluated as ``exp(n (ln k + ln tau))`` with the exponent's
argument capped at ``Z_MAX`` (beyond it ``1 - exp(-e^z)`` equals 1 to double precision), and
``tau <= 0`` handled with ``torch.where`` on finite branches, so values and gradients (of any order)
stay finite for ``t <= t0`` and for huge ``k t``.

Example:
    >>> model = JMAK()
    >>> params = model.from_physical(k_per_s=1e-3, n=2.0)
    >>> model.forward(params, torch.tensor([0.0, 832.55], dtype=torch.float64))
    tensor([0.0000, 0.5000], dtype=torch.float64)
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from matmeta.errors import InputError
from matmeta.models._protocol import Params
from matmeta.models.parametric._base import ParametricModel, ParamSpec, Prior
from matmeta.models.parametric._units import R_J_PER_MOL_K

__all__ = ["JMAK", "ArrheniusJMAK", "jmak_curve", "Z_MAX"]

# exp(-e^4) = 1.9e-24: beyond this the curve is 1 to double precision, and capping keeps
# exp(e^z) from overflowing into inf * 0 = NaN gradients.
Z_MAX = 4.0
# The fitter's fast paths also floor the argument: below e^-60 ~ 1e-26 a point contributes
# nothing, and squares of far smaller numbers become denormals, which cost x86 CPUs ~100x per
# operation.
Z_MIN = -60.0
LN_LN2 = math.log(math.log(2.0))
# Valley jumps (see JMAK.fit_valley_jump): a creeping fit with n above VALLEY_N_UP (growing) or
# below VALLEY_N_DOWN (shrinking) tries n * VALLEY_JUMP (or n / VALLEY_JUMP).
VALLEY_N_UP = 4.0
VALLEY_N_DOWN = 0.5
VALLEY_JUMP = 16.0
# A fit's determining points lie where its curve still moves: fitted f / f_max in
# (0.001, 0.999), that is z = n ln(k (t - t0)) in (ln(-ln 0.999), ln(-ln 0.001)). (Only a fit
# through no more than one such point, a near-vertical step, is flagged by this; a point at
# 1.5% of a precisely measured curve still pins k and n, and its standard errors say so.)
TRANSITION_LO = 1e-3
Z_TRANSITION = (math.log(-math.log1p(-TRANSITION_LO)), math.log(-math.log(TRANSITION_LO)))


def jmak_curve(t: Tensor, ln_k: Tensor, n: Tensor, t0: Tensor | float = 0.0,
               f_max: Tensor | float = 1.0) -> Tensor:
    """The JMAK curve ``f_max (1 - exp(-(k max(t - t0, 0))^n))``; pure and vmap-safe.

    Example:
        >>> jmak_curve(torch.tensor([1000.0]), torch.tensor(math.log(1e-3)), torch.tensor(1.0))
        tensor([0.6321])
    """
    tau = t - t0
    pos = tau > 0
    ln_tau = torch.log(torch.where(pos, tau, torch.ones_like(tau)))
    z = (n * (ln_k + ln_tau)).clamp_max(Z_MAX)
    frac = -torch.expm1(-torch.exp(z))
    return f_max * torch.where(pos, frac, torch.zeros_like(frac))


def _namespace(a: Any) -> ModuleType:
    """numpy for numpy arrays, torch for tensors (the batched fitter's loop uses either)."""
    return np if isinstance(a, np.ndarray) else torch


def _check_fraction(x: float) -> None:
    if not 0.0 < x < 1.0:
        raise InputError(f"t_x: fraction x must be in (0, 1), got {x}")


class JMAK(ParametricModel):
    """One JMAK isotherm: ``f(t) = f_max (1 - exp(-(k max(t - t0, 0))^n))``.

    Example:
        >>> model = JMAK(fit_t0=True)
        >>> params = model.from_physical(k_per_s=2e-3, n=1.5, t0_s=30.0)
        >>> float(model.derived(params)["t_half_s"])   # t0 + ln(2)^(1/n) / k
        421.5...

    Args:
        fit_t0: add an incubation time ``t0_s >= 0`` (parameter ``ln_t0_s``).
        fit_fmax: add a maximum fraction ``0 < f_max < 1`` (parameter ``logit_fmax``).
        prior: optional :class:`Prior` over the transformed parameters.

    Shapes:
        inputs: (n,) times in seconds; output: (n,) fractions.
    """

    name = "jmak"
    # every transformed parameter is a log or a logit: 0.01 is 1% in k, n, t0 or f_max
    # (merging checked on the benchmark curves: benchmarks/fitting.md)
    fit_merge_tol = 0.01

    def __init__(self, fit_t0: bool = False, fit_fmax: bool = False,
                 prior: Prior | dict | None = None) -> None:
        self.fit_t0 = bool(fit_t0)
        self.fit_fmax = bool(fit_fmax)
        super().__init__(prior)

    def _config(self) -> dict[str, Any]:
        return {"fit_t0": self.fit_t0, "fit_fmax": self.fit_fmax}

    def param_specs(self) -> list[ParamSpec]:
        specs = [ParamSpec("ln_k", "k_per_s", "1/s", "log", 1e-3),
                 ParamSpec("ln_n", "n", "", "log", 2.0)]
        if self.fit_t0:
            specs.append(ParamSpec("ln_t0_s", "t0_s", "s", "log", 1.0))
        if self.fit_fmax:
            specs.append(ParamSpec("logit_fmax", "f_max", "", "logit", 0.9))
        return specs

    def _t0(self, params: Params) -> Tensor | float:
        return torch.exp(params["ln_t0_s"]) if self.fit_t0 else 0.0

    def _fmax(self, params: Params) -> Tensor | float:
        return torch.sigmoid(params["logit_fmax"]) if self.fit_fmax else 1.0

    def forward(self, params: Params, inputs: Tensor) -> Tensor:
        """Fractions at times ``inputs`` (seconds)."""
        return jmak_curve(inputs, params["ln_k"], torch.exp(params["ln_n"]), self._t0(params),
                          self._fmax(params))

    def t_x_s(self, params: Params, x: float) -> Tensor:
        """Time in seconds to reach the fraction ``x * f_max``: ``t0 + (-ln(1-x))^(1/n) / k``."""
        _check_fraction(x)
        n = torch.exp(params["ln_n"])
        return self._t0(params) + torch.exp(math.log(-math.log1p(-x)) / n - params["ln_k"])

    def t_half_s(self, params: Params) -> Tensor:
        """Half-transformation time ``t0 + ln(2)^(1/n) / k`` in seconds (half of ``f_max``)."""
        return self._t0(params) + torch.exp(LN_LN2 / torch.exp(params["ln_n"]) - params["ln_k"])

    def derived(self, params: Params) -> dict[str, Tensor]:
        return {"t_half_s": self.t_half_s(params)}

    def value_and_jacobian(self, theta: Tensor, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """Closed-form values (B, N) and Jacobian (B, N, P): the batched fitter's hot loop."""
        ln_k, ln_n = theta[:, 0:1], theta[:, 1:2]
        n = torch.exp(ln_n)
        j = 2
        if self.fit_t0:
            t0 = torch.exp(theta[:, j:j + 1])
            j += 1
            tau = inputs - t0
        else:
            tau = inputs
        pos = tau > 0
        ln_tau = torch.log(torch.where(pos, tau, torch.ones_like(tau)))
        z = n * (ln_k + ln_tau)
        live = pos & (z < Z_MAX)
        z = z.clamp_max(Z_MAX)
        e = torch.exp(z)
        g = torch.exp(-e)
        frac = torch.where(pos, -torch.expm1(-e), torch.zeros_like(e))
        # df/dz, zero where the curve is flat (before t0, or capped at 1)
        dfz = torch.where(live, g * e, torch.zeros_like(e))
        cols = [dfz * n, dfz * z]
        if self.fit_t0:
            cols.append(dfz * (-n * t0 / torch.where(pos, tau, torch.ones_like(tau))))
        if self.fit_fmax:
            fmax = torch.sigmoid(theta[:, j:j + 1])
            cols = [c * fmax for c in cols]
            cols.append(frac * (fmax * (1 - fmax)))
            frac = frac * fmax
        return frac, torch.stack(cols, dim=-1)

    def fit_inputs(self, inputs: Tensor) -> Tensor:
        """Without t0, ``ln t`` is all the fit needs; times <= 0 get ``ln t = -1e6`` so their
        ``(k t)^n`` underflows to exactly 0 for any sensible n, with no branch in the loop."""
        if self.fit_t0:
            return inputs
        pos = inputs > 0
        return torch.where(pos, torch.log(torch.where(pos, inputs, torch.ones_like(inputs))),
                           torch.full_like(inputs, -1e6))

    def fit_value_and_jacobian(self, theta: Tensor, prepared: Tensor) -> tuple[Tensor, Tensor]:
        """Closed-form values (B, N) and transposed Jacobian (B, P, N) on ``ln t`` (few tensor
        operations per iteration).

        Beyond ``Z_MAX`` the curve is capped; its derivative there, ``exp(-e^4) e^4 ~ 1e-22``,
        is negligible, so no mask is needed; likewise below ``Z_MIN``. ``1 - exp(-e)`` instead
        of ``-expm1(-e)``: the absolute error (~1e-16) is irrelevant to a fit, and ``expm1``
        is several times slower on CPU.
        """
        if self.fit_t0:
            f, jac = self.value_and_jacobian(theta, prepared)
            return f, jac.transpose(1, 2)
        n = torch.exp(theta[:, 1:2])
        z = n * (theta[:, 0:1] + prepared)
        e = torch.exp(z.clamp(Z_MIN, Z_MAX))
        g = torch.exp(-e)
        frac = 1.0 - g
        dfz = g * e
        cols = [dfz * n, dfz * z]
        if self.fit_fmax:
            fmax = torch.sigmoid(theta[:, 2:3])
            cols = [cols[0] * fmax, cols[1] * fmax, frac * (fmax * (1 - fmax))]
            frac = frac * fmax
        return frac, torch.stack(cols, dim=1)

    def fit_normal_equations(self, theta: Tensor, prepared: Tensor, y: Tensor, sqrt_w: Tensor
                             ) -> tuple[Tensor, Tensor, Tensor] | None:
        """Fused normal equations of the two-parameter law (ln k, ln n), no Jacobian built.

        With ``q = sqrt_w dF/dz`` the Jacobian columns are ``q n`` and ``q z``, so
        ``J^T J = [[n^2 S(q^2), n S(q^2 z)], [., S(q^2 z^2)]]`` and
        ``J^T r = [n S(q r), S(q z r)]``: five sums over the points and a 2x2 system.
        """
        if self.fit_t0 or self.fit_fmax:
            return None
        n = torch.exp(theta[:, 1:2])
        z = n * (theta[:, 0:1] + prepared)
        e = torch.exp(z.clamp(Z_MIN, Z_MAX))
        g = torch.exp(-e)
        r = sqrt_w * ((1.0 - g) - y)
        q = sqrt_w * g * e
        qr = q * r
        q2 = q * q
        q2z = q2 * z
        n1 = n[:, 0]
        s_q2, s_q2z, s_q2z2 = q2.sum(-1), q2z.sum(-1), (q2z * z).sum(-1)
        a01 = n1 * s_q2z
        a = torch.stack([torch.stack([n1 * n1 * s_q2, a01], -1),
                         torch.stack([a01, s_q2z2], -1)], -2)
        g = torch.stack([n1 * qr.sum(-1), (qr * z).sum(-1)], -1)
        return (r * r).sum(-1), a, g

    def fit_targets(self, y: Tensor, sqrt_w: Tensor) -> Tensor | None:
        """What the residuals take of the targets, once per fit: ``sqrt_w (1 - y)``
        (``r = sqrt_w exp(-e^z) - sqrt_w (1 - y)``, up to the sign), or with ``fit_fmax``
        ``sqrt_w y`` (``r = f_max sqrt_w (1 - exp(-e^z)) - sqrt_w y``); None with ``fit_t0``
        (no fused Gram matrix)."""
        if self.fit_t0:
            return None
        return sqrt_w * y if self.fit_fmax else sqrt_w * (1.0 - y)

    def fit_gram(self, theta: Any, prepared: Any, targets: Any, sqrt_w: Any) -> Any:
        """Fused Gram matrix of ``[J | r]`` for (ln k, ln n) and, with ``fit_fmax``,
        ``logit_fmax``: the Jacobian columns and residuals in closed form, written in place
        into one array, and their pairwise sums in one ``einsum`` (about a dozen array
        operations). Batch-last numpy or torch arrays, as :meth:`ParametricModel.fit_gram`
        describes; ``targets`` from :meth:`fit_targets`. Only without ``fit_t0`` (the fitter
        asks :meth:`fit_targets` first; the generic path handles the incubation time's branch).

        With ``g = sqrt_w exp(-e^z)`` and ``q = g e^z f_max`` the columns are ``q n``, ``q z``
        and ``(sqrt_w - g) f_max (1 - f_max)``. Clamping ``z`` to ``[Z_MIN, Z_MAX]`` needs no
        mask: the derivative there (below ~1e-22) is negligible. ``1 - exp(-e)`` instead of
        ``-expm1(-e)``: the absolute error (~1e-16) is irrelevant to a fit.
        """
        xp = _namespace(theta)
        n = xp.exp(theta[1])
        z = prepared * n
        z += theta[0] * n
        if xp is np:  # (two ufuncs: np.clip adds several microseconds of Python per call)
            e = np.maximum(z, Z_MIN)
            np.minimum(e, Z_MAX, out=e)
        else:
            e = z.clamp(Z_MIN, Z_MAX)
        xp.exp(e, out=e)
        # the columns of [J | r] written straight into one array, then all their pairwise sums
        # over the points in one einsum: in-place operations, as the fitter's loop spends its
        # time in array operations over a few thousand curves, not in arithmetic
        k = 4 if self.fit_fmax else 3
        v = (np.empty((k, *z.shape), dtype=z.dtype) if xp is np
             else torch.empty((k, *z.shape), dtype=z.dtype, device=z.device))
        g = v[k - 1]
        xp.negative(e, out=g)
        xp.exp(g, out=g)
        g *= sqrt_w
        xp.multiply(g, e, out=v[1])
        if self.fit_fmax:
            fmax = 1.0 / (1.0 + xp.exp(-theta[2]))
            v[1] *= fmax
            xp.subtract(sqrt_w, g, out=v[2])  # sqrt_w (1 - exp(-e)) = sqrt_w f / f_max
            xp.multiply(v[2], fmax, out=v[3])
            v[3] -= targets
            v[2] *= fmax * (1.0 - fmax)
        else:
            xp.subtract(targets, g, out=g)
        xp.multiply(v[1], n, out=v[0])
        v[1] *= z
        return xp.einsum("inb,jnb->ijb", v, v).reshape(k * k, -1)

    def fit_valley_direction(self, theta: Any, step: Any) -> Any:
        """Which creeping fits run along one of JMAK's flat valleys: +1 where n > 4 and growing
        (a step-like curve: the best fit is a step, n -> infinity, through the point nearest
        the transition), -1 where n < 0.5 and shrinking (plateau points only: the best fit is
        a constant, n -> 0), 0 elsewhere. Arrays as in :meth:`fit_valley_jump`; None with
        ``fit_t0``."""
        if self.fit_t0:
            return None
        xp = _namespace(theta)
        ln_n = theta[1]
        up = (ln_n > math.log(VALLEY_N_UP)) & (step[1] > 0)
        down = (ln_n < math.log(VALLEY_N_DOWN)) & (step[1] < 0)
        zero = ln_n * 0.0  # scalars in ``where`` would lose the dtype in torch
        return xp.where(up, zero + 1.0, xp.where(down, zero - 1.0, zero))

    def fit_valley_jump(self, theta: Any, direction: Any, prepared: Any, sqrt_w: Any) -> Any:
        """Far points along JMAK's flat valleys: the fitter's steps in ``ln n`` stay small there
        while the objective keeps falling, for tens of iterations. The jump multiplies n by
        ``VALLEY_JUMP`` (``direction`` +1) or divides it (-1), and moves ln k so that the pivot
        point, the one with ``z = n ln(k t)`` nearest 0, keeps its ``z`` and so its fitted
        fraction. Batch-last arrays as in :meth:`fit_gram`: ``theta`` (P, R), ``direction``
        (R,), ``prepared`` and ``sqrt_w`` (N, R).
        """
        xp = _namespace(theta)
        ln_n = theta[1]
        ln_n_new = ln_n + direction * math.log(VALLEY_JUMP)
        z = xp.exp(ln_n) * (theta[0] + prepared)
        pivot = xp.where(sqrt_w > 0, xp.abs(z), z * 0.0 + float("inf")).argmin(0)
        cols = xp.arange(len(ln_n)) if xp is np else torch.arange(len(ln_n), device=ln_n.device)
        out = theta.copy() if xp is np else theta.clone()
        out[0] = z[pivot, cols] / xp.exp(ln_n_new) - prepared[pivot, cols]
        out[1] = ln_n_new
        return out

    def fit_determining_points(self, theta: Tensor, inputs: Tensor, weight: Tensor) -> Tensor:
        """Points where the fitted curve still moves, between 0.1% and 99.9% of ``f_max``
        (beyond, it is flat to within any measurement's noise: such points bound k and n but
        do not determine them)."""
        # f / f_max = 1 - exp(-e^z), so the transition is an interval of z = n ln(k (t - t0))
        tau = inputs
        if self.fit_t0:
            tau = inputs - torch.exp(theta[:, self.flat_names.index("ln_t0_s"), None])
        pos = tau > 0
        z = torch.exp(theta[:, 1:2]) * (theta[:, 0:1]
                                        + torch.log(torch.where(pos, tau, torch.ones_like(tau))))
        return (pos & (weight > 0) & (z > Z_TRANSITION[0]) & (z < Z_TRANSITION[1])).sum(-1)

    def initial_guesses(self, inputs: Tensor, y: Tensor, weight: Tensor | None = None) -> Tensor:
        """Vectorised multi-start guesses (B, S, P) read from each curve.

        Starts: a weighted Avrami regression (slope n, intercept n ln k of ln(-ln(1 - f/f_max))
        against ln t on points with 0.02 < f/f_max < 0.98), and n = 1 and n = 3 placed at the
        curve's own half time (interpolated in ln t).
        """
        t, w = inputs, (torch.ones_like(y) if weight is None else weight)
        valid = (w > 0) & (t > 0)
        dtype = y.dtype
        big = torch.finfo(dtype).max
        # the half time below is read from neighbouring points: each curve's valid points in
        # time order first, the others (weight 0, t <= 0) after them
        key = torch.where(valid, t, torch.full_like(t, big))
        if not bool((key[..., 1:] >= key[..., :-1]).all()):
            order = torch.argsort(key, dim=-1, stable=True)
            t, y, w, valid = (a.gather(-1, order) for a in (t, y, w, valid))
        if self.fit_fmax:
            fmax0 = y.masked_fill(~valid, -1.0).amax(-1, keepdim=True).clamp(0.05, 0.995)
            yn = y / fmax0
        else:
            yn = y
        tpos = t.masked_fill(~valid, 1.0)
        # t0 guess: halfway to the last time still below 2% of the plateau
        if self.fit_t0:
            before = valid & (yn < 0.02)
            t_before = torch.where(before, tpos, torch.zeros_like(tpos)).amax(-1, keepdim=True)
            t_min = torch.where(valid, tpos, torch.full_like(tpos, big)).amin(-1, keepdim=True)
            t0 = torch.where(t_before > 0, 0.5 * t_before, 0.1 * t_min.clamp_max(1e300))
        # without t0, tau is tpos itself (positive): the same values at fewer operations
        tau = (tpos - t0).clamp_min(1e-300) if self.fit_t0 else tpos
        lt = torch.log(tau)
        # Avrami regression
        mid = valid & (yn > 0.02) & (yn < 0.98)
        if self.fit_t0:
            mid = mid & (tpos > t0)
        yc = yn.clamp(0.02, 0.98)
        l1m = torch.log1p(-yc)
        yy = torch.log(-l1m)
        # weighted least squares from the sums, each point weighted by the inverse variance of
        # its Avrami ordinate for a constant error in f, ((1 - f) ln(1 - f))^2: the line then
        # lies close to the least-squares fit of the curve itself, which saves LM iterations
        # (ln t and the Avrami ordinate are both O(10): no cancellation that matters here)
        m = mid * ((1.0 - yc) * l1m).square()
        cnt = m.sum(-1, keepdim=True)
        mlt, myy = m * lt, m * yy
        n_safe = cnt.clamp_min(1e-300)
        mx, my = mlt.sum(-1, keepdim=True) / n_safe, myy.sum(-1, keepdim=True) / n_safe
        sxx = (mlt * lt).sum(-1, keepdim=True) - cnt * mx * mx
        sxy = (mlt * yy).sum(-1, keepdim=True) - cnt * mx * my
        slope = sxy / sxx.clamp_min(1e-300)
        ok = (mid.sum(-1, keepdim=True) >= 2) & (sxx > 1e-8 * cnt) & (slope > 0.05)
        n_reg = torch.where(ok, slope, torch.full_like(slope, 2.0)).clamp(0.2, 12.0)
        lnk_reg = (my - n_reg * mx) / n_reg
        # half time: first point at or above half the plateau, interpolated in ln t
        above = valid & (yn >= 0.5)
        n_pts = y.shape[-1]
        has = above.any(-1, keepdim=True)
        idx = torch.where(has, above.to(torch.uint8).argmax(-1, keepdim=True), n_pts)
        i1 = idx.clamp_max(n_pts - 1)
        i0 = (i1 - 1).clamp_min(0)
        l1, l0 = lt.gather(-1, i1), lt.gather(-1, i0)
        y1, y0 = yn.gather(-1, i1), yn.gather(-1, i0)
        frac = ((0.5 - y0) / (y1 - y0).clamp_min(1e-12)).clamp(0.0, 1.0)
        l_half = torch.where(i1 > i0, l0 + frac * (l1 - l0), l1)
        if not bool(has.all()):  # no point at or above half: just beyond the last one
            l_last = lt.masked_fill(~valid, -big).amax(-1, keepdim=True)
            l_half = torch.where(has, l_half, l_last + 0.7)
        starts = []
        for n0, lnk0 in ((n_reg, lnk_reg), (torch.ones_like(n_reg), None),
                         (torch.full_like(n_reg, 3.0), None)):
            at_half = LN_LN2 / n0 - l_half
            lnk = at_half if lnk0 is None else torch.where(ok, lnk0, at_half)
            cols = [lnk, torch.log(n0)]
            if self.fit_t0:
                cols.append(torch.log(t0.clamp_min(1e-6)))
            if self.fit_fmax:
                cols.append(torch.log(fmax0) - torch.log1p(-fmax0))
            starts.append(torch.cat(cols, dim=-1))
        return torch.stack(starts, dim=1)


class ArrheniusJMAK(ParametricModel):
    """Several isotherms of one material with an Arrhenius rate constant.

    ``ln k(T) = ln k0 - Q / (R T)`` with Q in kJ/mol (any sign: polymer melt crystallisation has a
    negative apparent Q), and ``f(t, T) = f_max (1 - exp(-(k(T) t)^n(T)))``. ``n`` is shared, or one
    per temperature (``temperatures_K`` lists them; a point's temperature selects its ``n`` by a
    one-hot match within 0.01 K, so the forward stays vmap-safe).

    Example:
        >>> model = ArrheniusJMAK()
        >>> params = model.from_physical(k0_per_s=1e10, Q_kJ_per_mol=300.0, n=2.0)
        >>> x = torch.tensor([[100.0, 1500.0], [1000.0, 1500.0]], dtype=torch.float64)
        >>> model.forward(params, x).shape
        torch.Size([2])

    Args:
        temperatures_K: the isotherm temperatures, required when ``shared_n`` is False.
        shared_n: one Avrami exponent for all temperatures (default) or one per temperature.
        fit_fmax: a shared maximum fraction ``f_max`` in (0, 1).
        prior: optional :class:`Prior` over the transformed parameters.

    Shapes:
        inputs: (n, 2) columns ``[time_s, temperature_K]``; output: (n,) fractions.
    """

    name = "arrhenius_jmak"

    def __init__(self, temperatures_K: list[float] | None = None, shared_n: bool = True,
                 fit_fmax: bool = False, prior: Prior | dict | None = None) -> None:
        self.temperatures_K = None if temperatures_K is None else [float(t) for t in temperatures_K]
        self.shared_n = bool(shared_n)
        self.fit_fmax = bool(fit_fmax)
        if not self.shared_n and not self.temperatures_K:
            raise InputError("ArrheniusJMAK: a per-temperature n needs temperatures_K")
        super().__init__(prior)

    def _config(self) -> dict[str, Any]:
        return {"temperatures_K": self.temperatures_K, "shared_n": self.shared_n,
                "fit_fmax": self.fit_fmax}

    def param_specs(self) -> list[ParamSpec]:
        n_size = 0 if self.shared_n else len(self.temperatures_K or [])
        specs = [ParamSpec("ln_k0", "k0_per_s", "1/s", "log", 1e10),
                 ParamSpec("Q_kJ_per_mol", "Q_kJ_per_mol", "kJ/mol", "none", 300.0),
                 ParamSpec("ln_n", "n", "", "log", 2.0, size=n_size)]
        if self.fit_fmax:
            specs.append(ParamSpec("logit_fmax", "f_max", "", "logit", 0.9))
        return specs

    def ln_k(self, params: Params, temperature_K: Tensor) -> Tensor:
        """``ln k(T)`` with k in 1/s."""
        return params["ln_k0"] - params["Q_kJ_per_mol"] * (1e3 / R_J_PER_MOL_K) / temperature_K

    def _n(self, params: Params, temperature_K: Tensor) -> Tensor:
        if self.shared_n:
            return torch.exp(params["ln_n"])
        temps = torch.as_tensor(self.temperatures_K, dtype=temperature_K.dtype,
                                device=temperature_K.device)
        onehot = ((temperature_K.unsqueeze(-1) - temps).abs() < 0.01).to(temperature_K.dtype)
        # a temperature without its own n has none: NaN, not the n = 1 of an empty match
        unknown = torch.where(onehot.sum(-1) > 0, 0.0, float("nan")).to(temperature_K.dtype)
        return torch.exp(onehot @ params["ln_n"] + unknown)

    def forward(self, params: Params, inputs: Tensor) -> Tensor:
        """Fractions at ``inputs[:, 0]`` seconds and ``inputs[:, 1]`` kelvin."""
        t, temp = inputs[..., 0], inputs[..., 1]
        fmax = torch.sigmoid(params["logit_fmax"]) if self.fit_fmax else 1.0
        return jmak_curve(t, self.ln_k(params, temp), self._n(params, temp), 0.0, fmax)

    def value_and_jacobian(self, theta: Tensor, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """Closed-form values (B, N) and Jacobian (B, N, P) for the fitter (chain rule through
        ``ln k(T)``)."""
        t, temp = inputs[..., 0], inputs[..., 1]
        c = (1e3 / R_J_PER_MOL_K) / temp
        ln_k = theta[:, 0:1] - theta[:, 1:2] * c
        n_size = 0 if self.shared_n else len(self.temperatures_K)
        if self.shared_n:
            ln_n = theta[:, 2:3].expand_as(t)
        else:
            temps = torch.as_tensor(self.temperatures_K, dtype=t.dtype, device=t.device)
            onehot = ((temp.unsqueeze(-1) - temps).abs() < 0.01).to(t.dtype)  # (B, N, T)
            ln_n = (onehot * theta[:, None, 2:2 + n_size]).sum(-1)
        n = torch.exp(ln_n)
        pos = t > 0
        ln_t = torch.log(torch.where(pos, t, torch.ones_like(t)))
        z = n * (ln_k + ln_t)
        live = pos & (z < Z_MAX) & (z > Z_MIN)
        e = torch.exp(z.clamp(Z_MIN, Z_MAX))
        g = torch.exp(-e)
        frac = torch.where(pos, -torch.expm1(-e), torch.zeros_like(e))
        dfz = torch.where(live, g * e, torch.zeros_like(e))
        cols = [dfz * n, -dfz * n * c]
        if self.shared_n:
            cols.append(dfz * z)
        else:
            cols += [dfz * z * onehot[..., i] for i in range(n_size)]
        if self.fit_fmax:
            fmax = torch.sigmoid(theta[:, -1:])
            cols = [col * fmax for col in cols]
            cols.append(frac * (fmax * (1 - fmax)))
            frac = frac * fmax
        return frac, torch.stack(cols, dim=-1)

    def t_half_s(self, params: Params, temperature_K: Tensor) -> Tensor:
        """Half time ``ln(2)^(1/n) / k(T)`` in seconds at each temperature."""
        temperature_K = torch.as_tensor(temperature_K, dtype=params["ln_k0"].dtype,
                                        device=params["ln_k0"].device)
        n = self._n(params, temperature_K)
        return torch.exp(LN_LN2 / n - self.ln_k(params, temperature_K))

    def derived(self, params: Params) -> dict[str, Tensor]:
        if not self.temperatures_K:
            return {}
        temps = params["ln_k0"].new_tensor(self.temperatures_K)
        return {"t_half_s": self.t_half_s(params, temps),
                "ln_k_per_s": self.ln_k(params, temps)}

    def prior_starts(self, inputs: Tensor, y: Tensor, weight: Tensor, prior: Prior) -> Tensor:
        """Starts for a MAP fit from one isotherm (or any): each isotherm's JMAK guesses for
        k(T) and n, the prior's mean Q, and ln k0 = mean over isotherms of ln k(T) + Q / (R T)
        (the prior's mean itself is the fitter's other start: on few points it can sit where
        the curve is flat at 0 or 1 and the fit cannot move)."""
        sub = JMAK(fit_fmax=self.fit_fmax)
        mean = prior.mean.to(y)
        c = 1e3 / R_J_PER_MOL_K
        out = []
        for b in range(y.shape[0]):
            t, temp = inputs[b, :, 0], inputs[b, :, 1]
            live = weight[b] > 0
            temps = torch.unique(temp[live])
            # each isotherm's starts (S, P_sub), read once: (T, S, P_sub)
            guesses = torch.stack([sub.initial_guesses(t[live & (temp == tk)][None],
                                                       y[b, live & (temp == tk)][None])[0]
                                   for tk in temps])
            theta = mean.expand(guesses.shape[1], -1).clone()
            theta[:, 0] = (guesses[..., 0] + mean[1] * c / temps[:, None]).mean(0)
            if self.shared_n:
                theta[:, self.flat_names.index("ln_n")] = guesses[..., 1].median(0).values
            if self.fit_fmax:
                theta[:, self.flat_names.index("logit_fmax")] = guesses[..., 2].median(0).values
            out.append(theta)
        return torch.stack(out)

    def initial_guesses(self, inputs: Tensor, y: Tensor, weight: Tensor | None = None) -> Tensor:
        """Per isotherm JMAK guesses (Avrami regression), then ln k against 1/T by least squares.

        Needs at least two temperatures per curve set.
        """
        w = torch.ones_like(y) if weight is None else weight
        out = []
        sub = JMAK(fit_fmax=self.fit_fmax)
        for b in range(y.shape[0]):
            t, temp = inputs[b, :, 0], inputs[b, :, 1]
            live = w[b] > 0
            temps = torch.unique(temp[live])
            if len(temps) < 2:
                raise InputError("ArrheniusJMAK: an Arrhenius fit needs isotherms at two or more "
                                 f"temperatures, got {temps.tolist()} K")
            if not self.shared_n:
                known = torch.as_tensor(self.temperatures_K, dtype=temps.dtype)
                missing = [float(v) for v in temps
                           if not bool(((v - known).abs() < 0.01).any())]
                if missing:
                    raise InputError(
                        f"ArrheniusJMAK: curve {b}: temperature {missing[0]:g} K has no Avrami "
                        f"exponent of its own (temperatures_K {self.temperatures_K}, matched "
                        "within 0.01 K); list every isotherm's temperature or use shared_n")
            subs = []
            for temp_k in temps:
                sel = live & (temp == temp_k)
                subs.append(sub.initial_guesses(t[sel][None], y[b, sel][None])[0])
            guesses = torch.stack(subs)  # (T, S, P_sub)
            inv_t = 1.0 / temps
            a = torch.stack([torch.ones_like(inv_t), inv_t], dim=-1)
            starts = []
            for s in range(guesses.shape[1]):
                coef = torch.linalg.lstsq(a, guesses[:, s, 0:1]).solution[:, 0]
                ln_k0, q = coef[0], -coef[1] * R_J_PER_MOL_K / 1e3
                ln_n0 = guesses[:, s, 1].median()
                cols = [ln_k0.reshape(1), q.reshape(1)]
                if self.shared_n:
                    cols.append(ln_n0.reshape(1))
                else:
                    cols.append(ln_n0.expand(len(self.temperatures_K)).clone())
                if self.fit_fmax:
                    cols.append(guesses[:, s, 2].median().reshape(1))
                starts.append(torch.cat(cols))
            out.append(torch.stack(starts))
        return torch.stack(out)
