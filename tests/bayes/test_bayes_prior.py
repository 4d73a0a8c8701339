"""Meta-learned Gaussian priors: the Laplace posterior of a linear law is the exact posterior; the
EM fixed point maximises the exact hierarchical marginal likelihood (scipy); priors drawn from a
known Gaussian are recovered within their sampling error, for a linear law and for JMAK."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import optimize, stats

from matmeta.bayes import ParametricPriorHead, adapt_parametric, learn_prior
from matmeta.errors import InputError
from matmeta.models import Samples
from matmeta.models.parametric import JMAK, ParametricModel, ParamSpec, Prior

F64 = torch.float64


class Line(ParametricModel):
    """y = a + b x: linear in its parameters, so Laplace and EM are exact."""

    name = "line_test"

    def param_specs(self):
        return [ParamSpec("a", "a", "", "none", 0.0), ParamSpec("b", "b", "", "none", 0.0)]

    def forward(self, params, inputs):
        a, b = params["a"], params["b"]
        if a.dim():  # a batch of parameters against (B, N) inputs
            a, b = a.unsqueeze(-1), b.unsqueeze(-1)
        return a + b * inputs

    def value_and_jacobian(self, theta, inputs):
        # closed form, as the library's laws give it (the generic one is a vmapped jacfwd)
        f = theta[:, :1] + theta[:, 1:2] * inputs
        return f, torch.stack([torch.ones_like(inputs), inputs], dim=-1)


MU = np.array([1.0, -0.5])
SIGMA = np.array([[0.5, 0.15], [0.15, 0.2]])


def line_families(n_fam, n_pts, noise, seed):
    rng = np.random.default_rng(seed)
    thetas = rng.multivariate_normal(MU, SIGMA, size=n_fam)
    xs = [rng.uniform(-2, 2, n_pts) for _ in range(n_fam)]
    ys = [t[0] + t[1] * x + noise * rng.normal(size=n_pts) for t, x in zip(thetas, xs, strict=True)]
    return xs, ys


def test_laplace_posterior_of_a_linear_law_is_the_exact_posterior():
    prior = Prior("line_test", ["a", "b"], MU, SIGMA, noise_std=0.2)
    x = np.array([-1.0, 0.3, 1.7])
    y = np.array([1.9, 0.8, 0.1])
    post = adapt_parametric(Line(), prior, x, y)
    X = np.stack([np.ones(3), x], 1)
    S = np.linalg.inv(X.T @ X / 0.04 + np.linalg.inv(SIGMA))
    m = S @ (X.T @ y / 0.04 + np.linalg.solve(SIGMA, MU))
    np.testing.assert_allclose(post.theta.numpy(), m, rtol=1e-8)
    np.testing.assert_allclose(post.cov.numpy(), S, rtol=1e-8)
    q = np.array([-3.0, 0.0, 2.5])
    Q = np.stack([np.ones(3), q], 1)
    mean, std = post.predict(torch.from_numpy(q))
    np.testing.assert_allclose(mean.numpy(), Q @ m, rtol=1e-8)
    np.testing.assert_allclose(std.numpy() ** 2, np.sum(Q @ S * Q, 1) + 0.04, rtol=1e-8)
    corr = S[0, 1] / math.sqrt(S[0, 0] * S[1, 1])
    assert float(post.correlation[0, 1]) == pytest.approx(corr, rel=1e-8)
    phys = post.physical()
    assert phys["b"] == pytest.approx(m[1]) and phys["b_se"] == pytest.approx(math.sqrt(S[1, 1]))


def exact_marginal(mu, sigma, xs, ys, noise, use_scipy=False):
    """sum_f log N(y_f; X_f mu, X_f Sigma X_f' + noise^2 I), the hierarchical model's evidence."""
    total = 0.0
    for x, y in zip(xs, ys, strict=True):
        X = np.stack([np.ones_like(x), x], 1)
        C = X @ sigma @ X.T + noise**2 * np.eye(len(x))
        if use_scipy:
            total += stats.multivariate_normal(X @ mu, C).logpdf(y)
        else:
            r = y - X @ mu
            total += -0.5 * (
                r @ np.linalg.solve(C, r) + np.linalg.slogdet(C)[1] + len(x) * math.log(2 * math.pi)
            )
    return total


def test_em_fixed_point_maximises_the_exact_marginal_likelihood():
    xs, ys = line_families(25, 4, 0.3, seed=0)
    fit = learn_prior(Line(), xs, ys, noise_std=0.3, tol=1e-10, max_iter=500)
    assert fit.converged
    # EM never decreases the (here exact) marginal likelihood
    assert all(b >= a - 1e-8 for a, b in zip(fit.history, fit.history[1:], strict=False))

    def neg(v):
        L = np.array([[math.exp(v[2]), 0.0], [v[3], math.exp(v[4])]])
        return -exact_marginal(v[:2], L @ L.T, xs, ys, 0.3)

    L0 = np.linalg.cholesky(SIGMA)
    v0 = np.array([*MU, math.log(L0[0, 0]), L0[1, 0], math.log(L0[1, 1])])
    best = optimize.minimize(neg, v0, method="BFGS", options={"gtol": 1e-8})
    ours = exact_marginal(
        fit.prior.mean.numpy(), fit.prior.cov.numpy(), xs, ys, 0.3, use_scipy=True
    )
    assert ours == pytest.approx(-best.fun, abs=1e-5)
    L = np.array([[math.exp(best.x[2]), 0.0], [best.x[3], math.exp(best.x[4])]])
    np.testing.assert_allclose(fit.prior.mean.numpy(), best.x[:2], atol=2e-3)
    np.testing.assert_allclose(fit.prior.cov.numpy(), L @ L.T, atol=2e-3)
    # the Laplace value tracked is the exact one for a linear law
    assert fit.history[-1] == pytest.approx(ours, abs=1e-5)


def test_known_linear_prior_and_noise_are_recovered():
    n_fam, noise = 300, 0.3
    xs, ys = line_families(n_fam, 6, noise, seed=1)
    fit = learn_prior(Line(), xs, ys)  # noise learned
    # sampling error of the MLE: mean ~ sqrt(diag(Sigma + S_f)/F), covariance entries
    # ~ sqrt((S_jj S_kk + S_jk^2)/F); 4 standard errors
    se_mu = np.sqrt((np.diag(SIGMA) + 0.1) / n_fam)
    assert np.all(np.abs(fit.prior.mean.numpy() - MU) < 4 * se_mu)
    v = np.diag(SIGMA) + 0.1
    se_cov = np.sqrt((np.outer(v, v) + SIGMA**2) / n_fam)
    assert np.all(np.abs(fit.prior.cov.numpy() - SIGMA) < 4 * se_cov)
    # 1800 points: the noise std's standard error is about noise / sqrt(2 N) = 0.005
    assert fit.prior.noise_std == pytest.approx(noise, abs=0.025)


def test_known_jmak_prior_is_recovered_from_dense_curves():
    rng = np.random.default_rng(2)
    n_fam = 80
    mu = np.array([math.log(1e-3), math.log(2.0)])
    cov = np.array([[0.25, 0.03], [0.03, 0.02]])
    thetas = rng.multivariate_normal(mu, cov, size=n_fam)
    model = JMAK()
    times, fracs = [], []
    for th in thetas:
        t_half = math.log(2) ** (1 / math.exp(th[1])) / math.exp(th[0])
        t = t_half * np.logspace(-0.7, 0.5, 12)
        f = model.forward(
            {"ln_k": torch.tensor(th[0]), "ln_n": torch.tensor(th[1])}, torch.from_numpy(t)
        ).numpy()
        times.append(t)
        fracs.append(f + 0.01 * rng.normal(size=12))
    fit = learn_prior(model, times, fracs, noise_std=0.01)
    assert fit.prior.names == ["ln_k", "ln_n"]
    # dense curves pin each family down (posterior sd << prior sd): errors are sampling errors
    se_mu = np.sqrt(np.diag(cov) / n_fam)
    assert np.all(np.abs(fit.prior.mean.numpy() - mu) < 4 * se_mu)
    se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n_fam)
    assert np.all(np.abs(fit.prior.cov.numpy() - cov) < 4 * se_cov)


def test_adaptation_refuses_a_prior_for_another_model_in_one_line():
    prior = Prior("line_test", ["a", "b"], MU, SIGMA, noise_std=0.2)
    with pytest.raises(InputError, match="not 'jmak'") as exc:
        adapt_parametric(JMAK(), prior, np.array([10.0, 100.0]), np.array([0.1, 0.5]))
    assert "\n" not in str(exc.value)
    with pytest.raises(InputError, match="at least 2"):
        learn_prior(Line(), [np.zeros(3)], [np.zeros(3)])


def test_prior_head_has_the_common_interface():
    prior = Prior("line_test", ["a", "b"], MU, SIGMA, noise_std=0.2)
    head = ParametricPriorHead(Line(), prior, samples=None)
    x = torch.tensor([0.0, 1.0], dtype=F64)
    y = torch.tensor([1.1, 0.4], dtype=F64)
    mean, std = head.fit(Samples(x, y)).predict(torch.tensor([0.5], dtype=F64))
    ref = adapt_parametric(Line(), prior, x, y).predict(torch.tensor([0.5], dtype=F64))
    torch.testing.assert_close((mean, std), ref)
    assert float(std) > 0.2  # parameter uncertainty on top of the noise


def test_every_head_satisfies_the_common_interface_and_scores_uniformly():
    from matmeta.bayes import (
        AdaptationHead,
        BayesianLinearHead,
        GaussianProcessHead,
        PredictivePosterior,
        score_head,
        score_predictions,
    )

    gen = torch.Generator().manual_seed(0)
    X = torch.randn(12, 2, dtype=F64, generator=gen)
    y = X[:, 0] - 0.5 * X[:, 1] + 0.1 * torch.randn(12, dtype=F64, generator=gen)
    support, query = Samples(X[:8], y[:8]), Samples(X[8:], y[8:])
    prior = Prior("line_test", ["a", "b"], MU, SIGMA, noise_std=0.2)
    line_support = Samples(X[:8, 0], y[:8])
    for head, sup, qry in (
        (BayesianLinearHead(), support, query),
        (GaussianProcessHead(), support, query),
        (ParametricPriorHead(Line(), prior), line_support, Samples(X[8:, 0], y[8:])),
    ):
        assert isinstance(head, AdaptationHead)
        post = head.fit(sup)
        assert isinstance(post, PredictivePosterior)
        mean, std = post.predict(qry.inputs)
        assert score_head(head, sup, qry) == score_predictions(mean, std, qry.y)


def test_sampled_predictive_matches_quadrature_of_the_laplace_posterior():
    # E[f] and Var[f] of the JMAK curve under theta ~ N(theta_hat, cov) by Gauss-Hermite
    # quadrature (numpy, 40 x 40 nodes) against 20,000 posterior draws (MC sd ~ std / 141)
    prior = Prior(
        "jmak",
        ["ln_k", "ln_n"],
        [math.log(1e-3), math.log(2.0)],
        [[0.3, 0.05], [0.05, 0.05]],
        noise_std=0.03,
    )
    t = np.array([300.0, 900.0])
    post = adapt_parametric(JMAK(), prior, t, np.array([0.08, 0.55]))
    q = np.array([100.0, 600.0, 2000.0, 6000.0])
    draws = post.sample_predictions(torch.from_numpy(q), samples=20_000, noise=False, seed=1)
    nodes, wts = np.polynomial.hermite_e.hermegauss(40)
    L = np.linalg.cholesky(post.cov.numpy())
    z = np.stack(np.meshgrid(nodes, nodes, indexing="ij"), -1).reshape(-1, 2)
    w = np.outer(wts, wts).reshape(-1) / (2 * np.pi)
    th = post.theta.numpy() + z @ L.T
    n = np.exp(th[:, 1:2])
    f = -np.expm1(-np.exp(np.minimum(n * (th[:, 0:1] + np.log(q)), 4.0)))
    mean_q = w @ f
    sd_q = np.sqrt(w @ (f - mean_q) ** 2)
    np.testing.assert_allclose(draws.mean(0).numpy(), mean_q, atol=4 * sd_q.max() / 141 + 1e-6)
    np.testing.assert_allclose(draws.std(0).numpy(), sd_q, rtol=0.05, atol=1e-4)
    mean, std = post.predict(torch.from_numpy(q), samples=20_000, seed=1)
    np.testing.assert_allclose(std.numpy() ** 2, draws.var(0).numpy() + 0.03**2, rtol=1e-10)


def test_sampled_and_delta_predictives_agree_for_a_linear_law():
    prior = Prior("line_test", ["a", "b"], MU, SIGMA, noise_std=0.2)
    head = ParametricPriorHead(Line(), prior, samples=40_000)
    post = head.fit(Samples(np.array([0.0, 1.0]), np.array([1.1, 0.4])))
    q = torch.tensor([-1.0, 0.5, 3.0], dtype=F64)
    m_s, s_s = post.predict(q)
    post.default_samples = None
    m_d, s_d = post.predict(q)
    torch.testing.assert_close(m_s, m_d, atol=4 * float(s_d.max()) / 200, rtol=0)
    torch.testing.assert_close(s_s, s_d, rtol=0.02, atol=0)


def test_laplace_evidence_of_a_linear_law_is_the_exact_marginal_likelihood():
    prior = Prior("line_test", ["a", "b"], MU, SIGMA, noise_std=0.2)
    x = np.array([-1.0, 0.3, 1.7, 2.0])
    y = np.array([1.9, 0.8, 0.1, -0.4])
    post = adapt_parametric(Line(), prior, x, y)
    X = np.stack([np.ones_like(x), x], 1)
    ref = stats.multivariate_normal(X @ MU, X @ SIGMA @ X.T + 0.04 * np.eye(4)).logpdf(y)
    assert post.log_evidence == pytest.approx(ref, rel=1e-9)
