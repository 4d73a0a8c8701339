"""Exact influence of closed-form heads: leave-one-out without refitting, and the brute force.

A Bayesian linear or GP head on the model's features is a Gaussian process on the support
targets, so the effect of removing support point ``i`` on every query's predictive mean is closed
form (hyperparameters held at their fitted values): ``-w_qi a_i / P_ii`` with ``P = C^-1``,
``a = P r``, ``w_q = P k_q`` (:meth:`~matmeta.bayes._core.GaussianPosterior.loo_query_change`).
The query loss is the MSE of the predictive mean, as :func:`~matmeta.models.sample_loss` scores
any adapted model, so its change follows exactly too.

Example:
    >>> req = InfluenceRequest(model, meta_params, support, {"algorithm": "gp", "steps": 10},
    ...                        query=query, targets=("query_loss", "prediction"))
    >>> estimate(req, "exact_closed_form").scores       # (K, 1 + Q), no refits
    >>> head_loo_influence(req, hyper="refit").scores   # K brute-force refits
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from matmeta.errors import InputError
from matmeta.influence._request import InfluenceRequest
from matmeta.models._protocol import weighted_mse

if TYPE_CHECKING:  # the estimators module imports this one lazily
    from matmeta.influence._estimators import InfluenceScores

__all__ = ["closed_form_influence", "head_loo_influence"]


def _need_head(request: InfluenceRequest, name: str) -> None:
    if getattr(request, "head", None) is None:
        raise InputError(f"estimator {name!r} is for closed-form heads: give the request "
                         "inner={'algorithm': 'bayes_linear' or 'gp', 'steps': N} (a head "
                         "checkpoint's inner record)")
    if request.support.weight is not None and bool((request.support.weight != 1).any()):
        raise InputError("closed-form heads take no per-sample support weights; drop them")


def _targets(request: InfluenceRequest, mean: Tensor) -> Tensor:
    """(..., m) targets from query predictive means (..., Q), in target_names() order."""
    parts = []
    for t in request.targets:
        if t == "query_loss":
            q = request.query
            parts.append(weighted_mse(mean, q.y.to(mean), None if q.weight is None
                                      else q.weight.to(mean)).unsqueeze(-1))
        else:
            parts.append(mean)
    return torch.cat(parts, dim=-1)


def closed_form_influence(request: InfluenceRequest) -> InfluenceScores:
    """Exact leave-one-out influence of a closed-form head, no refitting.

    ``score_i = target(head without point i) - target(head with all)``, hyperparameters held at
    the values fitted on all K points (what leave-one-out with fixed hyperparameters means; the
    brute-force check is :func:`head_loo_influence` with ``hyper="fixed"``).

    Example:
        >>> estimate(req, "exact_closed_form").scores[:, 0]    # query-loss change per point
    """
    from matmeta.influence._estimators import InfluenceScores

    _need_head(request, "exact_closed_form")
    post = request.fit_head()
    with torch.no_grad():
        mean, _ = post.predict(request.query.inputs)
        d_mean, _ = post.loo_query_change(request.query.inputs)  # (K, Q)
        base = _targets(request, mean)
        without = _targets(request, mean.unsqueeze(0) + d_mean)
    return InfluenceScores((without - base).detach(), request.target_names(),
                           "exact_closed_form",
                           {"hyperparameters": post.hyperparameters, "refits": 0})


def head_loo_influence(request: InfluenceRequest, hyper: str = "refit"
                       ) -> InfluenceScores:
    """Brute-force leave-one-out of a closed-form head: K refits on K - 1 points.

    Example:
        >>> head_loo_influence(req, hyper="fixed").scores   # equals exact_closed_form
        >>> head_loo_influence(req, hyper="refit").scores   # hyperparameters refitted too

    Args:
        hyper: ``"fixed"`` holds the hyperparameters fitted on all K points (the closed form's
            assumption); ``"refit"`` fits them again on every K - 1 subset (what the user's
            adaptation would do).
    """
    from matmeta.influence._estimators import InfluenceScores

    _need_head(request, "loo")
    if hyper not in ("fixed", "refit"):
        raise InputError(f"hyper={hyper!r}: expected fixed or refit")
    k = request.num_support
    if k < 3:
        raise InputError(f"leave-one-out refits of a head need at least 3 support points (each "
                         f"refit needs 2); got {k}")
    full = request.fit_head()
    with torch.no_grad():
        base = _targets(request, full.predict(request.query.inputs)[0])
        rows = []
        for i in range(k):
            keep = [j for j in range(k) if j != i]
            post = request.fit_head(keep, fixed=full if hyper == "fixed" else None)
            rows.append(_targets(request, post.predict(request.query.inputs)[0]))
    return InfluenceScores((torch.stack(rows) - base).detach(), request.target_names(), "loo",
                           {"loo_mode": f"head refits, hyperparameters {hyper}", "refits": k})
