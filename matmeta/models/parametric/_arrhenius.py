"""The plain Arrhenius law for a rate constant: ``ln k(T) = ln k0 - Q / (R T)``.

The model predicts ``ln k`` (k in 1/s) from temperature in kelvin; fitting it by least squares
on ``ln k`` is the Arrhenius plot's straight line. Q is in kJ/mol and may be negative (apparent
activation energies of melt crystallisation are).

Example:
    >>> model = Arrhenius()
    >>> params = model.from_physical(k0_per_s=1e12, Q_kJ_per_mol=250.0)
    >>> model.forward(params, torch.tensor([1000.0], dtype=torch.float64))
    tensor([-2.4383], dtype=torch.float64)
"""

from __future__ import annotations

import torch
from torch import Tensor

from matmeta.models._protocol import Params
from matmeta.models.parametric._base import ParametricModel, ParamSpec, Prior
from matmeta.models.parametric._units import R_J_PER_MOL_K

__all__ = ["Arrhenius"]


class Arrhenius(ParametricModel):
    """``ln k(T) = ln k0 - Q / (R T)`` with k0 in 1/s and Q in kJ/mol.

    Example:
        >>> Arrhenius().param_names
        ['ln_k0', 'Q_kJ_per_mol']

    Shapes:
        inputs: (n,) temperatures in K; output: (n,) ln k with k in 1/s.
    """

    name = "arrhenius"

    def __init__(self, prior: Prior | dict | None = None) -> None:
        super().__init__(prior)

    def param_specs(self) -> list[ParamSpec]:
        return [ParamSpec("ln_k0", "k0_per_s", "1/s", "log", 1e10),
                ParamSpec("Q_kJ_per_mol", "Q_kJ_per_mol", "kJ/mol", "none", 200.0)]

    def forward(self, params: Params, inputs: Tensor) -> Tensor:
        """``ln k`` at temperatures ``inputs`` (kelvin)."""
        return params["ln_k0"] - params["Q_kJ_per_mol"] * (1e3 / R_J_PER_MOL_K) / inputs

    def value_and_jacobian(self, theta: Tensor, inputs: Tensor) -> tuple[Tensor, Tensor]:
        c = (1e3 / R_J_PER_MOL_K) / inputs
        val = theta[:, 0:1] - theta[:, 1:2] * c
        return val, torch.stack([torch.ones_like(c), -c], dim=-1)

    def initial_guesses(self, inputs: Tensor, y: Tensor, weight: Tensor | None = None) -> Tensor:
        """The law is linear in (ln k0, Q): one start, the weighted straight line itself."""
        w = torch.ones_like(y) if weight is None else weight
        x = (1e3 / R_J_PER_MOL_K) / torch.where(w > 0, inputs, torch.ones_like(inputs))
        sw = w.sum(-1).clamp_min(1e-300)
        mx, my = (w * x).sum(-1) / sw, (w * y).sum(-1) / sw
        sxx = (w * (x - mx[:, None]) ** 2).sum(-1).clamp_min(1e-300)
        slope = (w * (x - mx[:, None]) * (y - my[:, None])).sum(-1) / sxx
        return torch.stack([my - slope * mx, -slope], dim=-1)[:, None, :]
