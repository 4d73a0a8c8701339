"""Regression metrics: MAE, RMSE and R²."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["regression_metrics"]


def regression_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    """MAE, RMSE and R² of predictions (same units as the inputs).

    Example:
        >>> regression_metrics([1.0, 2.0, 3.0], [1.0, 2.0, 4.0])["mae"]
        0.3333333333333333

    Returns:
        ``{"mae", "rmse", "r2", "n"}``; R² is NaN when the targets have no spread.
    """
    t = np.asarray(y_true, dtype=float).ravel()
    p = np.asarray(y_pred, dtype=float).ravel()
    if t.shape != p.shape:
        raise ValueError(f"{t.shape[0]} targets but {p.shape[0]} predictions")
    if t.size == 0:
        nan = float("nan")
        return {"mae": nan, "rmse": nan, "r2": nan, "n": 0}
    err = p - t
    ss_tot = float(((t - t.mean()) ** 2).sum())
    r2 = 1.0 - float((err**2).sum()) / ss_tot if ss_tot > 0 else float("nan")
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err**2).mean())),
            "r2": r2, "n": int(t.size)}
