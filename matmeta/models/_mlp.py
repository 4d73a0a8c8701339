"""A multilayer perceptron on the functional core (registry name ``"mlp"``).

Feature vectors in, one scalar per sample out. Used for composition features (alloys) and as the
small reference model of the meta-learning tests and speed benchmarks.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from matmeta.errors import InputError
from matmeta.models._protocol import Params

__all__ = ["MLP"]

_ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "silu": torch.nn.functional.silu}


class MLP:
    """Fully connected network ``in_dim -> hidden... -> 1`` as a parameter dict + pure forward.

    Example:
        >>> model = MLP(in_dim=1, hidden=(40, 40))
        >>> params = model.init_params(torch.Generator().manual_seed(0))
        >>> y = model.forward(params, torch.zeros(5, 1))     # (5,)

    Args:
        in_dim: number of input features.
        hidden: widths of the hidden layers.
        activation: ``"tanh"``, ``"relu"`` or ``"silu"``.
        dtype: ``"float32"`` or ``"float64"`` for the initial parameters.

    Shapes:
        inputs: (n, in_dim), or (n,) when ``in_dim == 1``; output: (n,).
        With per-task parameters (a leading axis T on every tensor): inputs (T, n, in_dim),
        output (T, n).
    """

    name = "mlp"

    def __init__(self, in_dim: int = 1, hidden: tuple[int, ...] | list[int] = (40, 40),
                 activation: str = "tanh", dtype: str = "float32") -> None:
        if int(in_dim) < 1:
            raise InputError(f"MLP in_dim {in_dim}: expected a positive number of features")
        if activation not in _ACTIVATIONS:
            raise InputError(f"MLP activation {activation!r}: expected one of "
                             f"{', '.join(sorted(_ACTIVATIONS))}")
        if dtype not in ("float32", "float64"):
            raise InputError(f"MLP dtype {dtype!r}: expected 'float32' or 'float64'")
        self.in_dim = int(in_dim)
        self.hidden = tuple(int(h) for h in hidden)
        self.activation = activation
        self.dtype = dtype
        self._widths = (self.in_dim, *self.hidden, 1)

    def __repr__(self) -> str:
        return f"MLP(in_dim={self.in_dim}, hidden={self.hidden}, activation={self.activation!r})"

    def config(self) -> dict[str, Any]:
        return {"in_dim": self.in_dim, "hidden": list(self.hidden),
                "activation": self.activation, "dtype": self.dtype}

    def head_names(self) -> list[str]:
        """The last layer's parameter names (what ANIL adapts)."""
        last = len(self._widths) - 2
        return [f"layers.{last}.weight", f"layers.{last}.bias"]

    def init_params(self, generator: torch.Generator | None = None) -> Params:
        """Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) weights and biases (torch.nn.Linear's rule)."""
        dtype = getattr(torch, self.dtype)
        params: Params = {}
        pairs = zip(self._widths[:-1], self._widths[1:], strict=True)
        for i, (fan_in, fan_out) in enumerate(pairs):
            bound = 1.0 / math.sqrt(fan_in)
            w = torch.rand(fan_out, fan_in, generator=generator, dtype=dtype)
            b = torch.rand(fan_out, generator=generator, dtype=dtype)
            params[f"layers.{i}.weight"] = (2 * w - 1) * bound
            params[f"layers.{i}.bias"] = (2 * b - 1) * bound
        return params

    def forward(self, params: Params, inputs: Tensor) -> Tensor:
        if inputs.dim() == 1 or (self.in_dim == 1 and inputs.shape[-1] != 1):
            inputs = inputs.unsqueeze(-1)
        h = inputs
        act = _ACTIVATIONS[self.activation]
        n_layers = len(self._widths) - 1
        for i in range(n_layers):
            w, b = params[f"layers.{i}.weight"], params[f"layers.{i}.bias"]
            h = h @ w.transpose(-1, -2) + b.unsqueeze(-2)
            if i < n_layers - 1:
                h = act(h)
        return h.squeeze(-1)
