"""The functional core: weighted loss and the one inner loop, against hand-derived answers."""

import torch

from matmeta.meta import inner_loop
from matmeta.models import Samples, weighted_mse


class Line:
    name = "line"

    def init_params(self, generator=None):
        zero = torch.tensor(0.0, dtype=torch.float64)
        return {"a": zero.clone(), "b": zero.clone()}

    def forward(self, params, x):
        return params["a"] * x + params["b"]

    def config(self):
        return {}


def test_weighted_mse_zero_weight_is_exact_deletion():
    pred = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    y = torch.tensor([0.0, 0.0, 5.0], dtype=torch.float64)
    w = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    expected = torch.tensor((1.0 + 4.0) / 2, dtype=torch.float64)
    assert torch.isclose(weighted_mse(pred, y, w), expected)


def test_inner_loop_matches_closed_form_gradient_descent():
    # loss = mean((a x + b - y)^2); gradient steps written out by hand in numpy-free form.
    x = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    y = torch.tensor([1.0, 3.0, 5.0], dtype=torch.float64)
    model = Line()
    p = model.init_params()
    out = inner_loop(model, p, Samples(x, y), steps=3, lr=0.1)
    a, b = 0.0, 0.0
    for _ in range(3):
        r = [a * xi + b - yi for xi, yi in zip(x.tolist(), y.tolist(), strict=True)]
        ga = 2 * sum(ri * xi for ri, xi in zip(r, x.tolist(), strict=True)) / 3
        gb = 2 * sum(r) / 3
        a, b = a - 0.1 * ga, b - 0.1 * gb
    assert abs(out["a"].item() - a) < 1e-12 and abs(out["b"].item() - b) < 1e-12


def test_inner_loop_trainable_subset_and_second_order_flow():
    x = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    y = torch.tensor([1.0, 3.0, 5.0], dtype=torch.float64)
    model = Line()
    p = {k: v.clone().requires_grad_() for k, v in model.init_params().items()}
    out = inner_loop(model, p, Samples(x, y), steps=2, lr=0.1, trainable=["b"])
    assert out["a"] is p["a"]
    g = torch.autograd.grad(out["b"], p["b"])[0]
    # b_{t+1} = b_t - 0.1 * 2 * mean(b_t - y) (a=0) -> db2/db0 = (1 - 0.2)^2
    assert torch.isclose(g, torch.tensor(0.64, dtype=torch.float64))
