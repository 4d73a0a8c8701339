"""JMAK from a few points with a meta-learned prior: the MAP fit, its Laplace posterior, the
parameter table, the band and the exact leave-one-out influence, each against an answer computed
independently (scipy minimisation, finite-difference Jacobians, brute-force refits); the report
folder; bad input."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import optimize

from matmeta.errors import InputError
from matmeta.models.parametric import JMAK, ArrheniusJMAK, Prior
from matmeta.workflows._kinetics import fit_jmak_with_prior, write_jmak_report
from tests.helpers import DATA

PRIOR = Prior.from_std("jmak", ["ln_k", "ln_n"], [-7.0, 0.7], [1.5, 0.3], noise_std=0.03)
T3 = np.array([300.0, 600.0, 1500.0])
F3 = np.array([0.1, 0.3, 0.93])


def _jmak_np(theta, t):
    ln_k, ln_n = theta
    return -np.expm1(-np.exp(np.exp(ln_n) * (ln_k + np.log(t))))


def _map_objective(theta, t, f, prior, noise, sigma=None):
    s = noise if sigma is None else sigma
    r = (_jmak_np(theta, t) - f) / s
    d = theta - prior.mean.numpy()
    return float(r @ r + d @ np.linalg.solve(prior.cov.numpy(), d))


def _scipy_map(t, f, prior=PRIOR, noise=0.03, sigma=None):
    best = None
    for x0 in (prior.mean.numpy(), np.array([-6.0, 0.5]), np.array([-7.5, 1.0])):
        r = optimize.minimize(_map_objective, x0, args=(t, f, prior, noise, sigma),
                              method="Nelder-Mead",
                              options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000})
        if best is None or r.fun < best.fun:
            best = r
    return best.x


def test_map_fit_is_the_minimum_of_the_map_objective():
    fit = fit_jmak_with_prior(T3, F3, PRIOR)
    np.testing.assert_allclose(fit.posterior.theta.numpy(), _scipy_map(T3, F3), atol=1e-6)
    # per-point fraction_std weighs each residual by 1/std^2
    std = np.array([0.02, 0.05, 0.03])
    fit_w = fit_jmak_with_prior(T3, F3, PRIOR, fraction_std=std)
    np.testing.assert_allclose(fit_w.posterior.theta.numpy(), _scipy_map(T3, F3, sigma=std),
                               atol=1e-6)


def test_laplace_covariance_is_the_inverse_gauss_newton_curvature_by_finite_differences():
    fit = fit_jmak_with_prior(T3, F3, PRIOR)
    th = fit.posterior.theta.numpy()
    h = 1e-6
    jac = np.stack([(_jmak_np(th + h * e, T3) - _jmak_np(th - h * e, T3)) / (2 * h)
                    for e in np.eye(2)], axis=1)
    precision = jac.T @ jac / 0.03**2 + np.linalg.inv(PRIOR.cov.numpy())
    np.testing.assert_allclose(fit.posterior.cov.numpy(), np.linalg.inv(precision), rtol=1e-5)


def test_parameter_table_matches_the_delta_method_and_the_laws_half_time():
    fit = fit_jmak_with_prior(T3, F3, PRIOR)
    table = fit.parameters().set_index("quantity")
    th = fit.posterior.theta.numpy()
    cov = fit.posterior.cov.numpy()

    def ln_t_half(v):
        return math.log(math.log(2.0)) / math.exp(v[1]) - v[0]

    t_half = float(JMAK().t_half_s(JMAK().unflatten(fit.posterior.theta)))
    assert table.loc["t_half_s", "posterior"] == pytest.approx(t_half, rel=1e-10)
    g = np.array([(ln_t_half(th + 1e-6 * e) - ln_t_half(th - 1e-6 * e)) / 2e-6
                  for e in np.eye(2)])
    sd = math.sqrt(g @ cov @ g)
    assert table.loc["t_half_s", "posterior_se"] == pytest.approx(t_half * sd, rel=1e-6)
    assert table.loc["t_half_s", "posterior_low95"] == pytest.approx(
        t_half * math.exp(-1.959963984540054 * sd), rel=1e-6)
    assert table.loc["n", "prior"] == pytest.approx(math.exp(0.7))
    assert table.loc["n", "prior_se"] == pytest.approx(math.exp(0.7) * 0.3)
    assert table.loc["k_per_s", "posterior"] == pytest.approx(math.exp(th[0]))


def test_band_is_narrow_at_the_points_and_widens_where_there_are_none():
    # two early points (f = 0.1, 0.3): the transition and the tail are unmeasured
    fit = fit_jmak_with_prior(T3[:2], F3[:2], PRIOR)
    t_half = fit.t_half_s()
    band = fit.band(np.array([300.0, 600.0, t_half, 2.0 * t_half]))
    width = (band["upper"] - band["lower"]).to_numpy()
    assert width[2] > 1.5 * width[0] and width[3] > 1.5 * width[1]
    prior_band = fit.band(np.array([300.0, 600.0]), source="prior")
    assert ((prior_band["upper"] - prior_band["lower"]).to_numpy() > 2 * width[:2]).all()
    # predictive std = spread of the curve draws plus the measurement noise
    assert (band["predictive_std"] >= 0.03).all()


def test_influence_is_exact_leave_one_out_by_brute_force_refits():
    fit = fit_jmak_with_prior(T3, F3, PRIOR)
    infl = fit.influence()
    assert list(infl["sample"]) == ["t=300s", "t=600s", "t=1500s"]
    full = _scipy_map(T3, F3)
    for i in range(3):
        keep = np.arange(3) != i
        without = _scipy_map(T3[keep], F3[keep])
        d_n = math.exp(without[1]) - math.exp(full[1])
        d_t = (math.exp(math.log(math.log(2)) / math.exp(without[1]) - without[0])
               - math.exp(math.log(math.log(2)) / math.exp(full[1]) - full[0]))
        assert infl["n"].iloc[i] == pytest.approx(d_n, abs=1e-5)
        assert infl["t_half"].iloc[i] == pytest.approx(d_t, rel=1e-4, abs=1e-3)


def test_two_points_that_are_both_zero_still_fit_under_the_prior():
    fit = fit_jmak_with_prior([10.0, 20.0], [0.0, 0.0], PRIOR)
    np.testing.assert_allclose(fit.posterior.theta.numpy(),
                               _scipy_map(np.array([10.0, 20.0]), np.array([0.0, 0.0])),
                               atol=1e-5)


def test_arrhenius_prior_couples_isotherms_and_reports_per_temperature():
    model = ArrheniusJMAK()
    prior = Prior("arrhenius_jmak", model.flat_names, [25.0, 400.0, 0.7],
                  [[9.0, 140.0, 0.0], [140.0, 2500.0, 0.0], [0.0, 0.0, 0.09]], 0.04)
    params = model.from_physical(k0_per_s=math.exp(25.0), Q_kJ_per_mol=380.0, n=2.2)
    x = np.array([[600.0, 1400.0], [1800.0, 1400.0], [100.0, 1500.0], [300.0, 1500.0]])
    f = model.forward(params, torch.as_tensor(x)).numpy()
    assert (f > 0.05).all() and (f < 0.95).all()
    fit = fit_jmak_with_prior(x[:, 0], f, prior, temperature_K=x[:, 1])
    table = fit.parameters().set_index("quantity")
    assert {"Q_kJ_per_mol", "t_half_s at 1400 K", "t_half_s at 1500 K"} <= set(table.index)
    t14 = float(model.t_half_s(model.unflatten(fit.posterior.theta),
                               torch.tensor([1400.0], dtype=torch.float64))[0])
    assert table.loc["t_half_s at 1400 K", "posterior"] == pytest.approx(t14)
    assert list(fit.influence().columns[:3]) == ["sample", "Q", "n"]
    # points at one temperature: the prior supplies Q (its spread barely narrows), the
    # points k at that temperature
    assert len(np.unique(x[:2, 1])) == 1
    one = fit_jmak_with_prior(x[:2, 0], f[:2], prior, temperature_K=x[:2, 1])
    iq = model.flat_names.index("Q_kJ_per_mol")
    assert float(one.posterior.cov[iq, iq]) <= float(prior.cov[iq, iq]) * (1 + 1e-9)
    with pytest.raises(InputError, match="temperature_K"):
        fit_jmak_with_prior(x[:, 0], f, prior)


def test_report_folder_holds_prior_data_curve_parameters_and_influence(tmp_path):
    curves = pd.read_csv(DATA / "kinetics" / "avrami_reconstructed_curves.csv")
    one = curves[curves["temperature_K"] == curves["temperature_K"].iloc[0]].iloc[[1, 3, 5]]
    fit = fit_jmak_with_prior(one["time_s"], one["fraction"], PRIOR, label="PBA 299 K")
    out = write_jmak_report([fit], tmp_path / "rep")
    names = {p.name for p in out.iterdir()}
    assert names == {"data.csv", "parameters.csv", "curves.csv", "influence.csv", "fit.png",
                     "report.md", ".matmeta-result"}
    text = (out / "report.md").read_text()
    for section in ("## Data", "## Parameters: prior and posterior", "## Curves",
                    "## Influence of each point", "](fit.png)"):
        assert section in text
    params = pd.read_csv(out / "parameters.csv").set_index("quantity")
    # three noise-free points at t/t_half = 0.5, 1, 2 pin t_half to the published value
    assert params.loc["t_half_s", "posterior"] == pytest.approx(
        one["t_half_s_published"].iloc[0], rel=0.02)
    cur = pd.read_csv(out / "curves.csv")
    assert {"posterior_lower", "posterior_upper", "prior_lower", "prior_upper"} <= set(cur)
    assert (cur["posterior_lower"] <= cur["posterior_upper"]).all()
    assert len(pd.read_csv(out / "influence.csv")) == 3


def test_bad_input_is_one_line():
    eos = Prior.from_std("birch_murnaghan", ["ln_V0"], [3.0], [0.1])
    cases = [
        (lambda: fit_jmak_with_prior(T3, F3, eos), "birch_murnaghan"),
        (lambda: fit_jmak_with_prior([], [], PRIOR), "no measured points"),
        (lambda: fit_jmak_with_prior(T3, [0.1, 1.4, 0.9], PRIOR), "fraction"),
        (lambda: fit_jmak_with_prior(T3, F3, PRIOR, fraction_std=[0.1, 0.0, 0.1]),
         "fraction_std"),
        (lambda: fit_jmak_with_prior([10.0], [0.2], PRIOR).influence(), "at least 2"),
    ]
    for call, text in cases:
        with pytest.raises(InputError, match=text) as err:
            call()
        assert "\n" not in str(err.value)


def test_fit_plot_band_under_a_prior_widens_where_nothing_was_measured():
    """`matmeta jmak fit --prior --plot` draws jmak_band of the MAP fit: the Laplace posterior,
    prior included, so it is wider over the unmeasured transition than at the points."""
    from matmeta.fitting import fit_jmak
    from matmeta.plots._kinetics import KineticsCurve, jmak_band

    res = fit_jmak(T3[:2], F3[:2], prior=PRIOR)
    fit = fit_jmak_with_prior(T3[:2], F3[:2], PRIOR)
    np.testing.assert_allclose(res.theta[0].numpy(), fit.posterior.theta.numpy(), atol=1e-8)
    np.testing.assert_allclose(res.cov[0].numpy(), fit.posterior.cov.numpy(), rtol=1e-6)
    curve = KineticsCurve("c", T3[:2], F3[:2], None, 0)
    t_half = fit.t_half_s()
    _, half = jmak_band(res, curve, np.array([300.0, 600.0, t_half, 1.5 * t_half]))
    assert half[2] > 1.5 * half[0] and half[3] > 1.5 * half[1]
