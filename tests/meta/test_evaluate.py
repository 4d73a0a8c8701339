"""Leave-families-out k-shot evaluation on synthetic families whose structure we know."""

import math

import numpy as np
import pytest
import torch

from matmeta.errors import InputError
from matmeta.meta import Family, MetaSettings, MetaTrainSettings
from matmeta.meta._evaluate import (
    EVAL_METHODS,
    FEATURE_ONLY,
    EvaluationSettings,
    bootstrap_interval,
    evaluate,
    family_folds,
)
from matmeta.models._mlp import MLP
from matmeta.models.parametric import JMAK

F64 = torch.float64


def sine_families(n=10, size=16, seed=0, noise=0.05):
    """y = 1.5 sin(x) + b_f: every family shares the shape and differs by its offset b_f.

    Two points of a new family pin its offset once the shape is known (meta-learning can learn
    it); from the two points alone the shape cannot be recovered.
    """
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        x = (torch.rand(size, 1, generator=gen, dtype=F64) * 6 - 3)
        b = 0.8 * torch.randn((), generator=gen, dtype=F64)
        y = 1.5 * torch.sin(x[:, 0]) + b + noise * torch.randn(size, generator=gen, dtype=F64)
        out.append(Family(f"F{i}", x, y))
    return out


FAST = dict(repeats=3, val_repeats=2, bootstrap=300, pretrain_steps=150,
            scratch_steps=(10, 50, 200), meta_steps=(0, 1, 3, 5, 10), meta_lr_scales=(1.0, 3.0),
            finetune_steps=(0, 1, 5, 20), finetune_lrs=(0.01, 0.03))


@pytest.fixture(scope="module")
def sine_result():
    torch.manual_seed(0)
    fams = sine_families()
    model = MLP(1, (32, 32), dtype="float64")
    res = evaluate(model, fams, test=["F0", "F1", "F2", "F3"], val=["F4", "F5"],
                   settings=EvaluationSettings(shots=(2, 5), **FAST),
                   meta_settings=MetaSettings("maml", inner_steps=3, inner_lr=0.1),
                   meta_train_settings=MetaTrainSettings(steps=250, meta_batch=6, k_shot=3,
                                                         q_query=8, outer_lr=3e-3),
                   progress=False)
    return fams, res


def test_every_method_appears_with_an_interval_around_its_estimate(sine_result):
    _, res = sine_result
    # the MLP has no features (no heads); the ensemble is opt-in
    expected = {m for m in EVAL_METHODS if m not in ("independent", "map", *FEATURE_ONLY,
                                                       "ensemble")}
    for k in (2, 5):
        rows = res.table[res.table.k == k]
        assert set(rows.method) == expected
    t = res.table
    assert (t.ci_low <= t.error).all() and (t.error <= t.ci_high).all()
    assert (t.n_groups == 4).all() and (t.n_tasks == 4 * 3).all()
    # the table's error is the mean over groups of per-group mean task errors (recomputed here)
    sel = res.tasks[(res.tasks.k == 2) & (res.tasks.method == "scratch")]
    expect = np.mean([g.error.mean() for _, g in sel.groupby("group")])
    got = float(t[(t.k == 2) & (t.method == "scratch")].error.iloc[0])
    assert got == pytest.approx(expect, rel=1e-12)


def test_methods_see_the_same_tasks(sine_result):
    _, res = sine_result
    keys = res.tasks.groupby("method").apply(
        lambda g: tuple(sorted(zip(g.family, g.k, g.repeat, strict=True))), include_groups=False)
    assert len(set(keys)) == 1


def test_split_never_leaks_test_families(sine_result):
    fams, res = sine_result
    (fold,) = res.folds
    assert fold["test"] == ["F0", "F1", "F2", "F3"] and fold["val"] == ["F4", "F5"]
    assert not set(fold["test"]) & (set(fold["train"]) | set(fold["val"]))
    for train, val, test in family_folds(fams, test="leave-one-out", val=0.2, seed=3):
        held = {f.group for f in test}
        assert len(held) == 1
        assert not held & {f.group for f in train + val}
        assert not {f.group for f in train} & {f.group for f in val}
        assert len(train) + len(val) + len(test) == len(fams)


def test_meta_learning_beats_training_from_scratch_at_two_shots(sine_result):
    # by construction: the shared shape is learnable across families, not from 2 points
    _, res = sine_result
    t = res.table[res.table.k == 2].set_index("method")
    assert t.loc["meta", "error"] < 0.7 * t.loc["scratch", "error"]
    assert t.loc["meta", "ci_high"] < t.loc["scratch", "ci_low"]


