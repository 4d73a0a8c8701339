"""Meta-gradients of every algorithm against answers computed independently of torch.func.

References: central finite differences (float64), the plain loss gradient, a hand-written inner
loop with torch.autograd (detached or not), the closed-form implicit gradient of a quadratic
inner problem, and Reptile's update rule written out.
"""

import math

import pytest
import torch

from matmeta.errors import InputError
from matmeta.meta import (
    ALGORITHMS,
    EpisodeSampler,
    Family,
    MetaSettings,
    MetaTrainSettings,
    Task,
    init_meta_params,
    meta_gradient,
    meta_train,
)
from matmeta.models import Samples
from matmeta.models._mlp import MLP
from tests.helpers import assert_tree_close

F64 = torch.float64


def _task(gen, n_s=4, n_q=6, in_dim=1):
    x = torch.randn(n_s + n_q, in_dim, generator=gen, dtype=F64)
    y = torch.sin(2 * x[:, 0]) + 0.3 * x.sum(1)
    return Task(Samples(x[:n_s], y[:n_s]), Samples(x[n_s:], y[n_s:]), "toy")


def _mse(model, params, s):
    return ((model.forward(params, s.inputs) - s.y) ** 2).mean()


def _reference_adapt(model, params, support, steps, lr, detach=False, rates=None):
    """Plain gradient descent with torch.autograd (no torch.func)."""
    fast = dict(params)
    for _ in range(steps):
        loss = _mse(model, fast, support)
        grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not detach)
        fast = {k: v - (rates[k] if rates else lr) * (g.detach() if detach else g)
                for (k, v), g in zip(fast.items(), grads, strict=True)}
    return fast


@pytest.fixture
def small():
    gen = torch.Generator().manual_seed(0)
    model = MLP(1, (5,), dtype="float64")
    return model, model.init_params(gen), _task(gen)


def test_maml_meta_gradient_matches_central_finite_differences(small):
    model, params, task = small
    s = MetaSettings("maml", inner_steps=3, inner_lr=0.1)
    grads, _ = meta_gradient(model, params, [task], s)

    def outer(p):
        with torch.enable_grad():
            p = {k: v.detach().requires_grad_() for k, v in p.items()}
            fast = _reference_adapt(model, p, task.support, 3, 0.1, detach=True)
        return _mse(model, {k: v.detach() for k, v in fast.items()}, task.query).item()

    h = 1e-6
    fd, ours = [], []
    for k, v in params.items():
        for i in range(v.numel()):
            plus = {kk: vv.clone() for kk, vv in params.items()}
            minus = {kk: vv.clone() for kk, vv in params.items()}
            plus[k].view(-1)[i] += h
            minus[k].view(-1)[i] -= h
            fd.append((outer(plus) - outer(minus)) / (2 * h))
            ours.append(grads[k].view(-1)[i].item())
    fd_t, ours_t = torch.tensor(fd, dtype=F64), torch.tensor(ours, dtype=F64)
    assert ((fd_t - ours_t).norm() / fd_t.norm()).item() < 1e-5


def test_zero_inner_steps_is_the_plain_loss_gradient(small):
    model, params, task = small
    grads, _ = meta_gradient(model, params, [task], MetaSettings("maml", inner_steps=0))
    p = {k: v.clone().requires_grad_() for k, v in params.items()}
    ref = torch.autograd.grad(_mse(model, p, task.query), list(p.values()))
    assert_tree_close(grads, dict(zip(p, ref, strict=True)), rtol=1e-12, atol=1e-14)


def test_second_order_maml_equals_autograd_through_the_inner_loop(small):
    model, params, task = small
    grads, _ = meta_gradient(model, params, [task], MetaSettings("maml", 3, 0.1))
    p = {k: v.clone().requires_grad_() for k, v in params.items()}
    fast = _reference_adapt(model, p, task.support, 3, 0.1)
    ref = torch.autograd.grad(_mse(model, fast, task.query), list(p.values()))
    assert_tree_close(grads, dict(zip(p, ref, strict=True)), rtol=1e-10, atol=1e-12)


def test_first_order_maml_equals_maml_with_detached_inner_gradients(small):
    model, params, task = small
    grads, _ = meta_gradient(model, params, [task], MetaSettings("fomaml", 3, 0.1))
    p = {k: v.clone().requires_grad_() for k, v in params.items()}
    fast = _reference_adapt(model, p, task.support, 3, 0.1, detach=True)
    ref = torch.autograd.grad(_mse(model, fast, task.query), list(p.values()))
    assert_tree_close(grads, dict(zip(p, ref, strict=True)), rtol=1e-10, atol=1e-12)
    # and it really differs from second order on this curved problem
    full, _ = meta_gradient(model, params, [task], MetaSettings("maml", 3, 0.1))
    assert max((full[k] - grads[k]).abs().max().item() for k in full) > 1e-4


