"""The interface every adaptation head offers, and the one scoring call built on it.

A head is fitted to a support set and returns a posterior; the posterior predicts a mean and a
standard deviation per query. The Bayesian linear and GP heads (features in, targets out) and the
parametric laws with a meta-learned prior (times in, fractions out) all satisfy it, so an
evaluation loops over heads without knowing which is which.

Example:
    >>> for head in (BayesianLinearHead(), GaussianProcessHead(), ParametricPriorHead(JMAK(), p)):
    ...     scores = score_head(head, support, query)   # mae, crps, nlpd, coverage_50, ...
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from matmeta.bayes._metrics import score_predictions
from matmeta.models._protocol import Samples

__all__ = ["AdaptationHead", "PredictivePosterior", "score_head"]


@runtime_checkable
class PredictivePosterior(Protocol):
    """A fitted head: ``predict(query_inputs) -> (mean, std)``, std including the noise."""

    def predict(self, query: Any) -> tuple[Tensor, Tensor]: ...


@runtime_checkable
class AdaptationHead(Protocol):
    """Settings of a head: ``fit(support: Samples) -> PredictivePosterior``."""

    def fit(self, support: Samples) -> PredictivePosterior: ...


def score_head(
    head: AdaptationHead, support: Samples, query: Samples, levels: Sequence[float] = (0.5, 0.9)
) -> dict[str, float]:
    """Fit ``head`` on ``support``, predict ``query`` and score it (MAE, CRPS, NLPD, coverage).

    Example:
        >>> score_head(GaussianProcessHead(), Samples(phi_s, y_s), Samples(phi_q, y_q))
        {'mae': 0.12, 'crps': 0.09, 'nlpd': -0.3, 'coverage_50': 0.5, 'coverage_90': 0.9}
    """
    mean, std = head.fit(support).predict(query.inputs)
    return score_predictions(mean.detach(), std.detach(), query.y.to(mean), levels)
