"""Physics-parametric laws on the functional core: JMAK kinetics (one isotherm, and isotherms
coupled by Arrhenius), the plain Arrhenius law, and the Birch-Murnaghan equation of state.

Each law is a :class:`ParametricModel`: named parameters in a transformed (unconstrained) space,
physical values with units (``k_per_s``, ``n``, ``Q_kJ_per_mol``, ``B0_GPa``), an optional
Gaussian :class:`Prior`, and a pure ``forward(params, inputs)``. Fit them with
:func:`matmeta.fitting.fit_curves` / :func:`matmeta.fitting.fit_jmak`.
"""

from matmeta.models.parametric._arrhenius import Arrhenius
from matmeta.models.parametric._base import TRANSFORMS, ParametricModel, ParamSpec, Prior
from matmeta.models.parametric._eos import EV_PER_A3_IN_GPA, BirchMurnaghan
from matmeta.models.parametric._jmak import JMAK, ArrheniusJMAK, jmak_curve
from matmeta.models.parametric._units import (
    R_J_PER_MOL_K,
    TIME_UNITS,
    K_to_k_per_s,
    k_per_s_to_K,
    seconds_per,
    t_half_from_k,
    time_from_seconds,
    time_to_seconds,
)

__all__ = [
    "Arrhenius",
    "ArrheniusJMAK",
    "BirchMurnaghan",
    "EV_PER_A3_IN_GPA",
    "JMAK",
    "jmak_curve",
    "k_per_s_to_K",
    "K_to_k_per_s",
    "ParametricModel",
    "ParamSpec",
    "Prior",
    "R_J_PER_MOL_K",
    "seconds_per",
    "t_half_from_k",
    "time_from_seconds",
    "time_to_seconds",
    "TIME_UNITS",
    "TRANSFORMS",
]
