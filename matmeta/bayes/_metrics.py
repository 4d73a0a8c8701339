"""Scores of a predictive distribution against observed values.

Every Bayesian head (and every ensemble) ends in a predictive mean and standard deviation per
query, or in samples; these functions turn them into the figures the evaluation command reports:
the continuous ranked probability score (CRPS, in target units, lower is better), the negative log
predictive density (NLPD, in nats) and the coverage of central intervals (a calibrated 90% interval
covers 90% of held-out values).

Example:
    >>> mean, std = posterior.predict(query_features)
    >>> gaussian_crps(mean, std, y_query).mean()           # average CRPS over the query set
    >>> interval_coverage(mean, std, y_query, level=0.9)    # fraction inside the 90% interval
    >>> score_predictions(mean, std, y_query)               # all of them as a dict of floats
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from matmeta.errors import InputError

__all__ = [
    "central_interval",
    "gaussian_crps",
    "gaussian_nlpd",
    "interval_coverage",
    "sample_crps",
    "score_predictions",
]

_SQRT2 = math.sqrt(2.0)
_INV_SQRT_PI = 1.0 / math.sqrt(math.pi)
_LOG_2PI = math.log(2.0 * math.pi)


def _check_std(std: Tensor) -> None:
    # A zero std makes NLPD infinite: say so rather than report inf/NaN. (Not called inside the
    # differentiable scores, which must stay free of data-dependent branches for torch.func.)
    if bool((std <= 0).any()) or not bool(torch.isfinite(std).all()):
        raise InputError("predictive std: expected finite positive values")


def gaussian_crps(mean: Tensor, std: Tensor, y: Tensor) -> Tensor:
    """CRPS of ``N(mean, std^2)`` at observations ``y``, in closed form (target units).

    ``CRPS = std * (z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi))`` with ``z = (y - mean) / std``
    (Gneiting and Raftery 2007). Differentiable in ``mean`` and ``std``.

    Example:
        >>> gaussian_crps(torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([0.0]))
        tensor([0.2337])

    Args:
        mean, std, y: broadcastable tensors; ``std > 0``.

    Returns:
        The elementwise CRPS (broadcast shape).
    """
    z = (y - mean) / std
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    cdf = torch.special.ndtr(z)
    return std * (z * (2.0 * cdf - 1.0) + 2.0 * pdf - _INV_SQRT_PI)


def gaussian_nlpd(mean: Tensor, std: Tensor, y: Tensor) -> Tensor:
    """Negative log density of ``y`` under ``N(mean, std^2)``, in nats (elementwise).

    Example:
        >>> gaussian_nlpd(torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([0.0]))
        tensor([0.9189])
    """
    z = (y - mean) / std
    return 0.5 * z * z + torch.log(std) + 0.5 * _LOG_2PI


def central_interval(mean: Tensor, std: Tensor, level: float = 0.9) -> tuple[Tensor, Tensor]:
    """Lower and upper ends of the central ``level`` interval of ``N(mean, std^2)``.

    Example:
        >>> lo, hi = central_interval(torch.tensor([0.0]), torch.tensor([1.0]), 0.9)
        >>> round(float(hi), 4)   # the 95th percentile of the standard normal
        1.6449
    """
    if not 0.0 < float(level) < 1.0:
        raise InputError(f"interval level {level}: expected a fraction strictly between 0 and 1")
    half = _SQRT2 * torch.special.erfinv(torch.tensor(float(level), dtype=torch.float64))
    half = half.to(dtype=std.dtype, device=std.device)
    return mean - half * std, mean + half * std


def interval_coverage(mean: Tensor, std: Tensor, y: Tensor, level: float = 0.9) -> Tensor:
    """Fraction of ``y`` inside the central ``level`` interval of ``N(mean, std^2)``.

    A calibrated predictor covers about ``level`` of held-out values. The ends count as inside.

    Example:
        >>> interval_coverage(mean, std, y_query, level=0.5)
        tensor(0.4800, dtype=torch.float64)

    Returns:
        A scalar tensor in [0, 1] (the mean over all elements).
    """
    _check_std(std)
    lo, hi = central_interval(mean, std, level)
    inside = (y >= lo) & (y <= hi)
    return inside.to(std.dtype).mean()


def sample_crps(samples: Tensor, y: Tensor, fair: bool = False) -> Tensor:
    """CRPS of an ensemble or of posterior samples, in the energy form.

    ``CRPS = E|X - y| - E|X - X'| / 2`` over the empirical distribution of ``samples`` (first axis).
    ``E|X - X'|`` is computed from the sorted samples in O(S log S). With ``fair=True`` the second
    term uses ``1 / (S (S - 1))`` instead of ``1 / S^2`` (the unbiased estimate of the CRPS of the
    distribution the members were drawn from, Ferro 2014).

    Example:
        >>> members = torch.stack([model_a(x), model_b(x), model_c(x)])   # (3, n)
        >>> sample_crps(members, y)                                        # (n,)

    Args:
        samples: (S, ...) ensemble members or draws.
        y: observations broadcastable to ``samples.shape[1:]``.
        fair: use the ensemble-size-corrected (fair) form.

    Returns:
        The CRPS per element of ``y`` (shape ``samples.shape[1:]`` broadcast with ``y``).
    """
    s = samples.shape[0]
    if s < 1 or (fair and s < 2):
        raise InputError(f"sample_crps: got {s} samples; expected at least {2 if fair else 1}")
    term1 = (samples - y).abs().mean(0)
    xs = torch.sort(samples, dim=0).values
    # sum_{i,j} |x_i - x_j| = 2 sum_i (2i - S - 1) x_(i) for sorted x, i = 1..S
    shape = (s,) + (1,) * (samples.dim() - 1)
    coef = (2.0 * torch.arange(1, s + 1, dtype=xs.dtype, device=xs.device) - s - 1).view(shape)
    pair_sum = 2.0 * (coef * xs).sum(0)
    denom = s * (s - 1) if fair else s * s
    return term1 - 0.5 * pair_sum / denom


def score_predictions(
    mean: Tensor, std: Tensor, y: Tensor, levels: Sequence[float] = (0.5, 0.9)
) -> dict[str, float]:
    """Mean CRPS, mean NLPD, MAE and interval coverages of Gaussian predictions, as floats.

    The one call the evaluation command makes per method and split, so every method is scored the
    same way.

    Example:
        >>> score_predictions(mean, std, y_query)
        {'mae': 0.21, 'crps': 0.15, 'nlpd': 0.42, 'coverage_50': 0.52, 'coverage_90': 0.88}

    Args:
        mean, std, y: (n,) predictive means and standard deviations, observations (same units).
        levels: central-interval levels to report, as fractions.

    Returns:
        ``{"mae", "crps", "nlpd", "coverage_<100*level>"}``.
    """
    if mean.shape != y.shape or std.shape != y.shape:
        raise InputError(
            f"score_predictions: mean {tuple(mean.shape)}, std {tuple(std.shape)} and "
            f"y {tuple(y.shape)} must have the same shape"
        )
    if y.numel() == 0:
        raise InputError("score_predictions: no query values to score")
    _check_std(std)
    with torch.no_grad():
        out = {
            "mae": float((mean - y).abs().mean()),
            "crps": float(gaussian_crps(mean, std, y).mean()),
            "nlpd": float(gaussian_nlpd(mean, std, y).mean()),
        }
        for level in levels:
            key = f"coverage_{round(100 * float(level)):d}"
            out[key] = float(interval_coverage(mean, std, y, level))
    return out
