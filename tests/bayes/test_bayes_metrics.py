"""Uncertainty scores against scipy: quadrature for CRPS, norm.logpdf, norm.ppf for intervals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from matmeta.bayes import (
    central_interval,
    gaussian_crps,
    gaussian_nlpd,
    interval_coverage,
    sample_crps,
    score_predictions,
)
from matmeta.errors import InputError

CASES = [(0.0, 1.0, 0.0), (1.3, 0.4, 0.2), (-2.0, 3.0, 5.5), (10.0, 0.05, 10.01)]


@pytest.mark.parametrize("mu,sigma,y", CASES)
def test_gaussian_crps_matches_quadrature_of_its_definition(mu, sigma, y):
    # CRPS = int (F(x) - 1{x >= y})^2 dx, split at y where the integrand jumps
    F = stats.norm(mu, sigma).cdf
    lo, hi = mu - 40 * sigma, mu + 40 * sigma
    left = integrate.quad(lambda x: F(x) ** 2, min(lo, y), y, limit=200)[0]
    right = integrate.quad(lambda x: (1 - F(x)) ** 2, y, max(hi, y), limit=200)[0]
    got = gaussian_crps(
        torch.tensor(mu, dtype=torch.float64),
        torch.tensor(sigma, dtype=torch.float64),
        torch.tensor(y, dtype=torch.float64),
    )
    assert float(got) == pytest.approx(left + right, rel=1e-7, abs=1e-10)


def test_gaussian_crps_agrees_with_sample_crps_on_many_draws():
    rng = np.random.default_rng(0)
    mu = torch.tensor([0.0, 2.0, -1.0], dtype=torch.float64)
    sd = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    y = torch.tensor([0.3, 3.0, -1.5], dtype=torch.float64)
    draws = torch.from_numpy(rng.normal(mu.numpy(), sd.numpy(), size=(100_000, 3)))
    exact = gaussian_crps(mu, sd, y)
    # Monte Carlo error of both terms is O(sd / sqrt(S)) ~ 0.006 for sd = 2
    torch.testing.assert_close(sample_crps(draws, y, fair=True), exact, atol=0.02, rtol=0)
    torch.testing.assert_close(sample_crps(draws, y), exact, atol=0.02, rtol=0)


def test_sample_crps_sorted_form_equals_the_pairwise_definition():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(7, 4))
    y = rng.normal(size=4)
    pair = np.abs(x[:, None, :] - x[None, :, :]).sum((0, 1))
    expected = np.abs(x - y).mean(0) - 0.5 * pair / 49
    expected_fair = np.abs(x - y).mean(0) - 0.5 * pair / 42
    got = sample_crps(torch.from_numpy(x), torch.from_numpy(y))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(
        sample_crps(torch.from_numpy(x), torch.from_numpy(y), fair=True).numpy(),
        expected_fair,
        rtol=1e-12,
    )


def test_single_member_crps_is_absolute_error():
    x = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    y = torch.tensor([0.5, 0.0], dtype=torch.float64)
    torch.testing.assert_close(sample_crps(x, y), torch.tensor([0.5, 2.0], dtype=torch.float64))
    with pytest.raises(InputError, match="at least 2"):
        sample_crps(x, y, fair=True)


def test_nlpd_matches_scipy_logpdf():
    rng = np.random.default_rng(2)
    mu, sd, y = rng.normal(size=20), rng.uniform(0.1, 3, 20), rng.normal(size=20)
    got = gaussian_nlpd(*(torch.from_numpy(a) for a in (mu, sd, y)))
    np.testing.assert_allclose(got.numpy(), -stats.norm.logpdf(y, mu, sd), rtol=1e-12)


@pytest.mark.parametrize("level", [0.5, 0.9, 0.95])
def test_central_interval_and_coverage_match_scipy_norm(level):
    rng = np.random.default_rng(3)
    mu, sd = rng.normal(size=2000), rng.uniform(0.5, 2.0, 2000)
    y = rng.normal(mu, sd)  # calibrated by construction
    lo, hi = central_interval(torch.from_numpy(mu), torch.from_numpy(sd), level)
    np.testing.assert_allclose(lo.numpy(), stats.norm.ppf((1 - level) / 2, mu, sd), rtol=1e-10)
    np.testing.assert_allclose(hi.numpy(), stats.norm.ppf((1 + level) / 2, mu, sd), rtol=1e-10)
    expected = np.mean(np.abs(stats.norm.cdf(y, mu, sd) - 0.5) <= level / 2)
    got = float(interval_coverage(*(torch.from_numpy(a) for a in (mu, sd, y)), level=level))
    assert got == pytest.approx(expected, abs=1e-12)
    # and a calibrated predictor covers about `level` (binomial sd ~ 0.011 at n = 2000)
    assert abs(got - level) < 0.04


def test_score_predictions_keys_and_bad_input():
    mu = torch.zeros(4, dtype=torch.float64)
    sd = torch.ones(4, dtype=torch.float64)
    y = torch.tensor([0.1, -0.2, 1.0, 3.0], dtype=torch.float64)
    out = score_predictions(mu, sd, y)
    assert set(out) == {"mae", "crps", "nlpd", "coverage_50", "coverage_90"}
    assert out["coverage_90"] == 0.75  # 3.0 lies outside +-1.645
    assert out["mae"] == pytest.approx(1.075)
    with pytest.raises(InputError, match="positive"):
        score_predictions(mu, torch.zeros(4, dtype=torch.float64), y)
    with pytest.raises(InputError, match="same shape"):
        score_predictions(mu[:3], sd, y)
    with pytest.raises(InputError, match="between 0 and 1"):
        interval_coverage(mu, sd, y, level=90)


def test_crps_gradient_matches_finite_differences():
    mu = torch.tensor([0.3, -1.0], dtype=torch.float64, requires_grad=True)
    sd = torch.tensor([0.7, 2.0], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda m, s: gaussian_crps(m, s, y), (mu, sd))