def test_bootstrap_mean_and_degenerate_intervals():
    vals = [0.1, 0.4, 0.25, 0.3]
    mean, lo, hi = bootstrap_interval(vals, n_boot=2000, level=0.9, seed=1)
    assert mean == pytest.approx(np.mean(vals))
    assert min(vals) <= lo <= mean <= hi <= max(vals)
    assert bootstrap_interval([0.2, 0.2, 0.2]) == pytest.approx((0.2, 0.2, 0.2))
    assert bootstrap_interval([0.7]) == (0.7, 0.7, 0.7)
    # the interval of a mean of n values shrinks like 1/sqrt(n): compare with the normal theory
    rng = np.random.default_rng(0)
    many = rng.normal(1.0, 1.0, size=400)
    _, lo, hi = bootstrap_interval(many, n_boot=4000)
    half = 1.645 * many.std() / math.sqrt(many.size)
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.1)


def test_too_small_families_are_reported_not_skipped():
    fams = sine_families(n=8, size=12)
    fams[0] = Family("F0", fams[0].inputs[:4], fams[0].y[:4])
    res = evaluate(MLP(1, (8,), dtype="float64"), fams, test=["F0", "F1"], val=["F2"],
                   settings=EvaluationSettings(shots=(2, 5), methods=("pretrained", "offset"),
                                               repeats=2, bootstrap=100, pretrain_steps=20),
                   progress=False)
    assert res.too_small[["family", "n_samples", "k"]].values.tolist() == [["F0", 4, 5]]
    assert set(res.tasks[res.tasks.k == 5].family) == {"F1"}
    assert set(res.tasks[res.tasks.k == 2].family) == {"F0", "F1"}
    assert any("too small" in n for n in res.notes)


def test_bad_input_is_one_clear_line():
    fams = sine_families(n=6, size=10)
    model = MLP(1, (8,), dtype="float64")
    with pytest.raises(InputError, match=r"k=50: no test family has more than 50 samples"):
        evaluate(model, fams, test=["F0"], val=["F1"], settings=EvaluationSettings(shots=(50,)))
    with pytest.raises(InputError, match="unknown evaluation method 'magic'"):
        EvaluationSettings(methods=("meta", "magic"))
    with pytest.raises(InputError, match="fits a parametric law"):
        evaluate(model, fams, test=["F0"], val=["F1"],
                 settings=EvaluationSettings(methods=("map",)))
    with pytest.raises(InputError, match="no meta-validation families"):
        evaluate(model, fams, test=["F0"], val=0.0, settings=EvaluationSettings(shots=(2,)))
    with pytest.raises(InputError, match="not among the families"):
        evaluate(model, fams, test=["Nope"], val=0.2)
    for exc in (InputError,):
        try:
            EvaluationSettings(shots=(0,))
        except exc as e:
            assert "\n" not in str(e)


