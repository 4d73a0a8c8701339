"""Influence of each support sample on an adaptation: requests, estimators, agreement with LOO.

The request (:class:`InfluenceRequest`) says what to measure; an estimator (``loo``,
``unrolled``, ``implicit``, ``tracin``; ``exact_closed_form`` for Bayesian linear and GP heads,
refit-free) says how. Every score follows one sign convention:
``target(adapted without the sample) - target(adapted with all)``; for the query loss, positive
means the sample helped, negative that it hurt.

Example:
    >>> from matmeta.influence import explain
    >>> df = explain(model, params, support, query, inner={"steps": 100, "lr": 0.1},
    ...              estimator="unrolled", check_loo=True)
"""

from matmeta.influence._closed_form import head_loo_influence
from matmeta.influence._estimators import (
    ESTIMATORS,
    InfluenceScores,
    closed_form_influence,
    estimate,
    implicit_influence,
    loo_influence,
    tracin_influence,
    unrolled_influence,
)
from matmeta.influence._explain import (
    DuplicateSampleWarning,
    PoorFitWarning,
    agreement,
    explain,
    explain_request,
    find_duplicates,
)
from matmeta.influence._request import SIGN_CONVENTION, InfluenceRequest

__all__ = [
    "agreement",
    "closed_form_influence",
    "DuplicateSampleWarning",
    "estimate",
    "ESTIMATORS",
    "explain",
    "explain_request",
    "find_duplicates",
    "head_loo_influence",
    "implicit_influence",
    "InfluenceRequest",
    "InfluenceScores",
    "loo_influence",
    "PoorFitWarning",
    "SIGN_CONVENTION",
    "tracin_influence",
    "unrolled_influence",
]
