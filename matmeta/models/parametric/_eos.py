"""The third-order Birch-Murnaghan equation of state E(V).

``E(V) = E0 + 9 V0 B0 / 16 * [ (eta^2 - 1)^3 B0' + (eta^2 - 1)^2 (6 - 4 eta^2) ]`` with
``eta = (V0 / V)^(1/3)``, energies in eV, volumes in A^3 (per cell), B0 in GPa outside and
eV/A^3 inside (1 eV/A^3 = 160.21766 GPa). Parameters: ``E0_eV``, ``ln_V0_A3``, ``ln_B0_GPa``,
``B0_prime``.

Example:
    >>> model = BirchMurnaghan()
    >>> params = model.from_physical(E0_eV=-3.0, V0_A3=16.0, B0_GPa=180.0, B0_prime=4.5)
    >>> float(model.forward(params, torch.tensor([16.0], dtype=torch.float64))[0])
    -3.0
"""

from __future__ import annotations

import torch
from torch import Tensor

from matmeta.models._protocol import Params
from matmeta.models.parametric._base import ParametricModel, ParamSpec, Prior

__all__ = ["BirchMurnaghan", "EV_PER_A3_IN_GPA"]

# 1 eV/A^3 in GPa (e = 1.602176634e-19 C, 1 A^3 = 1e-30 m^3).
EV_PER_A3_IN_GPA = 160.21766208


class BirchMurnaghan(ParametricModel):
    """Third-order Birch-Murnaghan E(V): E0 (eV), V0 (A^3), B0 (GPa), B0' (dimensionless).

    Example:
        >>> BirchMurnaghan().param_names
        ['E0_eV', 'ln_V0_A3', 'ln_B0_GPa', 'B0_prime']

    Shapes:
        inputs: (n,) volumes in A^3; output: (n,) energies in eV.
    """

    name = "birch_murnaghan"

    def __init__(self, prior: Prior | dict | None = None) -> None:
        super().__init__(prior)

    def param_specs(self) -> list[ParamSpec]:
        return [ParamSpec("E0_eV", "E0_eV", "eV", "none", 0.0),
                ParamSpec("ln_V0_A3", "V0_A3", "A^3", "log", 20.0),
                ParamSpec("ln_B0_GPa", "B0_GPa", "GPa", "log", 100.0),
                ParamSpec("B0_prime", "B0_prime", "", "none", 4.0)]

    def forward(self, params: Params, inputs: Tensor) -> Tensor:
        """Energies (eV) at volumes ``inputs`` (A^3)."""
        v0 = torch.exp(params["ln_V0_A3"])
        b0 = torch.exp(params["ln_B0_GPa"]) / EV_PER_A3_IN_GPA
        x = (v0 / inputs) ** (2.0 / 3.0) - 1.0
        return params["E0_eV"] + 9.0 * v0 * b0 / 16.0 * (
            x**3 * params["B0_prime"] + x**2 * (6.0 - 4.0 * (x + 1.0)))

    def initial_guesses(self, inputs: Tensor, y: Tensor, weight: Tensor | None = None) -> Tensor:
        """A parabola through E(V) per curve gives V0, B0 = V0 E''(V0) and E0; B0' starts at 4."""
        w = torch.ones_like(y) if weight is None else weight
        out = []
        for b in range(y.shape[0]):
            live = w[b] > 0
            v, e = inputs[b, live], y[b, live]
            a = torch.stack([v**2, v, torch.ones_like(v)], dim=-1)
            c = torch.linalg.lstsq(a, e[:, None]).solution[:, 0]
            v0 = -c[1] / (2 * c[0]) if c[0] > 0 else v[torch.argmin(e)]
            v0 = v0.clamp(v.min() * 0.8, v.max() * 1.2)
            b0 = (2 * c[0] * v0 * EV_PER_A3_IN_GPA).clamp_min(1.0)
            e0 = c[0] * v0**2 + c[1] * v0 + c[2]
            out.append(torch.stack([
                torch.stack([e0, torch.log(v0), torch.log(b0), y.new_tensor(4.0)]),
            ]))
        return torch.stack(out)
