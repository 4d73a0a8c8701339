"""Target transforms stored with a model: standardisation, and log10 then standardisation.

A model learns in a transformed space (zero mean, unit variance; log10 first for positive
quantities such as moduli, which span orders of magnitude). The transform travels in the
checkpoint as a plain dict and is applied around the model, never inside training code:
``transform.forward`` maps targets into the model's space, ``transform.inverse`` maps predictions
back into the units users know.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from matmeta.errors import CheckpointError, InputError

__all__ = ["TargetTransform"]

_KINDS = ("identity", "standardize", "log10_standardize")


@dataclass(frozen=True)
class TargetTransform:
    """Map targets (in their units) to the model's space and back.

    ``forward(y) = (g(y) - mean) / std`` with ``g`` the identity or ``log10``; ``inverse`` undoes
    it. ``mean`` and ``std`` are those of ``g(y)`` on the training targets.

    Example:
        >>> t = TargetTransform.fit(bulk_moduli_GPa, kind="log10_standardize")
        >>> y = t.forward(bulk_moduli_GPa)            # train the model on y
        >>> K_GPa = t.inverse(model.forward(params, batch))

    Attributes:
        kind: ``"identity"``, ``"standardize"`` or ``"log10_standardize"``.
        mean: mean of ``g(y)`` on the training targets.
        std: standard deviation of ``g(y)`` (1 where it would be 0).
    """

    kind: str = "standardize"
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise InputError(f"target transform {self.kind!r}: expected one of {_KINDS}")
        if not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 0):
            raise InputError(f"target transform mean={self.mean}, std={self.std}: expected "
                             "finite numbers and a positive std")

    @property
    def log(self) -> bool:
        return self.kind == "log10_standardize"

    @classmethod
    def fit(cls, y: Any, kind: str = "standardize", name: str = "target") -> TargetTransform:
        """Fit mean and std on training targets ``y`` (in their units).

        Raises:
            InputError: NaN or infinite targets; non-positive targets with a log transform.
        """
        if kind not in _KINDS:
            raise InputError(f"target transform {kind!r}: expected one of {_KINDS}")
        arr = _as_numpy(y)
        if arr.size == 0:
            raise InputError(f"{name}: no training targets to fit the transform on")
        bad = ~np.isfinite(arr)
        if bad.any():
            raise InputError(f"{name}: {int(bad.sum())} NaN or infinite value(s), first at index "
                             f"{int(np.flatnonzero(bad)[0])}; expected finite numbers")
        if kind == "log10_standardize":
            if (arr <= 0).any():
                i = int(np.flatnonzero(arr <= 0)[0])
                raise InputError(f"{name}: value {arr[i]} at index {i} cannot be log10-transformed;"
                                 " expected positive values (drop them or train without log)")
            arr = np.log10(arr)
        if kind == "identity":
            return cls(kind, 0.0, 1.0)
        std = float(arr.std())
        return cls(kind, float(arr.mean()), std if std > 0 else 1.0)

    def forward(self, y: Tensor) -> Tensor:
        """Targets in their units -> the model's space."""
        if self.log:
            y = torch.log10(y)
        return (y - self.mean) / self.std

    def inverse(self, y: Tensor) -> Tensor:
        """Model outputs -> targets in their units."""
        y = y * self.std + self.mean
        return 10.0**y if self.log else y

    def to_log_space(self, y: Tensor) -> Tensor:
        """Model outputs -> the space the transform standardised (log10 units for log targets)."""
        return y * self.std + self.mean

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TargetTransform:
        try:
            return cls(str(d["kind"]), float(d["mean"]), float(d["std"]))
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"target transform {d!r}: expected kind, mean and std") from exc


def _as_numpy(y: Any) -> np.ndarray:
    if isinstance(y, Tensor):
        return y.detach().cpu().double().numpy().ravel()
    return np.asarray(y, dtype=float).ravel()