def test_anil_adapts_only_the_head_and_matches_autograd(small):
    model, params, task = small
    heads = model.head_names()
    grads, _ = meta_gradient(model, params, [task], MetaSettings("anil", 2, 0.2))
    p = {k: v.clone().requires_grad_() for k, v in params.items()}
    fast = dict(p)
    for _ in range(2):
        g = torch.autograd.grad(_mse(model, fast, task.support), [fast[k] for k in heads],
                                create_graph=True)
        fast = {**fast, **{k: fast[k] - 0.2 * gk for k, gk in zip(heads, g, strict=True)}}
    ref = torch.autograd.grad(_mse(model, fast, task.query), list(p.values()))
    assert_tree_close(grads, dict(zip(p, ref, strict=True)), rtol=1e-10, atol=1e-12)


def test_reptile_step_moves_exactly_toward_the_adapted_weights():
    gen = torch.Generator().manual_seed(1)
    model = MLP(1, (6,), dtype="float64")
    fams = [Family(f"f{i}", torch.randn(12, 1, generator=gen, dtype=F64),
                   torch.randn(12, generator=gen, dtype=F64)) for i in range(3)]
    init = model.init_params(torch.Generator().manual_seed(5))
    eps = 0.3
    res = meta_train(model, fams, settings=MetaSettings("reptile", 4, 0.05),
                     train=MetaTrainSettings(steps=1, meta_batch=3, k_shot=4, q_query=2,
                                             outer_optimizer="sgd", outer_lr=eps),
                     init_params=init, progress=False)
    tasks = EpisodeSampler(fams, 4, 2, 3, seed=0).sample()  # same seed: the same episode
    adapted = []
    for t in tasks:
        p = {k: v.clone().requires_grad_() for k, v in init.items()}
        adapted.append(_reference_adapt(model, p, t.support, 4, 0.05, detach=True))
    expected = {k: init[k] + eps * torch.stack([a[k].detach() - init[k] for a in adapted]).mean(0)
                for k in init}
    assert_tree_close(res.params, expected, rtol=1e-12, atol=1e-14)


def test_metasgd_rates_stay_positive_and_get_gradients(small):
    model, params, task = small
    s = MetaSettings("metasgd", 2, 0.1)
    meta = init_meta_params(model, params, s)
    grads, _ = meta_gradient(model, meta, [task], s)
    rate_keys = [k for k in meta if k.startswith("inner_lr::")]
    assert len(rate_keys) == len(params)
    # the rate gradient equals autograd through the loop with rates exp(log_rate)
    logs = {k[len("inner_lr::"):]: meta[k].clone().requires_grad_() for k in rate_keys}
    rates = {k: torch.exp(v) for k, v in logs.items()}
    p = {k: v.clone().requires_grad_() for k, v in params.items()}
    fast = _reference_adapt(model, p, task.support, 2, None, rates=rates)
    ref = torch.autograd.grad(_mse(model, fast, task.query), list(logs.values()))
    for k, r in zip(logs, ref, strict=True):
        torch.testing.assert_close(grads["inner_lr::" + k], r, rtol=1e-10, atol=1e-12)
        assert r.abs().max() > 0
    # a huge outer step on the log rates still leaves every rate positive
    stepped = {k: meta[k] - 1e3 * grads[k] for k in rate_keys}
    assert all(bool((torch.exp(v) > 0).all()) for v in stepped.values())


def test_implicit_maml_matches_unrolled_and_closed_form_on_a_quadratic():
    gen = torch.Generator().manual_seed(3)
    model = MLP(3, (), dtype="float64")  # linear model: the inner problem is quadratic
    params = model.init_params(gen)
    x = torch.randn(10, 3, generator=gen, dtype=F64)
    y = torch.randn(10, generator=gen, dtype=F64)
    task = Task(Samples(x[:5], y[:5]), Samples(x[5:], y[5:]), "quad")
    lam = 2.0
    s = MetaSettings("imaml", inner_steps=400, inner_lr=0.05, proximal=lam, cg_steps=20)
    g_imp, _ = meta_gradient(model, params, [task], s)
    # unrolled second-order MAML through the same proximal inner problem, run to convergence
    p = {k: v.clone().requires_grad_() for k, v in params.items()}
    fast = dict(p)
    for _ in range(400):
        loss = _mse(model, fast, task.support) + 0.5 * lam * sum(
            ((fast[k] - p[k]) ** 2).sum() for k in p)
        g = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
        fast = {k: v - 0.05 * gk for (k, v), gk in zip(fast.items(), g, strict=True)}
    ref = torch.autograd.grad(_mse(model, fast, task.query), list(p.values()))
    unrolled = dict(zip(p, ref, strict=True))
    assert_tree_close(g_imp, unrolled, rtol=1e-7, atol=1e-9)
    # closed form: theta = [w, b], support loss = mean((A theta - y)^2), H = 2 A^T A / n
    a_s = torch.cat([x[:5], torch.ones(5, 1, dtype=F64)], 1)
    a_q = torch.cat([x[5:], torch.ones(5, 1, dtype=F64)], 1)
    h = 2 * a_s.T @ a_s / 5
    theta = torch.cat([params["layers.0.weight"].reshape(-1), params["layers.0.bias"]])
    phi = torch.linalg.solve(h + lam * torch.eye(4, dtype=F64),
                             lam * theta + 2 * a_s.T @ y[:5] / 5)
    g_q = 2 * a_q.T @ (a_q @ phi - y[5:]) / 5
    closed = torch.linalg.solve(torch.eye(4, dtype=F64) + h / lam, g_q)
    ours = torch.cat([g_imp["layers.0.weight"].reshape(-1), g_imp["layers.0.bias"]])
    torch.testing.assert_close(ours, closed, rtol=1e-7, atol=1e-9)


