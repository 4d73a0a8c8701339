"""Pool-based suggestions: the closed-form variance reduction against brute-force refits."""

from __future__ import annotations

import math

import pytest
import torch

from matmeta.bayes import fit_bayes_linear
from matmeta.errors import InputError
from matmeta.suggest import (
    bootstrap_head_predictions,
    greedy_batch,
    linear_readout,
    parse_goal,
    region_mask,
    suggest_from_posterior,
    variance_reduction,
)

F64 = torch.float64


def _aug(x):
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)


def _problem(k: int, d: int, n: int, m: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    phi = torch.randn(k, d, generator=gen, dtype=F64)
    w = torch.randn(d, generator=gen, dtype=F64)
    y = phi @ w + 0.3 + 0.2 * torch.randn(k, generator=gen, dtype=F64)
    cands = torch.randn(n, d, generator=gen, dtype=F64)
    targets = torch.randn(m, d, generator=gen, dtype=F64)
    prior = torch.randn(d + 1, generator=gen, dtype=F64) * 0.3
    post = fit_bayes_linear(phi, y, prior_mean=prior)
    return phi, y, cands, targets, post


def _refit(post, phi, y, extra_phi):
    """The head refitted from scratch with extra measurements, same hyperparameters."""
    phi2 = torch.cat([phi, extra_phi])
    # the value measured does not matter for the variance: use an arbitrary one
    y2 = torch.cat([y, torch.full((extra_phi.shape[0],), 0.7, dtype=F64)])
    return fit_bayes_linear(phi2, y2, alpha=post.alpha, beta=post.beta, bias=post.bias,
                            bias_var=post.bias_var, prior_mean=post.prior_mean)


def _total_var(post, targets):
    return float((post.predict(targets)[1] ** 2).sum())


@pytest.mark.parametrize("k,d", [(3, 6), (8, 2)], ids=["dual", "primal"])
def test_closed_form_reduction_equals_brute_force_refit(k, d):
    phi, y, cands, targets, post = _problem(k, d, n=7, m=5)
    closed = variance_reduction(post.weight_cov, _aug(cands), _aug(targets), post.noise_var)
    before = _total_var(post, targets)
    brute = torch.tensor([before - _total_var(_refit(post, phi, y, cands[i:i + 1]), targets)
                          for i in range(len(cands))], dtype=F64)
    torch.testing.assert_close(closed, brute, rtol=1e-8, atol=1e-10)
    assert (closed > 0).all()


def test_greedy_batch_equals_sequential_refits():
    phi, y, cands, targets, post = _problem(4, 5, n=9, m=6, seed=3)
    order, gains = greedy_batch(post.weight_cov, _aug(cands), _aug(targets), post.noise_var, 4)
    chosen: list[int] = []
    for step in range(4):
        base = _refit(post, phi, y, cands[chosen]) if chosen else post
        before = _total_var(base, targets)
        best, best_gain = None, -math.inf
        for i in range(len(cands)):
            if i in chosen:
                continue
            gain = before - _total_var(_refit(post, phi, y, cands[chosen + [i]]), targets)
            if gain > best_gain:
                best, best_gain = i, gain
        assert order[step] == best
        assert gains[step] == pytest.approx(best_gain, rel=1e-7)
        chosen.append(best)
    assert len(set(order)) == 4


def test_maxstd_batch_picks_the_largest_remaining_std_after_each_refit():
    phi, y, cands, targets, post = _problem(3, 4, n=6, m=2, seed=5)
    order, _ = greedy_batch(post.weight_cov, _aug(cands), None, post.noise_var, 3,
                            criterion="maxstd")
    chosen: list[int] = []
    for step in range(3):
        base = _refit(post, phi, y, cands[chosen]) if chosen else post
        std = base.predict(cands)[1].clone()
        std[chosen] = -1
        assert order[step] == int(std.argmax())
        chosen.append(order[step])


def test_region_mask_for_each_goal():
    v = torch.tensor([1.0, 5.0, 3.0, 4.0, 2.0], dtype=F64)
    assert region_mask(v, "max", "top:0.4").tolist() == [False, True, False, True, False]
    assert region_mask(v, "min", "top:0.4").tolist() == [True, False, False, False, True]
    assert region_mask(v, 3.2, "top:0.4").tolist() == [False, False, True, True, False]
    assert region_mask(v, "max", "all").all()
    assert region_mask(v, "max", "top:0.01").sum() == 1          # at least one
    assert parse_goal("1200") == 1200.0 and parse_goal(" MIN ") == "min"


def _two_groups():
    """Candidates 0-2 load on feature 0 (predicted high), 3-5 on feature 1 (predicted low)."""
    phi = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.2, 0.1]], dtype=F64)
    y = phi @ torch.tensor([2.0, -2.0], dtype=F64)
    post = fit_bayes_linear(phi, y, bias=False, alpha=1.0, beta=100.0)
    cands = torch.tensor([[3.0, 0.0], [3.2, 0.0], [2.8, 0.1],
                          [0.0, 3.0], [0.1, 3.1], [0.0, 2.9]], dtype=F64)
    return post, cands