def jmak_families(n_grades=6, per_grade=2, seed=0):
    """Isotherms of grades with a shared Avrami exponent n ~ 2 and ln k spread within a grade."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.logspace(1, 5, 10, dtype=F64)
    fams = []
    for g in range(n_grades):
        lnk_g = -7.0 + 0.6 * torch.randn((), generator=gen, dtype=F64)
        for j in range(per_grade):
            lnk = lnk_g + 0.3 * torch.randn((), generator=gen, dtype=F64)
            n = 2.0 * torch.exp(0.05 * torch.randn((), generator=gen, dtype=F64))
            f = 1 - torch.exp(-torch.exp(n * (lnk + torch.log(t))))
            f = f + 0.02 * torch.randn(t.shape, generator=gen, dtype=F64)
            fams.append(Family(f"G{g}@{j}", t.clone(), f, group=f"G{g}"))
    return fams


def test_kinetics_adds_independent_and_map_fits():
    fams = jmak_families()
    res = evaluate(JMAK(), fams, test=["G0", "G1"], val=["G2"],
                   settings=EvaluationSettings(shots=(1, 3), repeats=3, val_repeats=2,
                                               bootstrap=200, pretrain_steps=100,
                                               scratch_steps=(10, 100),
                                               noise_stds=(0.02, 0.1)),
                   meta_settings=MetaSettings("maml", inner_steps=3, inner_lr=0.1),
                   meta_train_settings=MetaTrainSettings(steps=60, meta_batch=4, k_shot=3,
                                                         q_query=4, outer_lr=0.05),
                   progress=False)
    t = res.table
    assert t.metric.unique().tolist() == ["rmse"]
    assert set(t[t.k == 3].method) == set(EVAL_METHODS) - set(FEATURE_ONLY) - {"ensemble"}
    # MAP comes with a Laplace predictive std, scored; point methods carry NaN
    mp = t[t.method == "map"]
    assert mp[["crps", "nlpd", "coverage_50", "coverage_90"]].notna().all().all()
    assert ((mp.coverage_90 >= 0) & (mp.coverage_90 <= 1)).all()
    assert t[t.method == "independent"][["crps", "coverage_90"]].isna().all().all()
    # two free parameters (ln k, ln n): no independent fit from one point, and the note says so
    assert "independent" not in set(t[t.k == 1].method) and "map" in set(t[t.k == 1].method)
    assert any("k >= 2" in n for n in res.notes)
    # the groups are the grades: intervals resample the two held-out grades
    assert (t.n_groups == 2).all()
    prior = res.folds[0]["prior"]
    assert prior["names"] == ["ln_k", "ln_n"] and min(prior["std"]) >= 0.05


def test_paired_comparison_ratio_and_wins_are_exact_on_known_errors():
    import pandas as pd

    from matmeta.meta._evaluate import paired_comparison

    rows = []
    for g, base in enumerate([0.2, 0.4, 0.6, 0.8]):
        for r in range(3):
            rows.append({"group": f"G{g}", "k": 2, "method": "b", "error": base + 0.01 * r})
            rows.append({"group": f"G{g}", "k": 2, "method": "a", "error": (base + 0.01 * r) / 2})
    tasks = pd.DataFrame(rows)
    out = paired_comparison(tasks, "a", "b", n_boot=500)
    (row,) = out.to_dict(orient="records")
    # every group's error is halved, so every resample's ratio is exactly 0.5
    assert row["ratio"] == pytest.approx(0.5) and row["wins"] == 4 and row["n_groups"] == 4
    assert row["ci_low"] == pytest.approx(0.5) and row["ci_high"] == pytest.approx(0.5)


def _shifted(fams, name, c):
    return [Family(f.name, f.inputs, f.y + c, group=f.group) if f.name == name else f
            for f in fams]


def test_leave_one_out_fits_each_fold_transform_on_its_meta_train_families_only():
    # F0 sits 100 above the rest: any fold whose transform saw F0 while F0 was held out would
    # have a mean far from numpy's mean over that fold's meta-train targets
    fams = _shifted(sine_families(n=4, size=10), "F0", 100.0)
    res = evaluate(MLP(1, (8,), dtype="float64"), fams, test="leave-one-out", val=0.25,
                   settings=EvaluationSettings(shots=(2,), methods=("pretrained",), repeats=1,
                                               bootstrap=50, pretrain_steps=5),
                   target_transform="standardize", progress=False)
    by_name = {f.name: f.y.numpy() for f in fams}
    assert len(res.folds) == 4
    for fold in res.folds:
        y = np.concatenate([by_name[g] for g in fold["train"]])
        tt = fold["target_transform"]
        assert tt["kind"] == "standardize"
        assert tt["mean"] == pytest.approx(float(y.mean()), rel=1e-12)
        assert tt["std"] == pytest.approx(float(y.std()), rel=1e-12)


def test_held_out_targets_reach_the_errors_only_through_their_own_values():
    # shift the held-out family by 1000, then by 2000: the fold's transform, the hyperparameters
    # chosen and every zero-shot prediction must not move, so each zero-shot task's MAE (all
    # residuals of one sign, |y + c - pred| = c + y - pred) moves by exactly 1000
    fams = sine_families(n=6, size=12)

    def run(c):
        return evaluate(MLP(1, (8,), dtype="float64"), _shifted(fams, "F0", c), test=["F0"],
                        val=["F1"],
                        settings=EvaluationSettings(
                            shots=(2,), methods=("meta_init", "pretrained", "finetune", "offset"),
                            repeats=2, val_repeats=1, bootstrap=50, pretrain_steps=30,
                            finetune_steps=(0, 2), finetune_lrs=(0.01,)),
                        meta_settings=MetaSettings("maml", inner_steps=1, inner_lr=0.1),
                        meta_train_settings=MetaTrainSettings(steps=5, meta_batch=2, k_shot=2,
                                                              q_query=4),
                        target_transform="standardize", progress=False)

    a, b = run(1000.0), run(2000.0)
    train = np.concatenate([f.y.numpy() for f in fams if f.name not in ("F0", "F1")])
    for res in (a, b):
        tt = res.folds[0]["target_transform"]
        assert tt["mean"] == pytest.approx(float(train.mean()), rel=1e-12)
        assert tt["std"] == pytest.approx(float(train.std()), rel=1e-12)
    assert a.folds[0]["chosen"] == b.folds[0]["chosen"]
    for m in ("meta_init", "pretrained"):
        ea = a.tasks[a.tasks.method == m].error.to_numpy()
        eb = b.tasks[b.tasks.method == m].error.to_numpy()
        assert ea.size == 2 and ea.min() > 900
        np.testing.assert_allclose(eb - ea, 1000.0, rtol=0, atol=1e-6)


def test_log_transform_checks_every_target_before_training():
    fams = [Family(f.name, f.inputs, f.y.abs() + 1.0) for f in sine_families(n=5, size=8)]
    fams[0].y[3] = -2.0
    with pytest.raises(InputError, match=r"family .F0., row 3: target -2(\.0)? cannot be"):
        evaluate(MLP(1, (4,), dtype="float64"), fams, test=["F0"], val=["F1"],
                 settings=EvaluationSettings(shots=(2,), methods=("pretrained",)),
                 target_transform="log10_standardize", progress=False)
    with pytest.raises(TypeError, match="pass the kind"):
        from matmeta.models._transforms import TargetTransform

        evaluate(MLP(1, (4,), dtype="float64"), fams, test=["F0"], val=["F1"],
                 target_transform=TargetTransform("standardize", 0.0, 1.0), progress=False)
