"""Bayesian linear head against independent references: scipy's multivariate normal for the
evidence, scipy.optimize for the fitted hyperparameters, textbook numpy formulas for the posterior,
brute-force refits for leave-one-out, finite differences for the implicit gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import optimize, stats

from matmeta.bayes import BayesianLinearHead, fit_bayes_linear, linear_log_evidence
from matmeta.errors import InputError
from matmeta.models import Samples

F64 = torch.float64


def make_task(k: int, d: int, seed: int = 0, noise: float = 0.3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(k, d))
    w = rng.normal(size=d)
    y = X @ w + 1.5 + noise * rng.normal(size=k)
    return torch.from_numpy(X), torch.from_numpy(y)


def np_marginal_cov(X, alpha, beta, bias_var):
    return X @ X.T / alpha + bias_var * np.ones((len(X), len(X))) + np.eye(len(X)) / beta


@pytest.mark.parametrize("k,d", [(4, 9), (25, 3)])
@pytest.mark.parametrize("form", ["dual", "primal"])
def test_evidence_matches_scipy_multivariate_normal(k, d, form):
    X, y = make_task(k, d)
    m0 = np.random.default_rng(5).normal(size=d + 1)
    alpha, beta, bias_var = 0.7, 4.0, 2.5
    got = linear_log_evidence(
        X, y, alpha, beta, bias_var=bias_var, prior_mean=torch.from_numpy(m0), form=form
    )
    Xn = X.numpy()
    mean = Xn @ m0[:d] + m0[d]
    ref = stats.multivariate_normal(mean, np_marginal_cov(Xn, alpha, beta, bias_var)).logpdf(
        y.numpy()
    )
    assert float(got) == pytest.approx(ref, rel=1e-10)


def test_evidence_without_bias_matches_scipy():
    X, y = make_task(6, 4)
    got = linear_log_evidence(X, y, 2.0, 3.0, bias=False)
    Xn = X.numpy()
    cov = Xn @ Xn.T / 2.0 + np.eye(6) / 3.0
    ref = stats.multivariate_normal(np.zeros(6), cov).logpdf(y.numpy())
    assert float(got) == pytest.approx(ref, rel=1e-10)


@pytest.mark.parametrize("k,d,hyper_std", [(8, 12, 3.0), (30, 4, None), (30, 4, 1.0)])
def test_fitted_hyperparameters_match_scipy_optimize(k, d, hyper_std):
    X, y = make_task(k, d, seed=k)
    post = fit_bayes_linear(X, y, hyper_std=hyper_std, steps=25)
    Xn, yn, bv = X.numpy(), y.numpy(), float(post.bias_var)
    # the start the head documents: signal 3/4 and noise 1/4 of the mean square about the prior
    ms = np.mean(yn**2)
    centre = np.array([np.log(np.mean(np.sum(Xn**2, 1)) / (0.75 * ms)), np.log(4.0 / ms)])

    def neg(theta):
        cov = np_marginal_cov(Xn, np.exp(theta[0]), np.exp(theta[1]), bv)
        val = stats.multivariate_normal(np.zeros(k), cov).logpdf(yn)
        if hyper_std is not None:
            val -= 0.5 * np.sum(((theta - centre) / hyper_std) ** 2)
        return -val

    best = optimize.minimize(
        neg, centre, method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 4000}
    )
    ours = np.log([float(post.alpha), float(post.beta)])
    assert -neg(ours) >= -best.fun - 1e-8
    np.testing.assert_allclose(ours, best.x, atol=1e-4)


@pytest.mark.parametrize("k,d", [(5, 8), (40, 3)])
def test_predictive_matches_textbook_weight_space_formulas(k, d):
    X, y = make_task(k, d, seed=3)
    m0 = torch.linspace(-0.5, 0.5, d + 1, dtype=F64)
    post = fit_bayes_linear(X, y, prior_mean=m0, bias_var=2.0)
    a, b = float(post.alpha), float(post.beta)
    Xa = np.hstack([X.numpy(), np.ones((k, 1))])
    S0inv = np.diag([a] * d + [1 / 2.0])
    SN = np.linalg.inv(S0inv + b * Xa.T @ Xa)  # Bishop (3.51)
    mN = SN @ (S0inv @ m0.numpy() + b * Xa.T @ y.numpy())  # Bishop (3.50)
    Q = np.random.default_rng(9).normal(size=(6, d))
    Qa = np.hstack([Q, np.ones((6, 1))])
    mean, std = post.predict(torch.from_numpy(Q))
    np.testing.assert_allclose(mean.numpy(), Qa @ mN, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(std.numpy() ** 2, 1 / b + np.sum(Qa @ SN * Qa, 1), rtol=1e-9)
    _, latent = post.predict(torch.from_numpy(Q), noise=False)
    np.testing.assert_allclose(latent.numpy() ** 2, np.sum(Qa @ SN * Qa, 1), rtol=1e-8)
    # the function-space (GP) form of the same posterior
    gm, gs = post._gp_predict(torch.from_numpy(Q))
    torch.testing.assert_close(gm, mean)
    torch.testing.assert_close(gs, std)


@pytest.mark.parametrize("k,d", [(5, 8), (30, 3)])
def test_primal_and_dual_forms_agree(k, d):
    X, y = make_task(k, d, seed=11)
    Q = torch.randn(5, d, dtype=F64, generator=torch.Generator().manual_seed(0))
    pd = fit_bayes_linear(X, y, form="dual")
    pp = fit_bayes_linear(X, y, form="primal")
    torch.testing.assert_close(pd.alpha, pp.alpha, rtol=1e-7, atol=0)
    torch.testing.assert_close(pd.beta, pp.beta, rtol=1e-7, atol=0)
    torch.testing.assert_close(pd.log_evidence, pp.log_evidence, rtol=1e-9, atol=0)
    for a, b in zip(pd.predict(Q), pp.predict(Q), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


def _refit_fixed(post, keep, Q):
    """Brute force: the textbook posterior of the kept points, same alpha, beta, bias_var."""
    Xa = np.hstack([post.support.numpy(), np.ones((len(post.y), 1))])[keep]
    d = Xa.shape[1] - 1
    S0inv = np.diag([float(post.alpha)] * d + [1 / float(post.bias_var)])
    b = float(post.noise_var) ** -1
    SN = np.linalg.inv(S0inv + b * Xa.T @ Xa)
    mN = SN @ (b * Xa.T @ post.y.numpy()[keep])
    Qa = np.hstack([Q, np.ones((len(Q), 1))])
    return Qa @ mN, 1 / b + np.sum(Qa @ SN * Qa, 1)


@pytest.mark.parametrize("k,d", [(6, 10), (20, 3)])
def test_exact_loo_and_query_change_match_brute_force_refits(k, d):
    X, y = make_task(k, d, seed=21)
    post = fit_bayes_linear(X, y)
    loo_mean, loo_std = post.loo()
    Q = np.random.default_rng(4).normal(size=(3, d))
    mean_all, std_all = post.predict(torch.from_numpy(Q))
    d_mean, d_var = post.loo_query_change(torch.from_numpy(Q))
    for i in range(k):
        keep = np.arange(k) != i
        m_i, v_i = _refit_fixed(post, keep, X.numpy()[i : i + 1])
        assert float(loo_mean[i]) == pytest.approx(m_i[0], rel=1e-8, abs=1e-9)
        assert float(loo_std[i]) ** 2 == pytest.approx(v_i[0], rel=1e-8)
        mq, vq = _refit_fixed(post, keep, Q)
        np.testing.assert_allclose((mean_all + d_mean[i]).numpy(), mq, rtol=1e-8, atol=1e-9)
        np.testing.assert_allclose((std_all**2 + d_var[i]).numpy(), vq, rtol=1e-8)


def test_duplicate_support_points_are_handled_by_the_likelihood():
    X, y = make_task(4, 6, seed=2)
    Xd, yd = torch.cat([X, X]), torch.cat([y, y + 0.01])
    post = fit_bayes_linear(Xd, yd)
    mean, std = post.predict(X)
    assert torch.isfinite(mean).all() and torch.isfinite(std).all()
    # exact duplicates must count twice: a point repeated has the evidence of a doubled precision
    ref = stats.multivariate_normal(
        np.zeros(8),
        np_marginal_cov(Xd.numpy(), float(post.alpha), float(post.beta), float(post.bias_var)),
    ).logpdf(yd.numpy())
    assert float(post.log_evidence) == pytest.approx(ref, rel=1e-9)


def test_too_small_support_sets_are_one_line_input_errors():
    X, y = make_task(1, 3)
    with pytest.raises(InputError, match="at least 2 are needed") as exc:
        fit_bayes_linear(X, y)
    assert "\n" not in str(exc.value)
    post = fit_bayes_linear(X, y, beta=10.0)  # the noise fixed: one point is enough
    assert torch.isfinite(post.predict(X)[0]).all()
    with pytest.raises(InputError, match="empty"):
        fit_bayes_linear(X[:0], y[:0], beta=1.0)
    with pytest.raises(InputError, match=r"\(K,\)"):
        fit_bayes_linear(X, torch.zeros(3, dtype=F64))
    with pytest.raises(InputError, match="NaN"):
        fit_bayes_linear(torch.full((3, 2), float("nan"), dtype=F64), torch.zeros(3, dtype=F64))


def test_head_object_fits_samples_and_refuses_weights():
    X, y = make_task(6, 3)
    head = BayesianLinearHead(hyper_std=2.0)
    assert repr(head) == "BayesianLinearHead(hyper_std=2.0)"
    a = head.fit(Samples(X, y)).predict(X[:2])
    b = fit_bayes_linear(X, y, hyper_std=2.0).predict(X[:2])
    torch.testing.assert_close(a, b)
    with pytest.raises(InputError, match="weights"):
        head.fit(Samples(X, y, torch.rand(6, dtype=F64)))


def test_implicit_gradient_matches_finite_differences_of_the_converged_fit():
    X, y = make_task(7, 4, seed=8)
    Q = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(1))
    yq = torch.randn(3, dtype=F64, generator=torch.Generator().manual_seed(2))

    def loss(features):
        mean, std = fit_bayes_linear(features, y, steps=30).predict(Q)
        return -torch.distributions.Normal(mean, std).log_prob(yq).sum()

    Xg = X.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(Xg), Xg)
    # directional derivatives along random directions (central differences, O(eps^2) error)
    gen = torch.Generator().manual_seed(5)
    eps = 1e-5
    for _ in range(3):
        v = torch.randn(X.shape, dtype=F64, generator=gen)
        fd = (loss(X + eps * v) - loss(X - eps * v)) / (2 * eps)
        assert float((g * v).sum()) == pytest.approx(float(fd), rel=1e-5, abs=1e-8)


def test_fit_runs_under_vmap_over_tasks():
    Xs = torch.randn(3, 6, 4, dtype=F64, generator=torch.Generator().manual_seed(3))
    ys = torch.randn(3, 6, dtype=F64, generator=torch.Generator().manual_seed(4))
    Q = torch.randn(2, 4, dtype=F64)

    def one(X, y):
        return fit_bayes_linear(X, y, bias_var=1.0).predict(Q)

    means, stds = torch.func.vmap(one)(Xs, ys)
    for t in range(3):
        m, s = one(Xs[t], ys[t])
        torch.testing.assert_close(means[t], m)
        torch.testing.assert_close(stds[t], s)


def test_posterior_can_be_used_again_after_a_backward_pass():
    # a meta-learner calls predict, backpropagates, then asks for leave-one-out on the same fit
    X, y = make_task(6, 3, seed=12)
    Xg = X.clone().requires_grad_(True)
    post = fit_bayes_linear(Xg, y)
    post.predict(X[:2])[0].sum().backward()
    post.loo()[0].sum().backward()
    post._gp_predict(X[:2])[1].sum().backward()
    assert torch.isfinite(Xg.grad).all()