@pytest.mark.parametrize("goal,group", [("max", {0, 1, 2}), ("min", {3, 4, 5}),
                                        ("6.0", {0, 1, 2}), ("-6", {3, 4, 5})])
def test_the_target_region_steers_the_choice(goal, group):
    post, cands = _two_groups()
    s = suggest_from_posterior(post, cands, goal=goal, region="top:0.5", batch=2)
    assert set(torch.nonzero(s.region).flatten().tolist()) == group
    assert set(s.chosen) <= group
    # the ranked table: batch first, predictions in units, ranks 1..n
    table = s.table(to_units=lambda t: 10 * t, target="y_MPa")
    assert table["rank"].tolist() == list(range(1, 7))
    assert table["in_batch"].tolist()[:2] == [True, True]
    assert set(table["candidate"][:2]) == set(s.chosen)
    mean = post.predict(cands)[0]
    by_id = table.set_index("candidate")
    shown = by_id.loc[range(6), "predicted_y_MPa"].to_numpy()
    torch.testing.assert_close(torch.tensor(shown, dtype=F64), 10 * mean)
    assert (by_id["std_y_MPa"] > 0).all()
    assert (by_id["lower90_y_MPa"] < by_id["predicted_y_MPa"]).all()


def test_every_strategy_ranks_every_candidate_once():
    phi, y, cands, targets, post = _problem(4, 3, n=8, m=3, seed=1)
    members = bootstrap_head_predictions(phi, y, cands, post, heads=16, seed=0)
    for strategy in ("variance", "maxstd", "disagreement", "random"):
        s = suggest_from_posterior(post, cands, strategy=strategy, batch=3,
                                   member_predictions=members, exclude=[5])
        assert sorted(s.order) == list(range(8))
        assert 5 not in s.chosen and len(s.chosen) == 3
    dis = suggest_from_posterior(post, cands, strategy="disagreement", batch=2,
                                 member_predictions=members)
    assert dis.chosen == torch.argsort(members.var(0), descending=True)[:2].tolist()
    r1 = suggest_from_posterior(post, cands, strategy="random", batch=3, seed=1)
    r2 = suggest_from_posterior(post, cands, strategy="random", batch=3, seed=1)
    assert r1.order == r2.order


def test_bootstrap_heads_refit_on_resamples():
    phi, y, cands, _, post = _problem(5, 3, n=4, m=1, seed=2)
    preds = bootstrap_head_predictions(phi, y, cands, post, heads=8, seed=0)
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 5, (5,), generator=gen)
    ref = fit_bayes_linear(phi[idx], y[idx], alpha=post.alpha, beta=post.beta,
                           bias_var=post.bias_var, prior_mean=post.prior_mean)
    torch.testing.assert_close(preds[0], ref.predict(cands)[0])
    assert preds.var(0).min() > 0


def test_members_average_the_score():
    phi, y, cands, targets, post = _problem(4, 3, n=6, m=4, seed=4)
    one = suggest_from_posterior(post, cands, batch=2)
    two = suggest_from_posterior([post, post], torch.stack([cands, cands]), batch=2)
    assert one.order == two.order
    torch.testing.assert_close(one.score, two.score)


def test_linear_readout_reproduces_the_models_output():
    from matmeta.models._composition import CompositionModel, encode_compositions

    model = CompositionModel(elements=["Co", "Cr", "Fe", "Ni"], hidden=8, depth=1)
    params = model.init_params(torch.Generator().manual_seed(0))
    x = encode_compositions(["CoCrFeNi", "CoCrNi", "Fe2Ni"], model)
    w = linear_readout(model, params, x)
    phi = model.features(params, x)
    torch.testing.assert_close((_aug(phi.double()) @ w.double()).float(),
                               model.forward(params, x))
    assert linear_readout(object(), params, x) is None


def test_bad_requests_are_one_line_errors():
    _, _, cands, _, post = _problem(3, 3, n=4, m=1)
    cases = [dict(strategy="entropy"), dict(goal="biggest"), dict(region="top:2"),
             dict(region="half"), dict(batch=5), dict(batch=0),
             dict(strategy="disagreement")]
    for kwargs in cases:
        with pytest.raises(InputError) as err:
            suggest_from_posterior(post, cands, **kwargs)
        assert "\n" not in str(err.value)