# the closed-form head algorithms need a model with features (tests/bayes/test_bayes_meta.py)
@pytest.mark.parametrize("algorithm", [a for a in ALGORITHMS if a not in ("bayes_linear", "gp")])
def test_vmap_and_loop_give_the_same_meta_gradient(algorithm):
    gen = torch.Generator().manual_seed(4)
    model = MLP(2, (8, 8), dtype="float64")
    params = model.init_params(gen)
    tasks = [_task(gen, in_dim=2) for _ in range(5)]
    s_v = MetaSettings(algorithm, 3, 0.05, batching="vmap", cg_steps=5)
    s_l = MetaSettings(algorithm, 3, 0.05, batching="loop", cg_steps=5)
    meta = init_meta_params(model, params, s_v)
    gv, lv = meta_gradient(model, meta, tasks, s_v)
    gl, ll = meta_gradient(model, meta, tasks, s_l)
    assert_tree_close(gv, gl, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(lv, ll, rtol=1e-12, atol=1e-14)


def test_meta_gradient_of_an_empty_meta_batch_is_an_input_error(small):
    model, params, _ = small
    with pytest.raises(InputError, match="empty meta-batch"):
        meta_gradient(model, params, [], MetaSettings())


def test_unknown_algorithm_is_one_clear_line():
    with pytest.raises(InputError, match=r"unknown algorithm 'mamll': expected one of") as e:
        MetaSettings("mamll")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("algorithm", ["bayes_linear", "gp"])
def test_head_algorithms_refuse_vmap_batching_instead_of_ignoring_it(algorithm):
    with pytest.raises(InputError, match=rf"batching 'vmap' with algorithm '{algorithm}'.*"
                                         r"use batching 'auto' or 'loop'") as e:
        MetaSettings(algorithm, batching="vmap")
    assert "\n" not in str(e.value)
    assert MetaSettings(algorithm, batching="loop").batching == "loop"


def test_sinusoid_meta_learning_beats_training_from_scratch_on_three_points():
    """Sinusoids a sin(x + b), a in [0.5, 2], b in [0, pi]: the structure MAML must learn."""
    gen = torch.Generator().manual_seed(0)

    def family(i, n=40):
        a = 0.5 + 1.5 * torch.rand((), generator=gen, dtype=F64)
        b = math.pi * torch.rand((), generator=gen, dtype=F64)
        x = 10 * torch.rand(n, 1, generator=gen, dtype=F64) - 5
        return Family(f"sin{i}", x, a * torch.sin(x[:, 0] + b))

    train = [family(i) for i in range(60)]
    test = [family(100 + i) for i in range(20)]
    model = MLP(1, (32, 32), dtype="float64")
    s = MetaSettings("maml", inner_steps=3, inner_lr=0.05)
    res = meta_train(model, train, settings=s,
                     train=MetaTrainSettings(steps=250, meta_batch=8, k_shot=3, q_query=10,
                                             outer_lr=3e-3),
                     progress=False)
    tasks = EpisodeSampler(test, 3, 30, 20, seed=9).sample()
    from matmeta.meta import query_losses

    meta_err = query_losses(model, res.meta_params, tasks, s, steps=5).mean()
    # training from scratch: random init, many plain steps on the same 3 points
    scratch = []
    for t in tasks:
        p0 = model.init_params(torch.Generator().manual_seed(1))
        fit = {k: v.clone().requires_grad_() for k, v in p0.items()}
        opt = torch.optim.Adam(list(fit.values()), lr=1e-2)
        for _ in range(100):
            opt.zero_grad()
            _mse(model, fit, t.support).backward()
            opt.step()
        scratch.append(_mse(model, {k: v.detach() for k, v in fit.items()}, t.query))
    scratch_err = torch.stack(scratch).mean()
    zero_shot = query_losses(model, res.meta_params, tasks, s, steps=0).mean()
    assert meta_err < 0.7 * scratch_err
    assert meta_err < zero_shot  # adaptation itself helps, not only the initialisation
