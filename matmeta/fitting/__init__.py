"""Batched least squares for parametric laws: Levenberg-Marquardt over thousands of curves in
one call, several starts per curve, MAP with a Gaussian prior, standard errors from the
Jacobian, and flags for poorly determined fits.

Tensors go in and come out; on the CPU the loop itself runs on numpy views of them (far less
overhead per operation), elsewhere on torch, batch-last in both (see ``_lm.py``). A law can
speed up its fits with the hooks of :class:`~matmeta.models.parametric.ParametricModel`: a
fused Gram matrix (``fit_targets`` with ``fit_gram``), jumps along flat valleys
(``fit_valley_direction`` / ``fit_valley_jump``) and merging of starts that meet
(``fit_merge_tol``); JMAK has all three."""

from matmeta.fitting._fit import DEFAULT_NOISE_STD, FitResult, fit_curves, fit_jmak, pad_curves
from matmeta.fitting._lm import LMResult, levenberg_marquardt, normal_equations, solve_spd

__all__ = [
    "DEFAULT_NOISE_STD",
    "fit_curves",
    "fit_jmak",
    "FitResult",
    "levenberg_marquardt",
    "LMResult",
    "normal_equations",
    "pad_curves",
    "solve_spd",
]
