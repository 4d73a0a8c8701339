"""The batched fitter's fast path: fused Gram matrices, the numpy loop on the CPU, valley jumps
and curve ordering, against finite differences, the torch loop, the generic path and scipy."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.optimize import curve_fit

import matmeta.fitting._lm as lm
from matmeta.errors import InputError
from matmeta.fitting import fit_curves, fit_jmak, levenberg_marquardt
from matmeta.fitting._fit import pad_curves
from matmeta.models.parametric import JMAK, ArrheniusJMAK, Prior
from tests.helpers import shared_dataset

F64 = torch.float64
LN_LN2 = math.log(math.log(2.0))


def jmak_np(t, ln_k, ln_n):
    """An independent numpy JMAK in (ln k, ln n), overflow-safe, for scipy."""
    n = np.exp(ln_n)
    z = np.minimum(n * (ln_k + np.log(np.where(t > 0, t, 1.0))), 30.0)
    return np.where(t > 0, -np.expm1(-np.exp(z)), 0.0)


def noisy_curves(n_curves, seed, noise=0.02, n_min=5, n_max=20):
    """Noisy JMAK curves of 5-20 points around their half times (the benchmark's kind)."""
    rng = np.random.default_rng(seed)
    times, fracs = [], []
    for _ in range(n_curves):
        ln_k, n = rng.uniform(math.log(1e-6), math.log(1e-2)), rng.uniform(0.7, 4.0)
        t_half = math.exp(LN_LN2 / n - ln_k)
        t = np.sort(t_half * np.exp(rng.uniform(-2.0, 2.0, int(rng.integers(n_min, n_max + 1)))))
        times.append(t)
        fracs.append(jmak_np(t, ln_k, math.log(n)) + rng.normal(0.0, noise, len(t)))
    return times, fracs


def scipy_rmse(t, f):
    """curve_fit from the textbook Avrami-plot guess (the benchmark's baseline)."""
    sel = (f > 0.02) & (f < 0.98)
    p0 = [LN_LN2 / 2.0 - math.log(float(np.median(t))), math.log(2.0)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if sel.sum() >= 2:
            slope, icpt = np.polyfit(np.log(t[sel]), np.log(-np.log1p(-f[sel])), 1)
            if slope > 0.05:
                n0 = float(np.clip(slope, 0.2, 12))
                p0 = [icpt / n0, math.log(n0)]
        p, _ = curve_fit(jmak_np, t, f, p0=p0, maxfev=5000)
    return float(np.sqrt(np.mean((jmak_np(t, *p) - f) ** 2)))


class NoValleyJMAK(JMAK):
    """JMAK without valley jumps: the plain Levenberg-Marquardt path, for comparison."""

    def fit_valley_direction(self, theta, step):
        return None


def batch_last(*arrays):
    return tuple(np.ascontiguousarray(np.moveaxis(np.asarray(a), 0, -1)) for a in arrays)


@pytest.mark.parametrize("fit_fmax", [False, True])
def test_fused_gram_matches_finite_differences(fit_fmax):
    """[J | r]^T [J | r] from central differences of the model's own forward."""
    rng = np.random.default_rng(0)
    model = JMAK(fit_fmax=fit_fmax)
    t = np.sort(rng.uniform(1.0, 5000.0, (6, 9)), axis=1)
    t[:, 0] = 0.0  # a point at t = 0 (f = 0, no derivative)
    y = rng.uniform(0.0, 1.0, (6, 9))
    w = rng.uniform(0.5, 2.0, (6, 9))
    w[:, -2:] = 0.0  # padding
    theta = np.stack([rng.uniform(-8.0, -5.0, 6), rng.uniform(-0.5, 1.5, 6)], 1)
    if fit_fmax:
        theta = np.concatenate([theta, rng.uniform(-1.0, 2.0, (6, 1))], 1)
    tt = torch.as_tensor(t)

    def resid(th):
        f = model.forward(model.unflatten(torch.as_tensor(th)[:, None]), tt).numpy()
        return np.sqrt(w) * (f - y)

    p = theta.shape[1]
    h = 1e-6
    jac = np.stack([(resid(theta + h * np.eye(p)[i]) - resid(theta - h * np.eye(p)[i])) / (2 * h)
                    for i in range(p)], 1)  # (B, P, N)
    v = np.concatenate([jac, resid(theta)[:, None]], 1)
    ref = np.einsum("bin,bjn->bij", v, v)
    lt = model.fit_inputs(tt).numpy()
    targets = model.fit_targets(torch.as_tensor(y), torch.as_tensor(np.sqrt(w))).numpy()
    for xp_args in (batch_last(lt, targets, np.sqrt(w)),
                    tuple(torch.as_tensor(a) for a in batch_last(lt, targets, np.sqrt(w)))):
        th = theta.T.copy() if isinstance(xp_args[0], np.ndarray) else torch.as_tensor(theta.T)
        g = np.asarray(model.fit_gram(th, *xp_args)).reshape(p + 1, p + 1, -1)
        np.testing.assert_allclose(np.moveaxis(g, -1, 0), ref, rtol=1e-6, atol=1e-12)


def test_numpy_and_torch_loops_give_the_same_fits(monkeypatch):
    """The CPU loop runs on numpy; every other device runs the same loop on torch."""
    times, fracs = noisy_curves(60, seed=1)
    temps = [1400.0, 1450.0, 1500.0]
    x = [np.stack([np.geomspace(50, 5000, 6), np.full(6, tk)], -1) for tk in temps]
    arr = ArrheniusJMAK()
    y_arr = [arr.forward(arr.from_physical(k0_per_s=1e9, Q_kJ_per_mol=300.0, n=2.0),
                         torch.as_tensor(np.concatenate(x))).numpy()
             + 0.01 * np.random.default_rng(2).normal(size=18)]
    prior = Prior.from_std("jmak", ["ln_k", "ln_n"], [-7.0, 0.7], [2.0, 0.5], noise_std=0.05)
    runs = {}
    for loop in ("numpy", "torch"):
        monkeypatch.setattr(lm, "CPU_LOOP", loop)
        runs[loop] = [fit_curves(JMAK(), times, fracs),
                      fit_curves(JMAK(), times, fracs, multistart="adaptive"),
                      fit_curves(JMAK(fit_fmax=True), times[:20], fracs[:20]),
                      fit_curves(JMAK(), [t[:3] for t in times[:10]],
                                 [f[:3] for f in fracs[:10]], prior=prior),
                      fit_curves(arr, [np.concatenate(x)], y_arr)]
    for a, b in zip(runs["numpy"], runs["torch"], strict=True):
        torch.testing.assert_close(a.theta, b.theta, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(a.cost, b.cost, rtol=1e-9, atol=1e-14)
        assert torch.equal(a.converged, b.converged)
        assert a.iterations == b.iterations


def best_of_starts(cost, converged, merged=None):
    """Each curve's best start (B, S) -> (B,), the fitter's documented rule written out per
    curve: the lowest cost among converged starts, else among unmerged ones, else among all;
    costs within 1e-12 of the lowest go to the earliest start."""
    out = []
    for i in range(cost.shape[0]):
        c, ok = cost[i].tolist(), converged[i].tolist()
        m = [False] * len(c) if merged is None else merged[i].tolist()
        for pool in ([j for j in range(len(c)) if ok[j]], [j for j in range(len(c)) if not m[j]],
                     list(range(len(c)))):
            if pool:
                low = min(c[j] for j in pool)
                out.append(next(j for j in pool if c[j] <= low * (1 + 1e-12)))
                break
    return torch.tensor(out)


def test_fast_path_equals_the_generic_path_without_jumps(monkeypatch):
    """The fused Gram matrix and packed loop reproduce the generic normal-equation path (with
    every start run to its end: merging of starts that meet switched off)."""
    monkeypatch.setattr(lm, "MERGE_FIRST_ITER", 10**9)
    monkeypatch.setattr(lm, "MERGE_EVERY", 10**9)
    times, fracs = noisy_curves(80, seed=3)
    model = JMAK()
    res = fit_curves(NoValleyJMAK(), times, fracs)
    # the generic path: the public loop on the model's unfused normal equations, every start
    from matmeta.fitting._lm import normal_equations

    x, y, w, _ = pad_curves(times, fracs)
    lt, sw = model.fit_inputs(x), w.sqrt()
    starts = model.initial_guesses(x, y, w)

    def fn(theta, lt_, y_, sw_):
        f, jt = model.fit_value_and_jacobian(theta, lt_)
        return normal_equations(sw_ * (f - y_), sw_.unsqueeze(1) * jt)

    ref = levenberg_marquardt(fn, starts.reshape(-1, 2),
                              tuple(t.repeat_interleave(3, 0) for t in (lt, y, sw)))
    cost = ref.cost.reshape(-1, 3)
    best = best_of_starts(cost, ref.converged.reshape(-1, 3))
    theta = ref.theta.reshape(-1, 3, 2)[torch.arange(len(times)), best]
    torch.testing.assert_close(res.theta, theta, rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(res.cost, cost[torch.arange(len(times)), best], rtol=1e-9,
                               atol=1e-15)


def test_starts_that_meet_are_merged_without_changing_the_fits(monkeypatch):
    """Two starts of one curve that meet end in the same minimum: the higher-cost one stops
    early (unconverged, never the one kept). Against running every start to its end: the same
    minimum to the loop's own tolerances (cost within 10 ftol = 1.5e-7 relative on
    well-determined curves, within the stall tolerance 1e-4 on poorly determined ones;
    parameters far inside their standard errors), with fewer evaluations."""
    times, fracs = noisy_curves(300, seed=11)
    calls = {"rows": 0}
    gram = JMAK.fit_gram

    def counting(self, theta, *args):
        calls["rows"] += theta.shape[-1]
        return gram(self, theta, *args)

    monkeypatch.setattr(JMAK, "fit_gram", counting)
    merged = fit_curves(JMAK(), times, fracs)
    rows_merged, calls["rows"] = calls["rows"], 0
    monkeypatch.setattr(lm, "MERGE_FIRST_ITER", 10**9)
    monkeypatch.setattr(lm, "MERGE_EVERY", 10**9)
    full = fit_curves(JMAK(), times, fracs)
    assert rows_merged < 0.9 * calls["rows"]
    assert bool(merged.converged.all()) and bool(full.converged.all())
    rel = (merged.cost - full.cost) / full.cost
    well = ~merged.poorly_determined
    assert float(rel[well].abs().max()) < 1.5e-7
    assert float(rel.abs().max()) < 1e-4
    # parameters agree far inside their standard errors (where those are finite)
    se = merged.stderr
    close = (merged.theta - full.theta).abs() < 1e-2 * se
    assert bool((close | ~torch.isfinite(se)).all())

    # the loop itself: two identical starts and a third far away, one curve
    monkeypatch.undo()
    model = JMAK()
    t, f = times[0], fracs[0]
    x, y, w, _ = pad_curves([t], [f])
    lt = model.fit_inputs(x).numpy()
    sw = np.sqrt(w.numpy())
    targets = model.fit_targets(torch.as_tensor(y), torch.as_tensor(sw)).numpy()
    th0 = model.initial_guesses(x, y, w)[0, [0, 0, 2]].numpy()
    data = batch_last(np.repeat(lt, 3, 0), np.repeat(targets, 3, 0), np.repeat(sw, 3, 0))

    def gram_fn(theta, *d):
        return model.fit_gram(theta, d[0], d[1], d[2])

    res = lm._lm_loop(gram_fn, np.ascontiguousarray(th0.T), data, xp=np,
                      groups=np.zeros(3, dtype=np.int64))
    alone = lm._lm_loop(gram_fn, np.ascontiguousarray(th0[:1].T), tuple(a[..., :1] for a in data),
                        xp=np)
    assert res.merged.tolist()[:2] == [False, True]  # a tie: the earlier start goes on
    assert not bool(res.converged[1])
    torch.testing.assert_close(res.theta[0], alone.theta[0], rtol=0, atol=0)


def quadratic_gram(theta):
    """Gram matrix of [J | r] for r = theta (J = I, cost |theta|^2), batch-last, flattened."""
    one, zero = np.ones(theta.shape[1]), np.zeros(theta.shape[1])
    t0, t1 = theta
    return np.stack([one, zero, t0, zero, one, t1, t0, t1, t0 * t0 + t1 * t1])


def test_merging_always_keeps_the_cheapest_start_of_a_curve():
    """Three starts pairwise within the merge distance, costs 0.6e-9 apart: whatever pairs are
    compared, the cheapest one runs on and converges; the other two are merged."""
    r = 0.005 * np.sqrt([1.0, 1 - 0.6e-9, 1 - 1.2e-9])
    a = np.array([0.0, 0.05, 0.1])
    th0 = np.stack([r * np.cos(a), r * np.sin(a)])
    res = lm._lm_loop(quadratic_gram, th0, (), xp=np, lam0=10.0, groups=np.zeros(3, np.int64))
    assert res.merged.tolist() == [True, True, False]
    assert res.converged.tolist() == [False, False, True]
    assert float(res.cost[2]) < 1e-20


def test_a_start_that_failed_never_stops_its_sibling():
    """A non-finite start stays in the working set for a while; it must not count as a cheaper
    sibling (NaN comparisons are False)."""
    def gram(theta):  # cost (theta0 + 1)^2 + theta1^2, NaN where theta0 > 0
        g = quadratic_gram(np.stack([theta[0] + 1.0, theta[1]]))
        g[:, theta[0] > 0] = np.nan
        return g

    th0 = np.array([[-0.002, 0.002, -0.5, -0.3], [0.0, 0.0, 0.0, 0.0]])
    res = lm._lm_loop(gram, th0, (), xp=np, lam0=1e3, groups=np.array([0, 0, 1, 2]))
    assert res.merged.tolist() == [False] * 4
    assert res.converged.tolist() == [True, False, True, True]
    np.testing.assert_allclose(res.theta[0].numpy(), [-1.0, 0.0], atol=1e-9)


@pytest.mark.parametrize("max_iter", [3, 5])
def test_the_kept_start_is_never_a_merged_one_at_the_iteration_cap(monkeypatch, max_iter):
    """With an iteration cap that stops curves before any start converges, each curve keeps its
    cheapest start that was not merged into another (merged ones stopped early)."""
    import matmeta.fitting._fit as fit_module

    seen = []
    loop = fit_module._lm_loop

    def spy(*args, **kwargs):
        res = loop(*args, **kwargs)
        seen.append((np.array(kwargs["groups"]), res))
        return res

    monkeypatch.setattr(fit_module, "_lm_loop", spy)
    times, fracs = noisy_curves(300, seed=11)
    res = fit_curves(JMAK(), times, fracs, max_iter=max_iter)
    groups, raw = seen[0]
    # the loop's rows are curves' starts in some order; gather them back per curve
    idx = np.argsort(groups, kind="stable")
    per = {k: getattr(raw, k)[torch.as_tensor(idx)].reshape(len(times), 3)
           for k in ("cost", "converged", "merged")}
    assert bool(per["merged"].any()) and not bool(per["converged"].all())
    expected = best_of_starts(per["cost"], per["converged"], per["merged"])
    assert torch.equal(res.start_index, expected)
    kept_merged = per["merged"][torch.arange(len(times)), res.start_index]
    assert not bool((kept_merged & ~per["merged"].all(-1)).any())


def test_nan_at_a_point_without_weight_is_ignored():
    """A caller's NaN at a weight-0 point (its own padding) carries no weight and changes
    nothing: the fit equals the fit without that point."""
    t = np.array([30.0, 60.0, 120.0, 240.0, 480.0, 960.0])
    f = jmak_np(t, math.log(1 / 200.0), math.log(2.0)) + np.array(
        [0.01, -0.02, 0.015, -0.01, 0.02, -0.005])
    w = np.ones(6)
    w[3] = 0.0
    f_nan, t_nan = f.copy(), t.copy()
    f_nan[3], t_nan[3] = np.nan, np.nan
    a = fit_curves(JMAK(), [t_nan], [f_nan], weight=[w])
    b = fit_curves(JMAK(), [np.delete(t, 3)], [np.delete(f, 3)])
    assert bool(a.converged.all())
    torch.testing.assert_close(a.theta, b.theta, rtol=1e-9, atol=1e-12)
    with pytest.raises(InputError, match="point 3: targets must be finite"):
        fit_curves(JMAK(), [t], [f_nan])


def test_curve_order_and_chunking_do_not_change_the_fits():
    """Curves are sorted by length and evaluated in pieces inside the loop; the results come
    back in the caller's order, the same whatever that order was."""
    times, fracs = noisy_curves(600, seed=4)
    perm = np.random.default_rng(5).permutation(600)
    a = fit_curves(JMAK(), times, fracs)
    b = fit_curves(JMAK(), [times[i] for i in perm], [fracs[i] for i in perm])
    torch.testing.assert_close(b.theta, a.theta[perm], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(b.cov, a.cov[perm], rtol=1e-8, atol=1e-14, equal_nan=True)


def step_like_curves():
    """Curves whose best JMAK fit runs off along a flat valley: a step through one transition
    point (noise pushes the points beside it outward), and plateau points only (n -> 0)."""
    return [
        (np.array([0.218, 0.294, 3.643, 4.672, 6.533]) * 33.0,
         np.array([-0.0043, 0.0567, 0.9998, 1.0009, 0.9927])),
        (np.array([0.153, 1.52, 2.464, 2.827, 2.879]) * 110.0,
         np.array([-0.019, 0.9228, 1.0161, 1.0092, 1.0069])),
        (np.array([0.165, 0.209, 0.219, 0.352, 1.321, 1.902, 2.647, 3.286, 5.359]) * 3e4,
         np.array([-0.0168, 0.0144, 0.0253, -0.0038, 0.849, 1.0003, 0.979, 1.003, 0.9948])),
        (np.array([0.182, 0.183, 0.371, 2.282, 3.56, 5.0]) * 1100.0,
         np.array([-0.0175, 0.0017, 0.047, 0.9947, 0.9942, 1.0124])),
        (np.array([1.757, 1.93, 1.944, 2.538, 2.625, 4.235, 5.824]) * 1e4,
         np.array([0.9849, 0.9832, 1.0154, 1.0151, 0.9891, 1.0077, 0.9781])),
    ]


def test_valley_jumps_end_creeping_fits_sooner_and_never_worse():
    curves = step_like_curves()
    t, f = [c[0] for c in curves], [c[1] for c in curves]
    jump = fit_curves(JMAK(), t, f)
    plain = fit_curves(NoValleyJMAK(), t, f)
    assert jump.iterations < plain.iterations
    assert bool(jump.converged.all())
    # never a worse point than plain Levenberg-Marquardt reaches
    assert bool((jump.cost <= plain.cost * (1 + 1e-12)).all())
    # at least as good as scipy's curve_fit on the same data, and flagged: n is undetermined
    for i, (tt, ff) in enumerate(curves):
        ref = np.sqrt(np.mean((jmak_np(tt, *plain.theta[i].numpy()) - ff) ** 2))
        assert float(jump.rmse[i]) <= ref + 1e-12
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p, _ = curve_fit(jmak_np, tt, ff, p0=[-math.log(np.median(tt)), 0.7], maxfev=5000)
        assert float(jump.rmse[i]) <= np.sqrt(np.mean((jmak_np(tt, *p) - ff) ** 2)) + 1e-9
    assert bool(jump.poorly_determined.all())


def test_valley_jump_keeps_the_pivot_fraction_and_scales_n():
    model = JMAK()
    t = np.array([[50.0, 100.0, 300.0, 1000.0]])
    lt = model.fit_inputs(torch.as_tensor(t)).numpy()
    theta = np.array([[math.log(1 / 300.0)], [math.log(6.0)]])  # n = 6, pivot at t = 300 s
    sw = np.ones((4, 1))
    direction = model.fit_valley_direction(theta, np.array([[0.0], [0.1]]))
    assert direction.tolist() == [1.0]
    far = model.fit_valley_jump(theta, direction, lt.T.copy(), sw)
    assert math.isclose(math.exp(far[1, 0]), 6.0 * 16, rel_tol=1e-12)
    f_old = jmak_np(np.array([300.0]), theta[0, 0], theta[1, 0])
    f_new = jmak_np(np.array([300.0]), far[0, 0], far[1, 0])
    np.testing.assert_allclose(f_new, f_old, rtol=1e-10)
    # n shrinking towards 0 below 0.5, nothing in between
    assert model.fit_valley_direction(np.array([[0.0], [math.log(0.3)]]),
                                      np.array([[0.0], [-0.1]])).tolist() == [-1.0]
    assert model.fit_valley_direction(np.array([[0.0], [math.log(2.0)]]),
                                      np.array([[0.0], [0.1]])).tolist() == [0.0]
    assert JMAK(fit_t0=True).fit_valley_direction(theta, theta) is None


def test_benchmark_kind_of_curves_match_or_beat_scipy():
    """The accuracy contract of the speed benchmark, on a smaller set: no curve's RMSE to its
    data worse than scipy's curve_fit (from the textbook guess) by more than 1e-6."""
    times, fracs = noisy_curves(150, seed=6)
    for mode in ("all", "adaptive"):
        res = fit_curves(JMAK(), times, fracs, multistart=mode)
        assert bool(res.converged.all())
        for i, (t, f) in enumerate(zip(times, fracs, strict=True)):
            assert float(res.rmse[i]) <= scipy_rmse(t, f) + 1e-6, (mode, i)


@pytest.mark.shared_data
def test_tungsten_fits_equal_between_loops_and_never_worse_than_plain_lm(monkeypatch):
    df = pd.read_csv(shared_dataset("kinetics/tungsten_recrystallization.csv"))
    groups = [g.sort_values("time_s") for _, g in df.groupby(["dataset_id", "temperature_K"])]
    t = [g["time_s"].to_numpy() for g in groups]
    f = [g["fraction"].to_numpy() for g in groups]
    kw = {"fraction_tolerance": 0.15, "allow_negative_time": True}
    monkeypatch.setattr(lm, "CPU_LOOP", "torch")
    ref = fit_jmak(t, f, **kw)
    monkeypatch.setattr(lm, "CPU_LOOP", "numpy")
    res = fit_jmak(t, f, **kw)
    torch.testing.assert_close(res.theta, ref.theta, rtol=1e-9, atol=1e-10)
    plain = fit_curves(NoValleyJMAK(), t, f)  # fit_jmak's validation passed above
    assert bool((res.cost <= plain.cost * (1 + 1e-9) + 1e-15).all())


def test_bad_weights_are_refused_and_default_weights_need_no_check():
    t, f = [np.array([100.0, 200.0, 400.0])], [np.array([0.1, 0.5, 0.9])]
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(InputError, match="weights must be finite and non-negative"):
            fit_curves(JMAK(), t, f, weight=[np.array([1.0, bad, 1.0])])
    # weight 1 everywhere is the same fit as no weights
    a = fit_curves(JMAK(), t, f)
    b = fit_curves(JMAK(), t, f, weight=[np.ones(3)])
    torch.testing.assert_close(a.theta, b.theta, rtol=0, atol=0)
