"""Influence estimators against answers we did not compute with them: closed-form OLS
leave-one-out, finite differences of the adaptation, and each other's exact limits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from matmeta.errors import InputError
from matmeta.influence import (
    InfluenceRequest,
    agreement,
    estimate,
    implicit_influence,
    loo_influence,
    tracin_influence,
    unrolled_influence,
)
from matmeta.models import Samples
from matmeta.models._mlp import MLP
from tests.influence._models import F64, Linear, linear_data

CONVERGED = {"steps": 160, "lr": 0.45}


def _ols_reference(support: Samples):
    """OLS solution, exact LOO shifts and their first-order (infinitesimal jackknife) form."""
    x = np.c_[support.inputs.numpy(), np.ones(len(support.y))]
    y = support.y.numpy()
    xtx_inv = np.linalg.inv(x.T @ x)
    theta = xtx_inv @ x.T @ y
    resid = y - x @ theta
    lev = np.einsum("ij,jk,ik->i", x, xtx_inv, x)
    first = -(xtx_inv @ (x * resid[:, None]).T).T         # (K, P)
    exact = first / (1 - lev)[:, None]
    return theta, exact, first


def _linear_request(targets=("params",), inner=CONVERGED, **kw):
    support, query = linear_data()
    model = Linear()
    return InfluenceRequest(model, model.init_params(), support, inner, query=query,
                            targets=targets, **kw), support


def test_loo_matches_closed_form_ols_deletion():
    req, support = _linear_request()
    theta, exact, _ = _ols_reference(support)
    adapted = req.adapt()
    np.testing.assert_allclose(torch.cat([adapted["w"], adapted["b"][None]]).numpy(), theta,
                               atol=1e-9)
    loo = loo_influence(req)
    assert loo.names == ["param:w[0]", "param:w[1]", "param:b"]
    np.testing.assert_allclose(loo.scores.numpy(), exact, atol=1e-8)
    # the loop path gives the same numbers as the vmapped one (a short loop keeps this fast)
    short, _ = _linear_request(inner={"steps": 15, "lr": 0.3})
    np.testing.assert_allclose(loo_influence(short, mode="loop").scores.numpy(),
                               loo_influence(short, mode="vmap").scores.numpy(), atol=1e-13)


@pytest.mark.parametrize("solver", ["exact", "cg"])
def test_implicit_equals_first_order_jackknife(solver):
    req, support = _linear_request()
    _, _, first = _ols_reference(support)
    out = implicit_influence(req, solver=solver, damping=0.0 if solver == "cg" else None)
    np.testing.assert_allclose(out.scores.numpy(), first, atol=1e-7)
    assert out.info["damping"] == 0.0


def test_unrolled_converged_equals_first_order_and_query_loss_chain_rule():
    req, support = _linear_request(targets=("params", "query_loss"))
    _, _, first = _ols_reference(support)
    out = unrolled_influence(req)
    np.testing.assert_allclose(out.scores.numpy()[:, :3], first, atol=1e-7)
    # query-loss score = grad(query loss) . parameter shift, with the gradient from numpy
    adapted = req.adapt()
    xq = np.c_[req.query.inputs.numpy(), np.ones(len(req.query.y))]
    th = torch.cat([adapted["w"], adapted["b"][None]]).numpy()
    grad_q = 2 * xq.T @ (xq @ th - req.query.y.numpy()) / len(req.query.y)
    np.testing.assert_allclose(out.scores.numpy()[:, 3], first @ grad_q, atol=1e-7)
    # forward mode gives the same Jacobian as reverse mode
    fwd = unrolled_influence(req, mode="forward")
    np.testing.assert_allclose(fwd.scores.numpy(), out.scores.numpy(), atol=1e-10)


def test_unrolled_matches_finite_differences_on_unconverged_mlp():
    g = torch.Generator().manual_seed(1)
    model = MLP(in_dim=1, hidden=(8,), dtype="float64")
    params = model.init_params(g)
    x = torch.linspace(-2, 2, 7, dtype=F64)[:, None]
    y = torch.sin(x[:, 0])
    xq = torch.linspace(-1.5, 1.5, 5, dtype=F64)[:, None]
    req = InfluenceRequest(model, params, Samples(x, y), {"steps": 5, "lr": 0.05},
                           query=Samples(xq, torch.sin(xq[:, 0])),
                           targets=("query_loss", "prediction"))
    out = unrolled_influence(req)
    eps = 1e-6
    w = torch.ones(7, dtype=F64)
    for i in (0, 3, 6):
        up, down = w.clone(), w.clone()
        up[i] += eps
        down[i] -= eps
        deriv = (req.evaluate(req.adapt(up)) - req.evaluate(req.adapt(down))) / (2 * eps)
        np.testing.assert_allclose(out.scores[i].numpy(), -deriv.numpy(), rtol=1e-5, atol=1e-9)


def test_tracin_with_one_step_equals_unrolled():
    # With one inner step nothing propagates, so TracIn's first-order sum is exact.
    req, _ = _linear_request(targets=("params",), inner={"steps": 1, "lr": 0.2})
    np.testing.assert_allclose(tracin_influence(req).scores.numpy(),
                               unrolled_influence(req).scores.numpy(), atol=1e-12)
    # per-parameter rates (Meta-SGD) enter elementwise
    rates = {"w": torch.tensor([0.1, 0.3], dtype=F64), "b": torch.tensor(0.05, dtype=F64)}
    req2, _ = _linear_request(targets=("params",), inner={"steps": 1, "lr": 0.2,
                                                           "per_param_lr": rates})
    np.testing.assert_allclose(tracin_influence(req2).scores.numpy(),
                               unrolled_influence(req2).scores.numpy(), atol=1e-12)


def test_tracin_equals_hand_written_trajectory_sum():
    # TracIn by hand for the linear model: numpy gradient descent, numpy gradients.
    req, support = _linear_request(targets=("query_loss",), inner={"steps": 30, "lr": 0.1})
    out = tracin_influence(req, checkpoints=None)
    assert out.info == {"checkpoints": 30, "steps": 30}
    x = np.c_[support.inputs.numpy(), np.ones(len(support.y))]
    y = support.y.numpy()
    xq = np.c_[req.query.inputs.numpy(), np.ones(len(req.query.y))]
    yq = req.query.y.numpy()
    k = len(y)
    theta = np.zeros(3)
    total = np.zeros(k)
    for _ in range(30):
        r = x @ theta - y
        g_i = 2 * x * r[:, None]                       # per-sample loss gradients
        g_mean = g_i.mean(0)
        g_q = 2 * xq.T @ (xq @ theta - yq) / len(yq)
        # deleting i: the mean's gradient changes by -(g_i - g_mean) / K
        total += 0.1 * (g_i - g_mean) @ g_q / k
        theta = theta - 0.1 * g_mean
    np.testing.assert_allclose(out.scores[:, 0].numpy(), total, atol=1e-12)
    # fewer checkpoints, each standing for its span, approximate the full sum
    coarse = tracin_influence(req, checkpoints=10).scores[:, 0].numpy()
    assert stats.spearmanr(coarse, total).statistic > 0.8


def test_proximal_term_enters_implicit_hessian():
    # With a proximal term the minimiser is ridge-like: (X^T X / K + lam I/2) theta = ...
    req, support = _linear_request(inner={"steps": 100, "lr": 0.4, "proximal": 0.5})
    loo = loo_influence(req).scores.numpy()
    imp = implicit_influence(req).scores.numpy()
    assert stats.pearsonr(imp.ravel(), loo.ravel()).statistic > 0.99
    # and it differs from the unregularised answer
    _, _, first = _ols_reference(support)
    assert np.abs(imp - first).max() > 1e-3


def test_implicit_refuses_unconverged_loop_and_suggests_unrolled():
    req, _ = _linear_request(inner={"steps": 3, "lr": 0.05})
    with pytest.raises(InputError, match="unrolled"):
        implicit_influence(req)


def test_agreement_uses_scipy_and_handles_constant_input():
    a = np.array([0.1, 0.5, 0.2, 0.9])
    b = np.array([0.0, 0.4, 0.3, 1.0])
    out = agreement(a, b)
    assert out["spearman"] == pytest.approx(stats.spearmanr(a, b).statistic)
    assert out["pearson"] == pytest.approx(stats.pearsonr(a, b).statistic)
    assert np.isnan(agreement(a, np.ones(4))["pearson"])


def test_unknown_estimator_and_weights_other_than_one():
    req, support = _linear_request()
    with pytest.raises(InputError, match="unknown influence estimator"):
        estimate(req, "lissa")
    # a non-unit weight: LOO deletes it entirely; the first-order scores scale with it
    w = torch.ones(len(support.y), dtype=F64)
    w[2] = 2.0
    req_w = InfluenceRequest(req.model, req.params, Samples(support.inputs, support.y, w),
                             CONVERGED, targets=("params",))
    loo = loo_influence(req_w).scores.numpy()
    imp = implicit_influence(req_w).scores.numpy()
    assert stats.pearsonr(imp.ravel(), loo.ravel()).statistic > 0.99
