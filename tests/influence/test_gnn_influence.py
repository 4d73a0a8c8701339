"""Influence on a CGCNN adapted to a held-out MP binary elasticity family (iodides)."""

from __future__ import annotations

import pytest
import torch

from matmeta.influence import InfluenceRequest, agreement, estimate, explain, loo_influence
from matmeta.models import Samples
from tests.helpers import shared_dataset
from tests.influence._gnn_setup import pretrained_family

pytestmark = pytest.mark.shared_data

FULL = {"steps": 10, "lr": 0.05}                       # every parameter, a few MAML-like steps
LAST = ["head.1.weight", "head.1.bias"]


@pytest.fixture(scope="module")
def iodides():
    path = shared_dataset("structures/mp_binary_elasticity.json.gz")
    return pretrained_family(path, family="I", n_train=80, k_support=12, n_query=8,
                             train_steps=100)


def test_planted_outlier_ranks_first_on_gnn(iodides):
    model, params, support, query, ids, _ = iodides
    y = support.y.clone()
    bad = 5
    y[bad] += 1.0  # a bulk modulus off by a factor of ten (targets are log10 GPa)
    df = explain(model, params, Samples(support.inputs, y), query, inner=FULL,
                 estimator="unrolled", check_loo=True, ids=ids)
    assert df.loc[df["harm_rank"] == 1, "sample"].item() == ids[bad]
    assert df.loc[df["loo:query_loss"].idxmin(), "sample"] == ids[bad]
    assert df.attrs["agreement"]["query_loss"]["spearman"] >= 0.7


def test_gnn_estimators_against_loo(iodides):
    model, params, support, query, ids, _ = iodides
    req = InfluenceRequest(model, params, support, FULL, query=query, ids=ids)
    loo = loo_influence(req).scores[:, 0].numpy()
    unrolled = estimate(req, "unrolled").scores[:, 0].numpy()
    assert agreement(unrolled, loo)["spearman"] >= 0.7
    # ANIL on the last layer with a proximal term: a converged inner loop, so implicit applies
    # (exact Hessian solve) and conjugate gradients on Hessian-vector products agree with it
    head = InfluenceRequest(model, params, support,
                            {"steps": 300, "lr": 0.06, "proximal": 0.5, "trainable": LAST},
                            query=query, ids=ids)
    loo_h = loo_influence(head).scores[:, 0].numpy()
    exact = estimate(head, "implicit", solver="exact")
    cg = estimate(head, "implicit", solver="cg", damping=exact.info["damping"])
    assert agreement(exact.scores[:, 0].numpy(), loo_h)["spearman"] >= 0.7
    torch.testing.assert_close(cg.scores, exact.scores, rtol=1e-4, atol=1e-9)
