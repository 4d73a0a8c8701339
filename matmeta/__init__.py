"""matmeta: meta-learning for materials.

Learn how to adapt from known chemical families (crystal-graph GNNs, physics-parametric laws),
then adapt to a new family from a handful of measurements and explain which measurements drove
the adaptation.

The public surface is the sorted ``__all__`` below; names are imported lazily so that
``import matmeta`` (and ``matmeta --help``) stays fast.

Example:
    >>> import matmeta
    >>> graph = matmeta.structure_to_graph(structure, cutoff=6.0, max_neighbors=12)
"""

from __future__ import annotations

import importlib
from typing import Any

from matmeta._version import __version__

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "CheckpointError": "matmeta.errors",
    "FeaturizerSettings": "matmeta.graphs",
    "FunctionalModel": "matmeta.models",
    "GraphBatch": "matmeta.graphs",
    "InputError": "matmeta.errors",
    "MatmetaError": "matmeta.errors",
    "Samples": "matmeta.models",
    "collate": "matmeta.graphs",
    "inner_loop": "matmeta.meta",
    "resolve_device": "matmeta.config",
    "sample_loss": "matmeta.models",
    "structure_to_graph": "matmeta.graphs",
    "weighted_mse": "matmeta.models",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'matmeta' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
