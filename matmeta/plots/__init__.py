"""Every figure matmeta draws, with matplotlib's ``Figure`` API (no pyplot state, no display).

One private module per topic, re-exported here; :func:`save_figure` writes any of them
atomically in the format the file name asks for.

Example:
    >>> from matmeta.plots import plot_jmak_fits, save_figure
    >>> save_figure(plot_jmak_fits(curves, result), "fits.png")
"""

from matmeta.plots._common import save_figure
from matmeta.plots._evaluate import plot_coverage, plot_learning_curves
from matmeta.plots._influence import plot_influence_bars, plot_influence_curve
from matmeta.plots._kinetics import (
    KineticsCurve,
    plot_arrhenius,
    plot_avrami,
    plot_jmak_fits,
    plot_prior_posterior,
    plot_suggestion,
)
from matmeta.plots._meta import plot_meta_history
from matmeta.plots._suggest import plot_suggestion_curves, plot_suggestions
from matmeta.plots._training import loss_curves_plot, parity_plot
from matmeta.plots._workflows import plot_adaptation, plot_candidates, plot_support_parity

__all__ = [
    "plot_suggestion_curves",
    "plot_suggestions",
    "plot_coverage",
    "plot_adaptation",
    "plot_candidates",
    "plot_support_parity",
    "KineticsCurve",
    "loss_curves_plot",
    "parity_plot",
    "plot_arrhenius",
    "plot_avrami",
    "plot_influence_bars",
    "plot_influence_curve",
    "plot_jmak_fits",
    "plot_learning_curves",
    "plot_meta_history",
    "plot_prior_posterior",
    "plot_suggestion",
    "save_figure",
]
