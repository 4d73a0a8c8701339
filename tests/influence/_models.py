"""Small models with known answers for the influence tests."""

from __future__ import annotations

import torch

from matmeta.models import Samples

F64 = torch.float64


class Linear:
    """y = x @ w + b: a quadratic loss, so LOO and its first-order form are closed-form."""

    name = "linear_test"

    def __init__(self, dim: int = 2) -> None:
        self.dim = dim

    def init_params(self, generator=None):
        return {"w": torch.zeros(self.dim, dtype=F64), "b": torch.tensor(0.0, dtype=F64)}

    def forward(self, params, x):
        return x @ params["w"] + params["b"]

    def config(self):
        return {"dim": self.dim}


def linear_data(k: int = 12, dim: int = 2, seed: int = 0, noise: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(k, dim, generator=g, dtype=F64)
    true_w = torch.arange(1, dim + 1, dtype=F64)
    y = x @ true_w + 0.5 + noise * torch.randn(k, generator=g, dtype=F64)
    xq = torch.randn(8, dim, generator=g, dtype=F64)
    yq = xq @ true_w + 0.5
    return Samples(x, y), Samples(xq, yq)
