"""Uncertainty in the k-shot evaluation: closed-form heads, ensembles and their scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from matmeta.meta import Family, MetaSettings, MetaTrainSettings
from matmeta.meta._evaluate import (
    UNCERTAINTY_COLUMNS,
    EvaluationSettings,
    _uncertainty,
    evaluate,
)
from tests.bayes.test_bayes_meta import TanhFeatures

F64 = torch.float64


def offset_families(n=9, size=14, seed=0):
    """y = 1.5 sin(x) + b_f + noise, x in [-3, 3]: families differ by an offset."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        x = torch.rand(size, 1, generator=gen, dtype=F64) * 6 - 3
        b = 0.8 * torch.randn((), generator=gen, dtype=F64)
        y = 1.5 * torch.sin(x[:, 0]) + b + 0.1 * torch.randn(size, generator=gen, dtype=F64)
        out.append(Family(f"F{i}", x, y))
    return out


@pytest.fixture(scope="module")
def head_result():
    methods = ("offset", "bayes_linear", "gp", "pretrained_bayes_linear", "pretrained_gp",
               "ensemble")
    res = evaluate(TanhFeatures(d=1, hidden=12), offset_families(),
                   test=["F0", "F1", "F2"], val=["F3", "F4"],
                   settings=EvaluationSettings(shots=(1, 4), methods=methods, repeats=2,
                                               val_repeats=1, bootstrap=200, pretrain_steps=100,
                                               head_steps=8, ensemble_members=2),
                   meta_settings=MetaSettings("maml", inner_steps=2, inner_lr=0.05),
                   meta_train_settings=MetaTrainSettings(steps=15, meta_batch=4, k_shot=4,
                                                         q_query=6, outer_lr=1e-2),
                   target_transform="standardize", progress=False)
    return res


def test_methods_with_a_std_are_scored_and_point_methods_are_not(head_result):
    t = head_result.table
    k4 = t[t.k == 4].set_index("method")
    for m in ("bayes_linear", "gp", "pretrained_bayes_linear", "pretrained_gp", "ensemble"):
        row = k4.loc[m]
        assert all(math.isfinite(row[c]) for c in UNCERTAINTY_COLUMNS), m
        assert 0 <= row.coverage_50 <= row.coverage_90 <= 1
        assert row.crps_ci_low <= row.crps <= row.crps_ci_high
    assert k4.loc["offset", list(UNCERTAINTY_COLUMNS)].isna().all()
    # the summary's CRPS is the mean over groups of per-group task means
    sel = head_result.tasks[(head_result.tasks.k == 4) & (head_result.tasks.method == "gp")]
    expect = np.mean([g.crps.mean() for _, g in sel.groupby("group")])
    assert k4.loc["gp", "crps"] == pytest.approx(expect, rel=1e-12)


def test_heads_are_not_run_below_two_points_and_the_note_says_why(head_result):
    t = head_result.table
    assert set(t[t.k == 1].method) == {"offset", "ensemble"}
    assert any("k >= 2" in n for n in head_result.notes)
    assert "ensemble_noise_std" in head_result.folds[0]


def test_every_method_sees_the_same_tasks(head_result):
    tasks = head_result.tasks[head_result.tasks.k == 4]
    keys = {m: sorted(zip(g.family, g.repeat, strict=True)) for m, g in tasks.groupby("method")}
    assert len({tuple(v) for v in keys.values()}) == 1


def test_uncertainty_scores_in_report_units_match_scipy():
    mean = torch.tensor([0.1, -0.4, 1.2], dtype=F64)
    std = torch.tensor([0.5, 0.2, 0.9], dtype=F64)
    y = torch.tensor([0.3, 0.5, 1.0], dtype=F64)
    scale, shift = 3.0, 10.0  # an affine report map (a standardised target's inverse)
    got = _uncertainty((mean, std), y, lambda v: scale * v + shift)
    m, s, o = (scale * mean + shift).numpy(), (scale * std).numpy(), (scale * y + shift).numpy()
    z = (o - m) / s
    crps = s * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / np.sqrt(np.pi))
    assert got["crps"] == pytest.approx(crps.mean(), rel=1e-10)
    assert got["nlpd"] == pytest.approx(-stats.norm.logpdf(o, m, s).mean(), rel=1e-10)
    lo, hi = stats.norm.interval(0.9, m, s)
    assert got["coverage_90"] == pytest.approx(((o >= lo) & (o <= hi)).mean())
    assert all(math.isnan(v) for v in _uncertainty(mean, y, lambda v: v).values())


def test_coverage_plot_is_written(head_result, tmp_path):
    from matmeta.plots._evaluate import plot_coverage

    fig = plot_coverage(head_result.tasks, tmp_path / "cov.png")
    assert (tmp_path / "cov.png").stat().st_size > 1000
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert "gp, k=4" in labels and not any(lb.startswith("offset") for lb in labels)


def test_head_meta_training_can_start_from_the_pretrained_model():
    # one meta-step at a negligible rate: the meta-trained head then is the pretrained head
    res = evaluate(TanhFeatures(d=1, hidden=6), offset_families(n=6, size=10),
                   test=["F0", "F1"], val=["F2"],
                   settings=EvaluationSettings(shots=(3,), methods=("bayes_linear",
                                                                   "pretrained_bayes_linear"),
                                               repeats=2, val_repeats=1, bootstrap=50,
                                               pretrain_steps=30, head_steps=5,
                                               head_init="pretrained"),
                   meta_train_settings=MetaTrainSettings(steps=1, meta_batch=2, k_shot=3,
                                                         q_query=4, outer_lr=1e-12),
                   progress=False)
    t = res.tasks.set_index(["family", "repeat", "method"]).error.unstack()
    np.testing.assert_allclose(t["bayes_linear"], t["pretrained_bayes_linear"], rtol=1e-8)
