"""Batched fitting against closed forms, scipy.optimize and real tungsten / bainite curves."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.optimize import curve_fit, minimize

from matmeta.errors import InputError
from matmeta.fitting import fit_curves, fit_jmak, levenberg_marquardt, normal_equations
from matmeta.models.parametric import JMAK, Arrhenius, ArrheniusJMAK, Prior
from tests.helpers import shared_dataset

F64 = torch.float64
LN_LN2 = math.log(math.log(2.0))


def jmak_np(t, ln_k, ln_n):
    """An independent numpy JMAK in (ln k, ln n), overflow-safe, for scipy."""
    n = np.exp(ln_n)
    z = np.minimum(n * (ln_k + np.log(np.where(t > 0, t, 1.0))), 30.0)
    return np.where(t > 0, -np.expm1(-np.exp(z)), 0.0)


def scipy_best(t, f, sigma=None):
    """curve_fit from the textbook Avrami-plot guess and a few half-time guesses; best RSS."""
    starts = []
    sel = (f > 0.02) & (f < 0.98) & (t > 0)
    if sel.sum() >= 2:
        slope, icpt = np.polyfit(np.log(t[sel]), np.log(-np.log1p(-f[sel])), 1)
        if slope > 0:
            starts.append([icpt / slope, np.log(slope)])
    t_half = np.median(t[t > 0])
    for n in (0.5, 1.0, 2.0, 4.0):
        starts.append([LN_LN2 / n - np.log(t_half), np.log(n)])
    best = None
    for p0 in starts:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                p, cov = curve_fit(jmak_np, t, f, p0=p0, sigma=sigma, maxfev=5000)
        except RuntimeError:
            continue
        w = 1.0 if sigma is None else 1.0 / sigma**2
        rss = float(np.sum(w * (jmak_np(t, *p) - f) ** 2))
        if best is None or rss < best[0]:
            best = (rss, p, cov)
    return best


# the tolerances `matmeta jmak fit` needs on the digitised tungsten file
DIGITISED = {"fraction_tolerance": 0.15, "allow_negative_time": True}


def tungsten_curves():
    df = pd.read_csv(shared_dataset("kinetics/tungsten_recrystallization.csv"))
    out = []
    for key, g in df.groupby(["dataset_id", "temperature_K"]):
        g = g.sort_values("time_s")
        out.append((key, g["time_s"].to_numpy(), g["fraction"].to_numpy(),
                    g["fraction_std"].to_numpy()))
    return out


def test_lm_solves_linear_least_squares_exactly():
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.uniform(0, 1, (50, 8)))
    coef = torch.as_tensor(rng.normal(size=(50, 3)))
    y = coef[:, :1] + coef[:, 1:2] * x + coef[:, 2:3] * x**2 + 0.01 * torch.as_tensor(
        rng.normal(size=(50, 8)))

    def fn(theta, x, y):
        r = theta[:, :1] + theta[:, 1:2] * x + theta[:, 2:3] * x**2 - y
        return normal_equations(r, torch.stack([torch.ones_like(x), x, x**2], dim=1))

    res = levenberg_marquardt(fn, torch.zeros(50, 3, dtype=F64), (x, y), ftol=1e-15, xtol=1e-15)
    assert bool(res.converged.all())
    for i in range(50):
        a = np.stack([np.ones(8), x[i].numpy(), x[i].numpy() ** 2], -1)
        ref = np.linalg.lstsq(a, y[i].numpy(), rcond=None)[0]
        np.testing.assert_allclose(res.theta[i].numpy(), ref, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("fit_t0,fit_fmax", [(False, False), (True, False), (False, True),
                                             (True, True)])
def test_noiseless_curves_recover_known_parameters(fit_t0, fit_fmax):
    rng = np.random.default_rng(1)
    model = JMAK(fit_t0=fit_t0, fit_fmax=fit_fmax)
    truths, times, fracs = [], [], []
    for _ in range(40):
        phys = {"k_per_s": 10 ** rng.uniform(-6, -1), "n": rng.uniform(0.6, 5.0),
                "t0_s": 0.0, "f_max": 1.0}
        t_half = math.log(2) ** (1 / phys["n"]) / phys["k_per_s"]
        if fit_t0:
            phys["t0_s"] = 0.3 * t_half
        if fit_fmax:
            phys["f_max"] = rng.uniform(0.5, 0.95)
        t = phys["t0_s"] + t_half * np.geomspace(0.1, 4.0, int(rng.integers(8, 16)))
        if fit_t0:  # points before the incubation time, too
            t = np.concatenate([[0.2 * phys["t0_s"], 0.6 * phys["t0_s"]], t])
        p = model.from_physical(**{s.physical_name: phys[s.physical_name] for s in model.specs})
        fracs.append(model.forward(p, torch.as_tensor(t)).numpy())
        times.append(t)
        truths.append(phys)
    res = fit_jmak(times, fracs, fit_t0=fit_t0, fit_fmax=fit_fmax)
    phys = res.physical()
    assert bool(res.converged.all())
    for i, truth in enumerate(truths):
        for name in [s.physical_name for s in model.specs]:
            assert math.isclose(phys[name][i], truth[name], rel_tol=1e-6), (i, name)
    assert float(res.rmse.max()) < 1e-8


def test_time_unit_argument_gives_seconds():
    t_min = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    model = JMAK()
    f = model.forward(model.from_physical(k_per_s=1 / 300.0, n=2.0),
                      torch.as_tensor(t_min * 60)).numpy()
    res = fit_jmak(t_min, f, time_unit="min")
    assert math.isclose(res.physical()["k_per_s"][0], 1 / 300.0, rel_tol=1e-7)
    with pytest.raises(InputError, match="time unit"):
        fit_jmak(t_min, f, time_unit="d")


@pytest.mark.shared_data
def test_every_tungsten_curve_converges_and_matches_or_beats_scipy():
    curves = tungsten_curves()
    # digitised data: a few fractions overshoot [0, 1] by up to 0.13 and a few times are < 0
    res = fit_jmak([c[1] for c in curves], [c[2] for c in curves], **DIGITISED)
    assert bool(res.converged.all()), [c[0] for c, ok in zip(curves, res.converged, strict=True)
                                       if not ok]
    poor = res.poorly_determined
    close = 0
    for i, (key, t, f, _) in enumerate(curves):
        best = scipy_best(t, f)
        assert best is not None
        rmse_sp = math.sqrt(best[0] / len(t))
        assert float(res.rmse[i]) <= rmse_sp + 1e-7, key
        if not bool(poor[i]) and math.isclose(float(res.rmse[i]), rmse_sp, rel_tol=1e-6):
            np.testing.assert_allclose(res.theta[i].numpy(), best[1], rtol=1e-4, atol=1e-4)
            # standard errors: the same Jacobian covariance scipy reports
            np.testing.assert_allclose(res.stderr[i].numpy(), np.sqrt(np.diag(best[2])),
                                       rtol=2e-3)
            close += 1
    assert close >= 15


@pytest.mark.shared_data
def test_weighted_fit_and_standard_errors_match_scipy_with_sigma():
    curves = [c for c in tungsten_curves() if c[0][0] == "W_Lopez2015_HR"]
    sig = [np.maximum(np.nan_to_num(c[3], nan=0.05), 0.01) for c in curves]
    res = fit_jmak([c[1] for c in curves], [c[2] for c in curves], fraction_std=sig,
                   **DIGITISED)
    for i, c in enumerate(curves):
        best = scipy_best(c[1], c[2], sigma=sig[i])
        np.testing.assert_allclose(res.theta[i].numpy(), best[1], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(res.stderr[i].numpy(), np.sqrt(np.diag(best[2])), rtol=2e-3)


def test_map_from_two_points_equals_direct_minimisation():
    prior = Prior.from_std("jmak", ["ln_k", "ln_n"], [math.log(1e-3), math.log(2.0)], [1.5, 0.4],
                           noise_std=0.05)
    t = np.array([400.0, 1500.0])
    f = np.array([0.2, 0.9])
    res = fit_jmak(t, f, prior=prior)
    mu, cov_inv = prior.mean.numpy(), np.linalg.inv(prior.cov.numpy())

    def objective(th):
        r = (jmak_np(t, *th) - f) / 0.05
        d = th - mu
        return float(r @ r + d @ cov_inv @ d)

    ref = minimize(objective, mu, method="Nelder-Mead",
                   options={"xatol": 1e-11, "fatol": 1e-14, "maxiter": 20000})
    np.testing.assert_allclose(res.theta[0].numpy(), ref.x, atol=1e-6)
    assert math.isclose(float(res.cost[0]), ref.fun, rel_tol=1e-8)
    assert res.map and bool(res.converged[0])
    # Laplace covariance: inverse of the Gauss-Newton Hessian of the objective / 2
    h = np.zeros((2, 2))
    eps = 1e-5
    for a in range(2):
        for b in range(2):
            da, db = np.eye(2)[a] * eps, np.eye(2)[b] * eps
            h[a, b] = (objective(ref.x + da + db) - objective(ref.x + da - db)
                       - objective(ref.x - da + db) + objective(ref.x - da - db)) / (4 * eps**2)
    # the Gauss-Newton curvature is close to the true one at a small-residual optimum
    np.testing.assert_allclose(res.cov[0].numpy(), np.linalg.inv(h / 2), rtol=0.15)


def test_map_with_full_covariance_prior_and_four_points():
    cov = np.array([[1.0, -0.3], [-0.3, 0.2]])
    prior = Prior("jmak", ["ln_k", "ln_n"], [math.log(2e-3), math.log(1.5)], cov, noise_std=0.03)
    t = np.array([100.0, 300.0, 600.0, 1200.0])
    f = np.array([0.12, 0.43, 0.71, 0.93])
    res = fit_jmak(t, f, prior=prior)
    mu, cinv = prior.mean.numpy(), np.linalg.inv(cov)
    obj = lambda th: float((((jmak_np(t, *th) - f) / 0.03) ** 2).sum()  # noqa: E731
                           + (th - mu) @ cinv @ (th - mu))
    ref = minimize(obj, mu, method="BFGS", options={"gtol": 1e-10})
    np.testing.assert_allclose(res.theta[0].numpy(), ref.x, atol=1e-5)


def test_fewer_points_than_parameters_needs_a_prior():
    with pytest.raises(InputError, match="1 points for 2 free parameters.*give a prior"):
        fit_jmak([100.0], [0.4])
    with pytest.raises(InputError, match="2 points for 3 free parameters"):
        fit_jmak([100.0, 200.0], [0.4, 0.6], fit_fmax=True)
    prior = Prior.from_std("jmak", ["ln_k", "ln_n"], [-5.0, 0.5], [1.0, 0.3])
    assert bool(fit_jmak([100.0], [0.4], prior=prior).converged[0])


def test_no_curves_is_a_clear_error():
    with pytest.raises(InputError, match="no curves to fit"):
        fit_curves(JMAK(), [], [])
    with pytest.raises(InputError, match="0 points for 2 free parameters"):
        fit_curves(JMAK(), [np.zeros(0)], [np.zeros(0)])


def test_all_equal_fractions_and_nan_are_refused():
    with pytest.raises(InputError, match="all 3 target values equal 0.5"):
        fit_jmak([1.0, 2.0, 3.0], [0.5, 0.5, 0.5])
    with pytest.raises(InputError, match="curve 1, point 1: fraction is nan; expected a finite"):
        fit_jmak([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]], [[0.1, 0.5, 0.9], [0.1, np.nan, 0.9]])
    with pytest.raises(InputError, match="sigma must be positive"):
        fit_jmak([1.0, 2.0, 3.0], [0.1, 0.5, 0.9], fraction_std=[0.1, 0.0, 0.1])


def test_poorly_determined_fits_are_flagged_with_their_correlation():
    model = JMAK()
    good_t = np.geomspace(100, 10000, 12)
    good_f = model.forward(model.from_physical(k_per_s=1e-3, n=2.0),
                           torch.as_tensor(good_t)).numpy()
    good_f = good_f + 0.01 * np.random.default_rng(0).normal(size=12)
    # a step: all points at 0 or 1, nothing in between tells k and n apart
    step_t = np.array([100.0, 200.0, 300.0, 1000.0, 2000.0])
    step_f = np.array([0.0, 0.01, 0.0, 1.0, 0.99])
    res = fit_jmak([good_t, step_t], [good_f, step_f], fraction_tolerance=0.05)
    flags = res.poorly_determined.tolist()
    assert flags == [False, True]
    corr = res.nk_correlation
    assert torch.isfinite(corr[0]) and abs(float(corr[0])) <= 1.0
    table = res.table()
    assert {"nk_correlation", "poorly_determined", "t_half_s", "k_per_s_se"} <= set(table.columns)


@pytest.mark.parametrize("fit_t0,fit_fmax", [(False, False), (False, True), (True, False)])
def test_exact_steps_are_poorly_determined_despite_tiny_standard_errors(fit_t0, fit_fmax):
    """A step fitted exactly: a near-vertical curve through every point, with standard
    errors near zero (the residuals vanish), though any steeper curve with its midpoint
    anywhere between the last 0 and the first 1 fits as well. Flagged by counting the points
    where the fitted curve still moves (f / f_max in (0.001, 0.999)), checked against the
    fitted curve itself; a well-sampled curve keeps its flag off, and so does a precise curve
    with points at 1.5% and 98.5% (they pin k and n)."""
    t = np.array([10.0, 20.0, 40.0, 80.0, 160.0, 320.0])
    h = 0.9 if fit_fmax else 1.0
    steps = [np.array([0, 0, 0, h, h, h]), np.array([0, 0, 0, 0, 0, h]),
             np.array([0, 0, 0.3 * h, h, h, h])]
    good_t = np.geomspace(10, 1000, 12)
    good = h * jmak_np(good_t, math.log(1 / 60.0), math.log(1.5))
    good = good + 0.01 * np.random.default_rng(1).normal(size=12)
    res = fit_jmak([t, t, t, good_t], [*steps, good], fit_t0=fit_t0, fit_fmax=fit_fmax,
                   fraction_tolerance=0.05)
    model = JMAK(fit_t0=fit_t0, fit_fmax=fit_fmax)
    for i, tt in enumerate([t, t, t, good_t]):
        params = model.unflatten(res.theta[i])
        f = model.forward(params, torch.as_tensor(tt)).numpy()
        fmax = float(torch.sigmoid(params["logit_fmax"])) if fit_fmax else 1.0
        inside = int(((f / fmax > 1e-3) & (f / fmax < 1 - 1e-3)).sum())
        assert int(res.n_determining[i]) == inside
    assert res.n_determining[:3].max() <= 1 and int(res.n_determining[3]) >= 6
    assert res.poorly_determined.tolist() == [True, True, True, False]
    assert float(res.stderr[0].max()) < 0.1  # why the standard errors alone miss it
    # under a prior, the prior determines what the points leave open: no such count
    prior = Prior.from_std("jmak", model.flat_names, res.theta[3].tolist(),
                           [1.0] * model.num_params)
    assert fit_jmak([t], [steps[0]], fit_t0=fit_t0, fit_fmax=fit_fmax,
                    prior=prior).n_determining is None


def test_precise_points_in_the_tails_keep_the_fit_determined():
    """Three precise points (noise 0.003) at 1.5%, 50% and 98.5% of a curve pin k and n: not
    flagged (a 2-98% window once flagged such fits, whose standard errors are tiny and right)."""
    lk, n = math.log(1 / 100.0), 2.0
    t = np.exp(np.log(-np.log1p(-np.array([0.015, 0.5, 0.985]))) / n - lk)
    y = jmak_np(t, lk, math.log(n)) + 0.003 * np.random.default_rng(2).normal(size=3)
    res = fit_jmak(t, y)
    assert int(res.n_determining[0]) == 3 and not bool(res.poorly_determined[0])
    assert float(res.stderr[0].max()) < 0.05
    ref, _ = curve_fit(lambda tt, a, b: jmak_np(tt, a, b), t, y, p0=[lk, math.log(n)])
    np.testing.assert_allclose(res.theta[0].numpy(), ref, rtol=1e-5, atol=1e-6)


def test_one_isotherm_under_an_arrhenius_prior_is_the_map_fit():
    """Three points at one temperature say nothing of Q alone (refused without a prior); under
    an Arrhenius prior the fit is the MAP point, checked against a direct minimisation of the
    MAP objective (the prior's mean, where the curve is flat at 1 on every point, cannot move
    the fit: the starts read k(T) and n from the points)."""
    from matmeta.workflows._kinetics import fit_jmak_with_prior

    model = ArrheniusJMAK()
    t, f, temp = np.array([100.0, 1000.0, 5000.0]), np.array([0.05, 0.4, 0.9]), 1000.0
    x = np.stack([t, np.full(3, temp)], -1)
    with pytest.raises(InputError, match="two or more temperatures"):
        fit_curves(model, [x], [f])
    prior = Prior.from_std("arrhenius_jmak", model.flat_names, [28.0, 250.0, 0.7],
                           [3.0, 50.0, 0.5], model_config=model.config())
    fit = fit_jmak_with_prior(t, f, prior, temperature_K=np.full(3, temp), noise_std=0.03)
    w, mu, xt = prior.precision_sqrt.numpy(), prior.mean.numpy(), torch.as_tensor(x)

    def objective(th):
        pred = model.forward(model.unflatten(torch.as_tensor(th)), xt).numpy()
        return float((((pred - f) / 0.03) ** 2).sum() + ((w @ (th - mu)) ** 2).sum())

    theta = fit.posterior.theta.numpy()
    best = minimize(objective, theta + 0.3, method="Nelder-Mead",
                    options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000})
    assert objective(theta) <= best.fun + 1e-8
    np.testing.assert_allclose(theta, best.x, rtol=1e-5, atol=1e-5)
    assert objective(mu) > objective(theta) + 100  # the prior's mean alone is far off
    # the points pin k(1000 K); Q keeps most of its prior spread
    sd = fit.posterior.cov.diagonal().sqrt()
    assert 10.0 < float(sd[1]) < 50.0


def test_per_temperature_n_needs_every_isotherm_listed():
    """A per-temperature n at a temperature the model does not list: the fit refuses it (it
    once fitted that isotherm with n = 1, silently), and the curve there is NaN, not n = 1."""
    t = np.array([100.0, 200, 400, 800, 1600])
    y = np.array([0.05, 0.2, 0.6, 0.95, 1.0])
    x = np.concatenate([np.c_[t, np.full(5, 900.0)], np.c_[t / 3, np.full(5, 950.0)],
                        np.c_[t / 9, np.full(5, 1000.0)]])
    with pytest.raises(InputError, match="temperature 1000 K has no Avrami exponent"):
        fit_curves(ArrheniusJMAK(temperatures_K=[900.0, 950.0], shared_n=False), [x],
                   [np.tile(y, 3)])
    model = ArrheniusJMAK(temperatures_K=[900.0, 950.0, 1000.005], shared_n=False)
    res = fit_curves(model, [x], [np.tile(y, 3)])
    assert bool(res.converged[0])
    params = model.unflatten(res.theta[0])
    n = model._n(params, torch.tensor([900.0, 950.0, 1000.0, 1100.0], dtype=F64))
    assert torch.isfinite(n[:3]).all() and torch.isnan(n[3])
    ln_n = params["ln_n"]
    torch.testing.assert_close(torch.log(n[:3]), ln_n)
    f = model.forward(params, torch.tensor([[400.0, 1100.0]], dtype=F64))
    assert torch.isnan(f).all()


def test_an_exponent_without_points_leaves_the_other_standard_errors_finite():
    """One per-temperature model for grades measured at different temperatures: a grade
    without points at 1000 K cannot say anything of n(1000 K) (NaN), but its Q, ln k0 and its
    own exponents are as well determined as in a model that lists only its temperatures
    (they once all became NaN: the curvature matrix is singular in that one direction)."""
    t = np.array([100.0, 200, 400, 800, 1600])
    y = np.array([0.05, 0.2, 0.6, 0.95, 1.0])
    x = np.concatenate([np.c_[t, np.full(5, 900.0)], np.c_[t / 3, np.full(5, 950.0)]])
    y2 = np.concatenate([y, np.clip(y + 0.03, 0, 1)])
    wide = fit_curves(ArrheniusJMAK(temperatures_K=[900.0, 950.0, 1000.0], shared_n=False),
                      [x], [y2])
    own = fit_curves(ArrheniusJMAK(temperatures_K=[900.0, 950.0], shared_n=False), [x], [y2])
    se_wide, se_own = wide.stderr[0], own.stderr[0]
    assert torch.isnan(se_wide[4]) and bool(wide.poorly_determined[0])
    torch.testing.assert_close(se_wide[:4], se_own, rtol=1e-5, atol=0)
    torch.testing.assert_close(wide.theta[0, :4], own.theta[0], rtol=1e-6, atol=1e-6)
    assert torch.isnan(wide.cov[0, 4]).all() and torch.isnan(wide.cov[0, :, 4]).all()


def test_arrhenius_jmak_recovers_Q_on_synthetic_isotherms():
    rng = np.random.default_rng(3)
    for q_true in (420.0, -150.0):
        temps = [1400.0, 1450.0, 1500.0, 1550.0] if q_true > 0 else [300.0, 305.0, 310.0, 315.0]
        model = ArrheniusJMAK()
        ln_k_ref = math.log(1e-4)
        ln_k0 = ln_k_ref + q_true * 1e3 / (8.314462618 * temps[1])
        truth = model.from_physical(k0_per_s=math.exp(ln_k0), Q_kJ_per_mol=q_true, n=2.5)
        xs, ys = [], []
        for temp in temps:
            ln_k = float(model.ln_k(truth, torch.tensor(temp, dtype=F64)))
            t_half = math.log(2) ** (1 / 2.5) / math.exp(ln_k)
            t = t_half * np.geomspace(0.2, 3.0, 8)
            xs.append(np.stack([t, np.full_like(t, temp)], -1))
        x = np.concatenate(xs)
        y_clean = model.forward(truth, torch.as_tensor(x)).numpy()
        res = fit_curves(model, [x], [y_clean])
        phys = res.physical()
        assert math.isclose(phys["Q_kJ_per_mol"][0], q_true, rel_tol=1e-6)
        assert math.isclose(phys["n"][0], 2.5, rel_tol=1e-6)
        ys = y_clean + 0.02 * rng.normal(size=len(y_clean))
        res = fit_curves(model, [x], [ys])
        phys = res.physical()
        assert abs(phys["Q_kJ_per_mol"][0] - q_true) < 4 * phys["Q_kJ_per_mol_se"][0]


def test_arrhenius_law_fit_is_the_straight_line():
    temps = np.array([600.0, 650.0, 700.0, 750.0, 800.0])
    ln_k = np.log(1e9) - 180e3 / (8.314462618 * temps) + np.array([0.02, -0.01, 0.03, 0, -0.02])
    res = fit_curves(Arrhenius(), [temps], [ln_k])
    slope, icpt = np.polyfit(1.0 / temps, ln_k, 1)
    phys = res.physical()
    assert math.isclose(phys["Q_kJ_per_mol"][0], -slope * 8.314462618 / 1e3, rel_tol=1e-8)
    assert math.isclose(math.log(phys["k0_per_s"][0]), icpt, rel_tol=1e-8)


@pytest.mark.shared_data
def test_bainite_needs_f_max():
    df = pd.read_csv(shared_dataset("kinetics/bainite_dilatometry.csv"))
    t, f = df["time_s"].to_numpy(), df["fraction"].to_numpy()
    # dilatometry baseline noise: fractions down to -0.008 near t = 0
    plain = fit_jmak(t, f, fraction_tolerance=0.01)
    free = fit_jmak(t, f, fit_fmax=True, fraction_tolerance=0.01)
    assert bool(free.converged[0])
    fmax = free.physical()["f_max"][0]
    assert 0.6 < fmax < 0.72
    assert float(free.rmse[0]) < 0.5 * float(plain.rmse[0])
    # scipy on the same three-parameter law from a sensible guess does no better
    def f3(tt, ln_k, ln_n, logit):
        return jmak_np(tt, ln_k, ln_n) / (1 + np.exp(-logit))
    p, _ = curve_fit(f3, t, f, p0=[math.log(1 / 100.0), 0.0, 0.7], maxfev=10000)
    assert float(free.rmse[0]) <= math.sqrt(np.mean((f3(t, *p) - f) ** 2)) + 1e-9


def test_all_multistart_modes_agree_on_clean_curves():
    model = JMAK()
    t = [np.geomspace(10, 1e4, 9) for _ in range(5)]
    f = [model.forward(model.from_physical(k_per_s=k, n=n), torch.as_tensor(tt)).numpy()
         for tt, (k, n) in zip(t, [(1e-3, 1), (3e-3, 2), (1e-2, 3), (5e-4, 0.7), (2e-3, 4)],
                               strict=True)]
    a = fit_curves(model, t, f, multistart="all")
    b = fit_curves(model, t, f, multistart="adaptive")
    torch.testing.assert_close(a.theta, b.theta, rtol=1e-6, atol=1e-8)
    with pytest.raises(InputError, match="multistart"):
        fit_curves(model, t, f, multistart="some")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_same_fit_on_gpu():
    t = np.geomspace(10, 1e4, 9)
    f = 1 - np.exp(-((1e-3 * t) ** 2))
    cpu = fit_jmak(t, f)
    gpu = fit_jmak(t, f, device="cuda")
    torch.testing.assert_close(gpu.theta.cpu(), cpu.theta, rtol=1e-8, atol=1e-10)


def test_zero_weight_is_exact_deletion():
    rng = np.random.default_rng(5)
    t = np.geomspace(30, 3000, 10)
    f = 1 - np.exp(-((2e-3 * t) ** 1.8)) + 0.02 * rng.normal(size=10)
    w = np.ones(10)
    w[4] = 0.0
    with_zero = fit_jmak(t, f, weight=w, fraction_tolerance=0.1)
    without = fit_jmak(np.delete(t, 4), np.delete(f, 4), fraction_tolerance=0.1)
    torch.testing.assert_close(with_zero.theta, without.theta, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(with_zero.cov, without.cov, rtol=1e-6, atol=1e-12)
    assert int(with_zero.n_points[0]) == 9


@pytest.mark.parametrize("fit_t0,fit_fmax", [(False, False), (False, True), (True, False)])
def test_weight_zero_points_and_point_order_change_no_fit(fit_t0, fit_fmax):
    """Over many noisy curves: a point of weight 0 is exactly a deleted point, and the order
    of the points does not matter (the starts are read in time order from the valid points;
    a weight-0 point next to the half time once gave a start at t = 1 s and a fit stuck on a
    plateau, reported converged)."""
    rng = np.random.default_rng(7)
    times, fracs, weights = [], [], []
    for _ in range(150):
        ln_k, n = rng.uniform(math.log(1e-5), math.log(1e-2)), rng.uniform(0.7, 4.0)
        t_half = math.exp(LN_LN2 / n - ln_k)
        t = np.sort(t_half * np.exp(rng.uniform(-2.0, 2.0, int(rng.integers(8, 16)))))
        f = 0.85 if fit_fmax else 1.0
        t0 = 0.2 * t[0] if fit_t0 else 0.0
        times.append(t + t0)
        fracs.append(f * jmak_np(t, ln_k, math.log(n)) + rng.normal(0.0, 0.01, len(t)))
        w = (rng.uniform(size=len(t)) > 0.3).astype(float)
        w[rng.choice(len(t), 5, replace=False)] = 1.0  # at least five points each
        weights.append(w)
    model = JMAK(fit_t0=fit_t0, fit_fmax=fit_fmax)
    masked = fit_curves(model, times, fracs, weight=weights)
    deleted = fit_curves(model, [t[w > 0] for t, w in zip(times, weights, strict=True)],
                         [f[w > 0] for f, w in zip(fracs, weights, strict=True)])
    torch.testing.assert_close(masked.cost, deleted.cost, rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(masked.theta, deleted.theta, rtol=1e-6, atol=1e-6)
    perm = [rng.permutation(len(t)) for t in times]
    shuffled = fit_curves(model, [t[p] for t, p in zip(times, perm, strict=True)],
                          [f[p] for f, p in zip(fracs, perm, strict=True)],
                          weight=[w[p] for w, p in zip(weights, perm, strict=True)])
    torch.testing.assert_close(shuffled.cost, masked.cost, rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(shuffled.theta, masked.theta, rtol=1e-6, atol=1e-6)


def test_padded_tensor_input_equals_list_input():
    t = [np.geomspace(10, 1e4, 6), np.geomspace(10, 1e4, 9)]
    f = [1 - np.exp(-((1e-3 * tt) ** 2)) for tt in t]
    from matmeta.fitting import pad_curves

    x, y, w, _ = pad_curves(t, f)
    a = fit_curves(JMAK(), t, f)
    b = fit_curves(JMAK(), x, y, weight=w)
    torch.testing.assert_close(a.theta, b.theta)


def test_fit_jmak_refuses_out_of_range_fractions_and_negative_times():
    t, f = [-10.0, 60.0, 120.0, 240.0], [0.1, 1.5, -0.2, 0.9]
    with pytest.raises(InputError, match=r"^curve 0, point 0: negative time -10 s; expected >= 0"):
        fit_jmak(t, f)
    with pytest.raises(InputError, match=r"^curve 0, point 1: fraction 1.5 outside \[0, 1\]"):
        fit_jmak(t, f, allow_negative_time=True)
    with pytest.raises(InputError, match=r"^curve 0, point 1: fraction 1.5 outside \[-0.3, 1.3\]"):
        fit_jmak(t, f, allow_negative_time=True, fraction_tolerance=0.3)
    # the curve label (or index) and the point index name the offender in a batch
    good_t, good_f = [60.0, 120.0, 240.0], [0.1, 0.5, 0.9]
    with pytest.raises(InputError, match=r"^curve B, point 2: fraction -0.2 outside"):
        fit_jmak([good_t, good_t], [good_f, [0.1, 0.5, -0.2]], labels=["A", "B"])
    with pytest.raises(InputError, match=r"^curve 1, point 0: negative time -60 s"):
        fit_jmak([[1.0, 2.0, 4.0], [-1.0, 2.0, 4.0]], [good_f, good_f], time_unit="min")
    with pytest.raises(InputError, match="fraction-tolerance"):
        fit_jmak(good_t, good_f, fraction_tolerance=-0.1)


def test_fit_jmak_tolerances_keep_points_as_measured():
    """Accepted overshoot is fitted as measured (not clipped): the fit equals scipy's on the
    raw values, and a negative time is predicted as f = 0 like t = 0."""
    from scipy.optimize import curve_fit

    t = np.array([-30.0, 100.0, 300.0, 600.0, 1200.0, 2400.0, 4800.0])
    f = np.array([0.02, 0.08, 0.35, 0.7, 0.97, 1.04, 1.01])
    res = fit_jmak(t, f, fraction_tolerance=0.05, allow_negative_time=True)
    assert bool(res.converged[0])

    def law(tt, ln_k, ln_n):
        return 1 - np.exp(-(np.exp(ln_k) * np.maximum(tt, 0)) ** np.exp(ln_n))

    ref, _ = curve_fit(law, t, f, p0=[math.log(1e-3), math.log(1.5)], xtol=1e-14, ftol=1e-14)
    np.testing.assert_allclose(res.theta[0].numpy(), ref, rtol=1e-6, atol=1e-8)
