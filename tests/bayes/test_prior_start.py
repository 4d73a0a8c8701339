"""learn_prior's starting point on physical scales, and MAP adaptation of constant supports."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import optimize

from matmeta.bayes import adapt_parametric, learn_prior
from matmeta.models.parametric import JMAK, ArrheniusJMAK, Prior
from tests.helpers import shared_dataset


def test_arrhenius_prior_recovers_the_spread_of_known_families():
    """12 families drawn from a known Gaussian over (ln k0, Q, ln n): Q in kJ/mol spans tens of
    kJ/mol, far beyond a fixed start of std 3; the learned mean and std match the families'."""
    rng = np.random.default_rng(0)
    model = ArrheniusJMAK()
    temps = np.array([1400.0, 1450.0, 1500.0])
    truth = []
    xs, ys = [], []
    for _ in range(12):
        q = rng.normal(400.0, 40.0)
        ln_n = rng.normal(math.log(2.0), 0.15)
        # k0 follows Q (a compensation line, as in real grades): t_half near 1e3 s at 1450 K
        ln_k0 = -math.log(1e3) + q * 1e3 / (8.314462618 * 1450.0) + rng.normal(0.0, 0.5)
        truth.append([ln_k0, q, ln_n])
        params = model.unflatten(torch.tensor([ln_k0, q, ln_n], dtype=torch.float64))
        x = []
        for temp in temps:
            t_half = float(model.t_half_s(params, torch.tensor([temp], dtype=torch.float64))[0])
            x.append(np.stack([t_half * np.geomspace(0.2, 4.0, 10), np.full(10, temp)], -1))
        x = np.concatenate(x)
        f = model.forward(params, torch.as_tensor(x)).numpy() + rng.normal(0.0, 0.01, len(x))
        xs.append(x)
        ys.append(f)
    truth = np.array(truth)
    fit = learn_prior(model, xs, ys, noise_std=0.01, max_iter=200)
    mean, std = fit.prior.mean.numpy(), fit.prior.std.numpy()
    # dense, precise curves: each family's parameters are pinned down, so the learned prior is
    # the families' own mean and spread (the M-step's maximum likelihood std, ddof = 0)
    assert np.all(np.abs(mean - truth.mean(0)) <= np.array([0.3, 2.0, 0.01]))
    np.testing.assert_allclose(std, truth.std(0), rtol=0.1)


@pytest.mark.shared_data
def test_arrhenius_prior_of_three_tungsten_grades_sits_among_their_own_fits():
    """Three grades with several isotherms: the learned prior's mean lies within the range of the
    grades' independent least-squares fits, and its noise std is that of those fits. (A fixed
    start of std 3 in every unit, Q included, collapsed here to n = 1.03 +- 0.08 with a noise std
    of 0.19, twice the fits' residuals.)"""
    import pandas as pd

    from matmeta.fitting import fit_curves

    df = pd.read_csv(shared_dataset("kinetics/tungsten_recrystallization.csv"))
    grades = ["W_Ciucani2020_TP2", "W_Lopez2015_MR", "W_Richou2020_A"]
    xs = [df[df.dataset_id == g][["time_s", "temperature_K"]].to_numpy() for g in grades]
    ys = [df[df.dataset_id == g]["fraction"].to_numpy() for g in grades]
    model = ArrheniusJMAK()
    own = fit_curves(model, xs, ys)
    fit = learn_prior(model, xs, ys, max_iter=100)
    lo, hi = own.theta.min(0).values, own.theta.max(0).values
    assert bool(((fit.prior.mean >= lo) & (fit.prior.mean <= hi)).all()), (fit.prior.mean, lo, hi)
    assert fit.prior.noise_std <= 1.3 * float(own.rmse.max())


def test_constant_support_is_adapted_by_map():
    prior = Prior.from_std("jmak", ["ln_k", "ln_n"], [-6.0, 0.7], [1.0, 0.3], noise_std=0.05)
    t, f = np.array([5.0, 20.0, 40.0]), np.zeros(3)
    post = adapt_parametric(JMAK(), prior, t, f)

    def objective(theta):
        pred = -np.expm1(-np.exp(np.exp(theta[1]) * (theta[0] + np.log(t))))
        d = theta - prior.mean.numpy()
        return float(((pred - f) / 0.05) @ ((pred - f) / 0.05)
                     + d @ np.linalg.solve(prior.cov.numpy(), d))

    ref = optimize.minimize(objective, prior.mean.numpy(), method="Nelder-Mead",
                            options={"xatol": 1e-10, "fatol": 1e-12}).x
    np.testing.assert_allclose(post.theta.numpy(), ref, atol=1e-5)
    assert math.isfinite(post.log_evidence)
    # a zero-weight point does not make a support "changing": still adapted the same way
    post_w = adapt_parametric(JMAK(), prior, np.append(t, 60.0), np.append(f, 0.9),
                              weight=np.array([1.0, 1.0, 1.0, 0.0]))
    np.testing.assert_allclose(post_w.theta.numpy(), ref, atol=1e-5)


def test_dense_constant_curve_is_still_refused_without_a_prior():
    from matmeta.errors import InputError
    from matmeta.fitting import fit_curves

    with pytest.raises(InputError, match="all 3 target values equal"):
        fit_curves(JMAK(), [np.array([1.0, 2.0, 3.0])], [np.zeros(3)])
