"""Workflows that chain the stages the way a scientist works: the demo tour (adapt, predict with
uncertainty and suggest-next-measurement workflows are planned here)."""

from matmeta.workflows._demo import DEMO_STAGES, run_demo

__all__ = ["DEMO_STAGES", "run_demo"]
