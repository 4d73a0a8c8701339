"""Workflows that chain the stages the way a scientist works: the demo tour (adapt, predict with
uncertainty and suggest-next-measurement workflows are planned here)."""

from matmeta.workflows._demo import DEMO_STAGES, run_demo
from matmeta.workflows._kinetics import JMAKPriorFit, fit_jmak_with_prior, write_jmak_report

__all__ = [
    "DEMO_STAGES",
    "fit_jmak_with_prior",
    "JMAKPriorFit",
    "run_demo",
    "write_jmak_report",
]
