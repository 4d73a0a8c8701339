"""Unit and convention converters for kinetics: time units and the two Avrami conventions.

matmeta works in seconds and in the ``(k t)^n`` convention, ``f = 1 - exp(-(k t)^n)`` with ``k`` in
1/s. Papers also write ``f = 1 - exp(-K t^n)`` with ``K`` in ``unit^-n`` and times in minutes or
hours; these helpers convert both ways so the number a user reads in a paper goes in unchanged.

Example:
    >>> k_per_s = K_to_k_per_s(13.2388, n=1.68, time_unit="min")   # K in min^-n
    >>> round(k_per_s, 5)
    0.07756
    >>> round(k_per_s_to_K(k_per_s, n=1.68, time_unit="min"), 4)
    13.2388
"""

from __future__ import annotations

import math

import numpy as np

from matmeta.errors import InputError

__all__ = [
    "TIME_UNITS",
    "K_to_k_per_s",
    "R_J_PER_MOL_K",
    "k_per_s_to_K",
    "seconds_per",
    "time_from_seconds",
    "time_to_seconds",
]

# seconds in one unit; the only time units matmeta accepts.
TIME_UNITS: dict[str, float] = {"s": 1.0, "min": 60.0, "h": 3600.0}

# CODATA 2018 molar gas constant.
R_J_PER_MOL_K = 8.314462618


def seconds_per(unit: str) -> float:
    """Seconds in one ``unit`` (``"s"``, ``"min"`` or ``"h"``).

    Example:
        >>> seconds_per("h")
        3600.0
    """
    try:
        return TIME_UNITS[unit]
    except KeyError:
        raise InputError(
            f"time unit {unit!r}: expected one of {', '.join(TIME_UNITS)}"
        ) from None


def time_to_seconds(values, unit: str):
    """Convert times from ``unit`` to seconds (floats, numpy arrays or tensors).

    Example:
        >>> time_to_seconds(2.0, "min")
        120.0
    """
    return values * seconds_per(unit)


def time_from_seconds(values_s, unit: str):
    """Convert times in seconds to ``unit``.

    Example:
        >>> time_from_seconds(7200.0, "h")
        2.0
    """
    return values_s / seconds_per(unit)


def K_to_k_per_s(K, n, time_unit: str = "s"):  # noqa: N802 - K is the symbol papers use
    """Convert ``K`` of ``f = 1 - exp(-K t^n)`` (t in ``time_unit``) to ``k`` in 1/s.

    ``K t_u^n = (K^(1/n) t_s / u)^n`` with ``u`` seconds per unit, so ``k = K^(1/n) / u``.

    Example:
        >>> K_to_k_per_s(4.0, n=2.0, time_unit="s")
        2.0

    Args:
        K: rate constant(s) in ``time_unit^-n`` (positive).
        n: Avrami exponent(s) (positive).
        time_unit: the time unit K was fitted in.

    Returns:
        k in 1/s, same type as the inputs (float or numpy array).
    """
    u = seconds_per(time_unit)
    K_arr, n_arr = np.asarray(K, dtype=float), np.asarray(n, dtype=float)
    if np.any(K_arr <= 0) or np.any(n_arr <= 0):
        raise InputError("K_to_k_per_s: K and n must be positive")
    out = np.exp(np.log(K_arr) / n_arr) / u
    return float(out) if out.ndim == 0 else out


def k_per_s_to_K(k_per_s, n, time_unit: str = "s"):  # noqa: N802
    """Convert ``k`` in 1/s of ``f = 1 - exp(-(k t)^n)`` to ``K`` in ``time_unit^-n``.

    Example:
        >>> k_per_s_to_K(2.0, n=2.0)
        4.0
    """
    u = seconds_per(time_unit)
    k_arr, n_arr = np.asarray(k_per_s, dtype=float), np.asarray(n, dtype=float)
    if np.any(k_arr <= 0) or np.any(n_arr <= 0):
        raise InputError("k_per_s_to_K: k and n must be positive")
    out = np.exp(n_arr * np.log(k_arr * u))
    return float(out) if out.ndim == 0 else out


def t_half_from_k(k_per_s: float, n: float, t0_s: float = 0.0) -> float:
    """Half-transformation time ``t0 + ln(2)^(1/n) / k`` in seconds."""
    return t0_s + math.log(2.0) ** (1.0 / n) / k_per_s
