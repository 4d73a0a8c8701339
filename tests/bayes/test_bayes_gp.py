"""GP head against independent references: numpy kernels with scipy's multivariate normal,
numpy posterior formulas, scipy.optimize, autograd Hessians, brute-force leave-one-out refits."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy import optimize, stats
from scipy.spatial.distance import cdist

from matmeta.bayes import GaussianProcessHead, JitterWarning, fit_gp, gp_log_marginal_likelihood
from matmeta.bayes._core import lml_derivatives
from matmeta.errors import InputError
from matmeta.models import Samples

F64 = torch.float64


def np_kernel(A, B, h, kernel, linear=True, bias_var=0.0):
    r = cdist(A, B) / h["lengthscale"]
    if kernel == "rbf":
        k = np.exp(-0.5 * r**2)
    else:
        s = np.sqrt(5.0) * r
        k = (1 + s + s**2 / 3) * np.exp(-s)
    out = h["signal_var"] * k + bias_var
    if linear:
        out = out + h["linear_var"] * A @ B.T
    return out


def make_task(k=15, d=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(k, d))
    y = np.sin(2 * X[:, 0]) + 0.5 * X[:, 1] + 0.1 * rng.normal(size=k)
    return torch.from_numpy(X), torch.from_numpy(y)


HYPER = {"lengthscale": 1.3, "signal_var": 0.8, "linear_var": 0.2, "noise_var": 0.05}


@pytest.mark.parametrize("kernel", ["rbf", "matern52"])
def test_log_marginal_likelihood_matches_scipy(kernel):
    X, y = make_task()
    h = {k: torch.tensor(v, dtype=F64) for k, v in HYPER.items()}
    got = gp_log_marginal_likelihood(X, y, h, kernel, bias_var=0.4)
    Xn = X.numpy()
    cov = np_kernel(Xn, Xn, HYPER, kernel, bias_var=0.4) + HYPER["noise_var"] * np.eye(len(Xn))
    ref = stats.multivariate_normal(np.zeros(len(Xn)), cov).logpdf(y.numpy())
    assert float(got) == pytest.approx(ref, rel=1e-10)


@pytest.mark.parametrize("kernel", ["rbf", "matern52"])
def test_predictions_match_numpy_posterior_formulas(kernel):
    X, y = make_task(seed=1)
    post = fit_gp(X, y, kernel=kernel)
    h = {k: float(v) for k, v in post.hyperparameters.items()}
    bv = float(post.bias_var)
    Xn, yn = X.numpy(), y.numpy()
    Q = np.random.default_rng(2).normal(size=(5, 3))
    C = np_kernel(Xn, Xn, h, kernel, bias_var=bv) + h["noise_var"] * np.eye(len(Xn))
    kq = np_kernel(Q, Xn, h, kernel, bias_var=bv)
    kqq = np.diag(np_kernel(Q, Q, h, kernel, bias_var=bv))
    mean_ref = kq @ np.linalg.solve(C, yn)
    var_ref = kqq - np.sum(kq * np.linalg.solve(C, kq.T).T, 1)
    mean, std = post.predict(torch.from_numpy(Q), noise=False)
    np.testing.assert_allclose(mean.numpy(), mean_ref, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(std.numpy() ** 2, var_ref, rtol=1e-7, atol=1e-12)
    _, std_n = post.predict(torch.from_numpy(Q))
    np.testing.assert_allclose(std_n.numpy() ** 2, var_ref + h["noise_var"], rtol=1e-8)


@pytest.mark.parametrize("kernel", ["rbf", "matern52"])
def test_closed_form_gradient_and_hessian_match_autograd(kernel):
    # lml_derivatives with the GP head's dC/dlog-hyperparameters vs torch.func on the value
    from matmeta.bayes._gp import _sqdist, _stationary

    X, y = make_task(k=9, seed=3)
    d2 = _sqdist(X, X)
    eye = torch.eye(9, dtype=F64)
    G = X @ X.T

    def cov(theta):
        ell, sf, sl, sn = torch.exp(theta)
        return sf * _stationary(d2, torch.log(ell), kernel) + sl * G + 0.3 + sn * eye

    def value(theta):
        return stats_free_logpdf(y, cov(theta))

    theta = torch.log(torch.tensor([1.1, 0.7, 0.2, 0.05], dtype=F64))
    ell, sf, sl, sn = torch.exp(theta)
    Kr = sf * _stationary(d2, theta[0], kernel)
    dKr = sf * _stationary(d2, theta[0], kernel, 1)
    D = [dKr, Kr, sl * G, sn * eye]
    DD = {
        (0, 0): sf * _stationary(d2, theta[0], kernel, 2),
        (0, 1): dKr,
        (1, 1): Kr,
        (2, 2): sl * G,
        (3, 3): sn * eye,
    }
    val, g, h = lml_derivatives(y, cov(theta), D, DD)
    torch.testing.assert_close(val, value(theta))
    ag = torch.autograd.functional.jacobian(value, theta)
    ah = torch.autograd.functional.hessian(value, theta)
    torch.testing.assert_close(g, ag, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(h, ah, rtol=1e-7, atol=1e-9)


def stats_free_logpdf(y, C):
    L = torch.linalg.cholesky(C)
    a = torch.cholesky_solve(y.unsqueeze(-1), L).squeeze(-1)
    return (
        -0.5 * (y * a).sum() - torch.log(torch.diagonal(L)).sum() - 0.5 * len(y) * np.log(2 * np.pi)
    )


@pytest.mark.parametrize("kernel,hyper_std", [("rbf", 3.0), ("matern52", 3.0), ("rbf", None)])
def test_fitted_hyperparameters_reach_the_scipy_optimum(kernel, hyper_std):
    X, y = make_task(k=20, seed=4)
    post = fit_gp(X, y, kernel=kernel, hyper_std=hyper_std, steps=30)
    Xn, yn, bv = X.numpy(), y.numpy(), float(post.bias_var)
    names = ["lengthscale", "signal_var", "linear_var", "noise_var"]
    # the documented start: median pairwise distance (the lower middle value of an even count,
    # as torch.median takes it); 1/2, 1/4, 1/4 of the mean square
    ms = np.mean(yn**2)
    pair = np.sort(cdist(Xn, Xn)[np.triu_indices(20, 1)])
    centre = np.log(
        [pair[(len(pair) - 1) // 2], 0.5 * ms, 0.25 * ms / np.mean(np.sum(Xn**2, 1)), 0.25 * ms]
    )

    def neg(theta):
        h = dict(zip(names, np.exp(theta), strict=True))
        C = np_kernel(Xn, Xn, h, kernel, bias_var=bv) + h["noise_var"] * np.eye(20)
        val = stats.multivariate_normal(np.zeros(20), C, allow_singular=True).logpdf(yn)
        if hyper_std is not None:
            val -= 0.5 * np.sum(((theta - centre) / hyper_std) ** 2)
        return -val

    best = optimize.minimize(neg, centre, method="L-BFGS-B", options={"ftol": 1e-14, "gtol": 1e-9})
    ours = np.log([float(post.hyperparameters[n]) for n in names])
    # a non-concave objective: ours must be at least as good as scipy's local optimum from the
    # same start, and at the same point when both are in the same basin
    assert -neg(ours) >= -best.fun - 1e-6
    if -neg(ours) < -best.fun + 1e-6:
        np.testing.assert_allclose(ours, best.x, atol=2e-3)


def test_duplicated_inputs_without_noise_get_reported_jitter_not_nan():
    X, y = make_task(k=6, seed=5)
    Xd, yd = torch.cat([X, X]), torch.cat([y, y])
    with pytest.warns(JitterWarning, match="jitter"):
        post = fit_gp(Xd, yd, noise_var=0.0)
    assert post.jitter > 0
    mean, std = post.predict(X)
    assert torch.isfinite(mean).all() and torch.isfinite(std).all()
    # noise-free interpolation through the (consistent) duplicates
    torch.testing.assert_close(mean, y, rtol=0, atol=1e-3)
    assert torch.isfinite(post.log_marginal_likelihood)


def test_duplicated_inputs_with_fitted_noise_need_no_jitter():
    X, y = make_task(k=6, seed=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", JitterWarning)
        post = fit_gp(torch.cat([X, X]), torch.cat([y, y + 0.05]))
    assert post.jitter == 0.0
    assert float(post.hyperparameters["noise_var"]) > 0


def _np_gp(Xs, ys, Q, h, kernel, bv):
    C = np_kernel(Xs, Xs, h, kernel, bias_var=bv) + h["noise_var"] * np.eye(len(Xs))
    kq = np_kernel(Q, Xs, h, kernel, bias_var=bv)
    kqq = np.diag(np_kernel(Q, Q, h, kernel, bias_var=bv))
    return kq @ np.linalg.solve(C, ys), kqq - np.sum(kq * np.linalg.solve(C, kq.T).T, 1) + h[
        "noise_var"
    ]


@pytest.mark.parametrize("kernel", ["rbf", "matern52"])
def test_exact_loo_and_query_change_match_brute_force_refits(kernel):
    X, y = make_task(k=10, seed=7)
    post = fit_gp(X, y, kernel=kernel)
    h = {k: float(v) for k, v in post.hyperparameters.items()}
    bv = float(post.bias_var)
    Xn, yn = X.numpy(), y.numpy()
    Q = np.random.default_rng(8).normal(size=(4, 3))
    loo_mean, loo_std = post.loo()
    mean_all, std_all = post.predict(torch.from_numpy(Q))
    d_mean, d_var = post.loo_query_change(torch.from_numpy(Q))
    for i in range(10):
        keep = np.arange(10) != i
        m_i, v_i = _np_gp(Xn[keep], yn[keep], Xn[i : i + 1], h, kernel, bv)
        assert float(loo_mean[i]) == pytest.approx(m_i[0], rel=1e-7, abs=1e-9)
        assert float(loo_std[i]) ** 2 == pytest.approx(v_i[0], rel=1e-7)
        mq, vq = _np_gp(Xn[keep], yn[keep], Q, h, kernel, bv)
        np.testing.assert_allclose((mean_all + d_mean[i]).numpy(), mq, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose((std_all**2 + d_var[i]).numpy(), vq, rtol=1e-7)


def test_bad_support_sets_are_one_line_input_errors():
    X, y = make_task(k=1)
    with pytest.raises(InputError, match="at least 2 are needed"):
        fit_gp(X, y)
    assert torch.isfinite(fit_gp(X, y, noise_var=0.1).predict(X)[1]).all()
    with pytest.raises(InputError, match="kernel"):
        fit_gp(*make_task(k=4), kernel="periodic")
    with pytest.raises(InputError, match="init"):
        fit_gp(*make_task(k=4), init={"period": 1.0})
    with pytest.raises(InputError, match=r"\(Q, 3\)"):
        fit_gp(*make_task(k=4)).predict(torch.zeros(2, 5, dtype=F64))


def test_head_object_and_implicit_gradient():
    X, y = make_task(k=8, seed=9)
    head = GaussianProcessHead(kernel="matern52")
    assert repr(head) == "GaussianProcessHead(kernel='matern52')"
    torch.testing.assert_close(
        head.fit(Samples(X, y)).predict(X[:2]), fit_gp(X, y, kernel="matern52").predict(X[:2])
    )
    Q = X[:3] + 0.1

    def loss(features):
        mean, std = fit_gp(features, y, steps=30).predict(Q)
        return (mean**2).sum() + std.sum()

    Xg = X.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(Xg), Xg)
    v = torch.randn(X.shape, dtype=F64, generator=torch.Generator().manual_seed(0))
    eps = 1e-5
    fd = (loss(X + eps * v) - loss(X - eps * v)) / (2 * eps)
    assert float((g * v).sum()) == pytest.approx(float(fd), rel=1e-5, abs=1e-8)


def test_fit_runs_under_vmap_over_tasks():
    Xs = torch.randn(3, 7, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    ys = torch.randn(3, 7, dtype=F64, generator=torch.Generator().manual_seed(4))
    Q = torch.randn(2, 2, dtype=F64)

    def one(X, y):
        return fit_gp(X, y, bias_var=1.0, kernel="matern52").predict(Q)

    means, stds = torch.func.vmap(one)(Xs, ys)
    for t in range(3):
        m, s = one(Xs[t], ys[t])
        torch.testing.assert_close(means[t], m)
        torch.testing.assert_close(stds[t], s)


@pytest.mark.parametrize("fit", ["linear", "gp"])
def test_meta_gradient_through_the_fit_under_torch_func_grad(fit):
    # the meta-learning engine differentiates with torch.func: it must agree with autograd
    from matmeta.bayes import fit_bayes_linear

    head = fit_bayes_linear if fit == "linear" else fit_gp
    gen = torch.Generator().manual_seed(0)
    X, Q = torch.randn(8, 3, dtype=F64, generator=gen), torch.randn(4, 3, dtype=F64, generator=gen)
    y, yq = torch.randn(8, dtype=F64, generator=gen), torch.randn(4, dtype=F64, generator=gen)
    W = torch.randn(3, 5, dtype=F64, generator=gen)

    def loss(W):
        mean, std = head(torch.tanh(X @ W), y).predict(torch.tanh(Q @ W))
        return -torch.distributions.Normal(mean, std).log_prob(yq).mean()

    Wr = W.clone().requires_grad_(True)
    torch.testing.assert_close(torch.func.grad(loss)(W), torch.autograd.grad(loss(Wr), Wr)[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_heads_run_on_cuda_and_match_cpu():
    from matmeta.bayes import fit_bayes_linear

    X, y = make_task(k=12, seed=10)
    for head in (fit_bayes_linear, fit_gp):
        cpu = head(X, y).predict(X[:3])
        gpu = head(X.cuda(), y.cuda()).predict(X[:3].cuda())
        torch.testing.assert_close(tuple(t.cpu() for t in gpu), cpu, rtol=1e-6, atol=1e-8)


def test_gradient_reaches_a_meta_learned_hyperparameter_start():
    X, y = make_task(k=8, seed=11)
    Q = X[:3] + 0.2
    init = torch.tensor([1.5, 0.5, 0.1, 0.05], dtype=F64)
    names = ["lengthscale", "signal_var", "linear_var", "noise_var"]

    def loss(v):
        post = fit_gp(X, y, init=dict(zip(names, v, strict=True)), steps=30)
        mean, std = post.predict(Q)
        return (mean**2).sum() + std.sum()

    vg = init.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(vg), vg)
    d = torch.tensor([0.3, -0.2, 0.5, 0.1], dtype=F64)
    eps = 1e-6
    fd = (loss(init + eps * d) - loss(init - eps * d)) / (2 * eps)
    assert float((g * d).sum()) == pytest.approx(float(fd), rel=1e-5, abs=1e-8)
