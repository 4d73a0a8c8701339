"""What to measure next: rank candidate compositions or structures (and, for JMAK kinetics, time
points and temperatures) by how much one more measurement would reduce the uncertainty that
matters to the user.

Names are imported lazily, so that building the command line (``matmeta --help``) does not
import torch.

Example:
    >>> from matmeta.suggest import load_suggest_model, read_pool_table, suggest_next
    >>> sm = load_suggest_model("meta.pt")
    >>> lab = read_pool_table(sm, "lab.csv", target="yield_strength_MPa", what="support")
    >>> s, ranked = suggest_next(sm, lab, read_pool_table(sm, "cands.csv"), "yield_strength_MPa",
    ...                          goal="max", region="top:0.2", batch=3)
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "add_kinetics_parser": "matmeta.suggest._kinetics",
    "bootstrap_head_predictions": "matmeta.suggest._pool",
    "condition_covariance": "matmeta.suggest._pool",
    "expected_target_variance": "matmeta.suggest._kinetics",
    "fit_feature_heads": "matmeta.suggest._pool",
    "greedy_batch": "matmeta.suggest._pool",
    "kinetics_target": "matmeta.suggest._kinetics",
    "KINETICS_TARGETS": "matmeta.suggest._kinetics",
    "linear_readout": "matmeta.suggest._pool",
    "load_suggest_model": "matmeta.suggest._pool",
    "member_features": "matmeta.suggest._pool",
    "model_inputs": "matmeta.suggest._pool",
    "parse_goal": "matmeta.suggest._pool",
    "parse_region": "matmeta.suggest._pool",
    "read_pool_table": "matmeta.suggest._pool",
    "region_mask": "matmeta.suggest._pool",
    "STRATEGIES": "matmeta.suggest._pool",
    "suggest_from_posterior": "matmeta.suggest._pool",
    "suggest_jmak_measurement": "matmeta.suggest._kinetics",
    "suggest_next": "matmeta.suggest._pool",
    "Suggestions": "matmeta.suggest._pool",
    "SuggestModel": "matmeta.suggest._pool",
    "variance_reduction": "matmeta.suggest._pool",
}

__all__ = sorted(_EXPORTS)  # noqa: PLE0605


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'matmeta.suggest' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
