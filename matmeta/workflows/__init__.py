"""Workflows that chain the stages the way a scientist works: the demo tour, adapting a
meta-learned model to a new family's measurements, screening candidates with uncertainty, and
fitting JMAK kinetics from a few points under a meta-learned prior."""

from matmeta.workflows._adapt import AdaptedModel, adapt, load_adapted
from matmeta.workflows._demo import DEMO_STAGES, run_demo
from matmeta.workflows._kinetics import JMAKPriorFit, fit_jmak_with_prior, write_jmak_report
from matmeta.workflows._screen import (
    build_family_index,
    nearest_family,
    parse_goal,
    rank_for_goal,
    screen,
)

__all__ = [
    "adapt",
    "AdaptedModel",
    "build_family_index",
    "DEMO_STAGES",
    "fit_jmak_with_prior",
    "JMAKPriorFit",
    "load_adapted",
    "nearest_family",
    "parse_goal",
    "rank_for_goal",
    "run_demo",
    "screen",
    "write_jmak_report",
]
