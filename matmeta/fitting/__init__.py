"""Batched least squares for parametric laws: Levenberg-Marquardt over thousands of curves in
one call, several starts per curve, MAP with a Gaussian prior, standard errors from the
Jacobian, and flags for poorly determined fits."""

from matmeta.fitting._fit import DEFAULT_NOISE_STD, FitResult, fit_curves, fit_jmak, pad_curves
from matmeta.fitting._lm import LMResult, levenberg_marquardt, solve_spd

__all__ = sorted(["DEFAULT_NOISE_STD", "FitResult", "LMResult", "fit_curves", "fit_jmak",
                  "levenberg_marquardt", "pad_curves", "solve_spd"])
