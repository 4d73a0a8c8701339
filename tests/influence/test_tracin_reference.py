"""The forward-mode TracIn against its slow reference: a reverse-over-reverse mixed derivative
per checkpoint (d/dw of <lr * grad target, grad_theta L>), the textbook route, written out here
with torch.autograd and no code from the estimator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from matmeta.influence import InfluenceRequest, tracin_influence
from matmeta.models import Samples
from matmeta.models._mlp import MLP
from tests.influence._models import F64, Linear, linear_data


def _reference_tracin(req: InfluenceRequest, picks: list[int] | None = None) -> np.ndarray:
    """sum_t span_t * w_i * d/dw_i <lr * grad target(theta_t), grad_theta L(theta_t, w)>."""
    keys = req.trainable_keys
    w0 = req.weight.detach()
    with torch.no_grad():
        _, traj = req.adapt(w0, return_trajectory=True)
    steps = len(traj)
    picks = list(range(steps)) if picks is None else picks
    spans = [b - a for a, b in zip(picks, [*picks[1:], steps], strict=True)]
    rates = req.lr_tree()
    m = len(req.target_names())
    total = torch.zeros(m, req.num_support, dtype=F64)
    for t, span in zip(picks, spans, strict=True):
        with torch.enable_grad():
            theta = {k: traj[t][k].detach().clone().requires_grad_(k in keys) for k in traj[t]}
            targets = req.evaluate(theta)
            w = w0.clone().requires_grad_(True)
            grads = torch.autograd.grad(req.objective({k: theta[k] for k in keys}, w),
                                        [theta[k] for k in keys], create_graph=True)
            for j in range(m):
                g_target = torch.autograd.grad(targets[j], [theta[k] for k in keys],
                                               retain_graph=True, allow_unused=True)
                dot = sum((rates[k] * (torch.zeros_like(theta[k]) if gt is None else gt)
                           * g).sum() for k, gt, g in zip(keys, g_target, grads, strict=True))
                (row,) = torch.autograd.grad(dot, w, retain_graph=True)
                total[j] += span * row
    return (w0[:, None] * total.T).numpy()


def _linear_request(targets, inner, weight=None):
    support, query = linear_data(k=9, dim=2, seed=3)
    if weight is not None:
        support = Samples(support.inputs, support.y, weight)
    return InfluenceRequest(Linear(2), Linear(2).init_params(), support, inner, query=query,
                            targets=targets)


@pytest.mark.parametrize("targets", [("query_loss",), ("params",), ("query_loss", "prediction")])
def test_tracin_matches_reverse_over_reverse_reference_linear(targets):
    req = _linear_request(targets, {"steps": 12, "lr": 0.1, "proximal": 0.3})
    out = tracin_influence(req, checkpoints=None)
    np.testing.assert_allclose(out.scores.numpy(), _reference_tracin(req), rtol=0, atol=1e-10)


def test_tracin_reference_with_weights_rates_and_checkpoints():
    # non-unit weights (the 1/sum(w) renormalisation), Meta-SGD rates, checkpoint spans
    weight = torch.linspace(0.5, 2.0, 9, dtype=F64)
    rates = {"w": torch.tensor([0.05, 0.15], dtype=F64), "b": torch.tensor(0.02, dtype=F64)}
    req = _linear_request(("query_loss", "params"),
                          {"steps": 20, "lr": 0.1, "per_param_lr": rates}, weight=weight)
    out = tracin_influence(req, checkpoints=6)
    picks = sorted({int(round(x)) for x in torch.linspace(0, 19, 6).tolist()})
    np.testing.assert_allclose(out.scores.numpy(), _reference_tracin(req, picks),
                               rtol=0, atol=1e-10)


def test_tracin_matches_reference_mlp_with_frozen_layers():
    gen = torch.Generator().manual_seed(1)
    model = MLP(in_dim=1, hidden=(8, 8), dtype="float64")
    params = model.init_params(gen)
    x = 4 * torch.rand(10, 1, generator=gen, dtype=F64) - 2
    y = torch.sin(2 * x[:, 0])
    xq = torch.linspace(-2, 2, 6, dtype=F64)[:, None]
    last = list(params)[-2:]  # an ANIL-style head: only the last layer adapts
    for trainable in (None, last):
        inner = {"steps": 5, "lr": 0.1, **({"trainable": trainable} if trainable else {})}
        req = InfluenceRequest(model, params, Samples(x, y), inner,
                               query=Samples(xq, torch.sin(2 * xq[:, 0])),
                               targets=("query_loss", "prediction"))
        out = tracin_influence(req, checkpoints=None)
        ref = _reference_tracin(req)
        assert np.abs(ref).max() > 1e-6  # the comparison is not between zeros
        np.testing.assert_allclose(out.scores.numpy(), ref, rtol=0, atol=1e-10)


class _NoVmapLinear(Linear):
    supports_vmap = False


def test_tracin_chunked_and_unvmapped_paths_match_reference(monkeypatch):
    import matmeta.influence._estimators as est

    req = _linear_request(("query_loss", "params"), {"steps": 11, "lr": 0.1})
    ref = _reference_tracin(req)
    monkeypatch.setattr(est, "TRACIN_CHUNK", 4)  # 11 checkpoints in chunks of 4, 4, 3
    np.testing.assert_allclose(tracin_influence(req, checkpoints=None).scores.numpy(), ref,
                               rtol=0, atol=1e-10)
    support, query = linear_data(k=9, dim=2, seed=3)
    plain = InfluenceRequest(_NoVmapLinear(2), Linear(2).init_params(), support,
                             {"steps": 11, "lr": 0.1}, query=query,
                             targets=("query_loss", "params"))
    np.testing.assert_allclose(tracin_influence(plain, checkpoints=None).scores.numpy(), ref,
                               rtol=0, atol=1e-10)
