"""Featurizer settings: everything that decides what a crystal graph looks like.

One frozen object travels with every model trained on graphs built with it (saved in the
checkpoint as a plain dict); loading a model with different settings is refused with a message
naming the setting that differs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from matmeta.config import settings_from_dict
from matmeta.errors import CheckpointError, InputError

__all__ = ["FeaturizerSettings", "GRAPH_FORMAT_VERSION"]

# Bump when the graph-building code changes what it produces for the same settings; it is part
# of the cache key and of the settings check on model load.
GRAPH_FORMAT_VERSION = 1


@dataclass(frozen=True)
class FeaturizerSettings:
    """How structures become graphs.

    Example:
        >>> s = FeaturizerSettings(cutoff=6.0, max_neighbors=12)
        >>> s.check_compatible(FeaturizerSettings.from_dict(s.to_dict()))   # no error

    Attributes:
        cutoff: neighbour search radius in angstrom.
        max_neighbors: keep at most this many nearest neighbours per atom (exact distance ties
            broken by neighbour index, then image); ``None`` keeps every neighbour in the cutoff.
        n_basis: number of Gaussians in the distance expansion (centres evenly from 0 to cutoff).
        basis_width: Gaussian width in angstrom; ``None`` uses the centre spacing.
        element_features: ``"embedding"`` (a learned vector per element, indexed by atomic number).
        grow_cutoff: when an atom has no neighbour within ``cutoff``, grow the cutoff (x1.25 until
            it has one, the value used is recorded on the graph) instead of raising an error.
        min_distance: two atoms closer than this (angstrom) are an input error.
        version: graph format version.
    """

    cutoff: float = 6.0
    max_neighbors: int | None = 12
    n_basis: int = 40
    basis_width: float | None = None
    element_features: str = "embedding"
    grow_cutoff: bool = False
    min_distance: float = 0.5
    version: int = GRAPH_FORMAT_VERSION

    def __post_init__(self) -> None:
        if not self.cutoff > 0:
            raise InputError(f"cutoff {self.cutoff}: expected a positive distance in angstrom")
        if self.max_neighbors is not None and self.max_neighbors < 1:
            raise InputError(f"max_neighbors {self.max_neighbors}: expected >= 1 or None")
        if self.n_basis < 1:
            raise InputError(f"n_basis {self.n_basis}: expected >= 1")
        if self.element_features not in ("embedding",):
            raise InputError(f"element_features {self.element_features!r}: expected 'embedding'")

    @property
    def width(self) -> float:
        """Gaussian width actually used (angstrom)."""
        if self.basis_width is not None:
            return self.basis_width
        return self.cutoff / max(self.n_basis - 1, 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeaturizerSettings:
        return settings_from_dict(cls, d, "featurizer settings", error=CheckpointError)

    def key(self) -> str:
        """Short stable hash of the settings (part of the graph cache key)."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def check_compatible(self, other: FeaturizerSettings, what: str = "model") -> None:
        """Raise :class:`CheckpointError` naming the first setting that differs."""
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if a != b:
                raise CheckpointError(
                    f"featurizer setting {f.name!r} differs: the {what} was trained with {a!r}, "
                    f"these graphs use {b!r}"
                )
