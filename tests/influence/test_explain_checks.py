"""explain()'s honesty checks: a misfit adaptation warns, noise is not ranked, ties are not
correlated. References: inner_loop re-run by hand, scipy, the review's tungsten isotherm."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from matmeta.influence import PoorFitWarning, agreement, explain
from matmeta.meta import inner_loop
from matmeta.models import Samples
from matmeta.models.parametric._jmak import JMAK
from tests.helpers import shared_dataset
from tests.influence._models import F64, Linear, linear_data


def test_agreement_undefined_on_ties_and_noise_defined_otherwise():
    # one sample apart from seven tied ones (float noise in the 9th digit), as the review saw
    # for t_half: any two such vectors correlate +-1 by construction
    est = np.array([-83.5, *(11.934839913 + 1e-8 * np.arange(7))])
    loo = np.array([-336.1, *(12.657792098 + 1e-8 * np.arange(7)[::-1])])
    assert stats.pearsonr(est, loo).statistic > 0.99  # what used to be reported
    out = agreement(est, loo)
    assert math.isnan(out["spearman"]) and math.isnan(out["pearson"])
    assert out["reason"] == "the estimates take only 2 distinct value(s) (7 of 8 tied)"
    # all below the noise floor: undefined, whatever scipy would say
    tiny = np.array([-1.9e-9, 2.7e-10, 2.6e-10, 2.5e-10])
    out = agreement(tiny, tiny * 1.1, noise_floor=1e-7)
    assert math.isnan(out["pearson"]) and "noise level" in out["reason"]
    # distinct values: scipy's figures; ties within the floor are ranked as ties
    a, b = np.array([0.1, 0.5, 0.2, 0.9, 0.3]), np.array([0.0, 0.4, 0.3, 1.0, 0.2])
    out = agreement(a, b)
    assert out["reason"] is None
    assert out["spearman"] == pytest.approx(stats.spearmanr(a, b).statistic)
    assert out["pearson"] == pytest.approx(stats.pearsonr(a, b).statistic)
    noisy = np.array([0.1, 0.5, 0.5 + 1e-12, 0.9, 0.5 - 1e-12])
    ref = np.array([0.1, 0.5, 0.5, 0.9, 0.5])
    assert agreement(noisy, b, noise_floor=1e-9)["spearman"] == pytest.approx(
        stats.spearmanr(ref, b).statistic)


def _saturated_jmak():
    """A start far from the data (t_half ~1e3 s, data near 5e4 s): every point after the first
    sits where the JMAK curve is flat at 1, so gradient steps cannot move the fit."""
    model = JMAK()
    truth = model.from_physical(k_per_s=1.4e-5, n=3.0)
    t = torch.tensor([185.0, 14615, 20072, 29044, 32652, 39866, 54111, 90185], dtype=F64)
    y = model.forward(truth, t)
    y[3] = 0.9  # a corrupted point
    tq = torch.tensor([9250.0, 18222, 25529, 30894, 36351, 47081, 72055], dtype=F64)
    start = {"ln_k": torch.tensor(-7.0513, dtype=F64), "ln_n": torch.tensor(0.2852, dtype=F64)}
    return model, start, Samples(t, y), Samples(tq, model.forward(truth, tq))


def test_misfit_adaptation_warns_and_names_no_sample_from_noise():
    model, start, support, query = _saturated_jmak()
    inner = {"steps": 300, "lr": 2.0}
    with pytest.warns(PoorFitWarning, match=r"does not fit its own support: RMSE .* against a "
                      r"spread \(std\) .* inner steps"):
        df = explain(model, start, support, query, inner=inner,
                     targets=["query_loss", "t_half", "n"], check_loo=True,
                     ids=[f"row {i}" for i in range(2, 10)])
    # the warning's figures, recomputed from the inner loop run by hand
    adapted = inner_loop(model, start, support, **inner)
    fitted = model.forward(adapted, support.inputs)
    rmse = float(((fitted - support.y) ** 2).mean().sqrt())
    fit = df.attrs["fit"]
    assert fit["support_rmse"] == pytest.approx(rmse, rel=1e-9)
    assert fit["support_std"] == pytest.approx(float(support.y.std(correction=0)), rel=1e-9)
    assert fit["r2"] < 0
    # query-loss scores are noise: neutral, no most harmful / helpful, no correlation claimed
    assert set(df["effect"]) == {"neutral"}
    summary = df.attrs["summary"]
    assert "most harmful" not in summary and "most helpful" not in summary
    assert "no support sample moves query_loss measurably" in summary
    for target in ("query_loss", "t_half", "n"):
        a = df.attrs["agreement"][target]
        assert math.isnan(a["spearman"]) and math.isnan(a["pearson"]) and a["reason"]
        assert f"on {target}: correlation undefined" in summary
    assert "Spearman" not in summary and "Pearson" not in summary
    assert len(df.attrs["summary"].splitlines()) == 5


def test_good_adaptation_does_not_warn_and_repeats_are_not_a_misfit():
    support, query = linear_data(k=10)
    model = Linear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", PoorFitWarning)
        df = explain(model, model.init_params(), support, query, inner={"steps": 160, "lr": 0.45},
                     check_loo=True)
    assert df.attrs["fit"]["r2"] > 0.9
    assert "most harmful" in df.attrs["summary"]
    # repeated measurements of two inputs: their scatter is most of the targets' spread, which
    # no model fits; the least-squares line through the two group means fits all the rest
    x = torch.tensor([[0.0, 0.0]] * 4 + [[1.0, 0.0]] * 4, dtype=F64)
    y = torch.tensor([0.0, 2.0, -2.0, 0.4, 1.0, 3.0, -1.0, 1.4], dtype=F64)
    means = torch.tensor([0.1] * 4 + [1.1] * 4, dtype=F64)
    plain_r2 = 1 - float(((y - means) ** 2).mean() / y.var(correction=0))
    assert plain_r2 < 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error", PoorFitWarning)
        df = explain(model, model.init_params(), Samples(x, y), query,
                     inner={"steps": 400, "lr": 0.5})
    fit = df.attrs["fit"]
    assert fit["repeat_std"] == pytest.approx(float((y - means).pow(2).mean().sqrt()), rel=1e-9)
    assert fit["r2"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.shared_data
def test_review_tungsten_isotherm_with_the_checkpoint_start():
    """The review's case: W_Lopez2015_HR at 1473.15 K, even points as support with the point at
    29044 s set to 0.9, odd points as query, from the meta checkpoint's start (t_half ~1e3 s)."""
    df = pd.read_csv(shared_dataset("kinetics/tungsten_recrystallization.csv"))
    g = df[(df.dataset_id == "W_Lopez2015_HR") & np.isclose(df.temperature_K, 1473.15)]
    g = g.sort_values("time_s").reset_index(drop=True)
    sup, q = g.iloc[::2].copy(), g.iloc[1::2]
    sup.loc[(sup.time_s - 29044).abs() < 1, "fraction"] = 0.9
    assert (sup.fraction == 0.9).sum() == 1
    model = JMAK()
    start = {"ln_k": torch.tensor(-7.0513, dtype=F64), "ln_n": torch.tensor(0.2852, dtype=F64)}

    def samples(frame):
        return Samples(torch.tensor(frame.time_s.to_numpy(), dtype=F64),
                       torch.tensor(frame.fraction.to_numpy(), dtype=F64))

    for inner, targets in [({"steps": 5, "lr": 0.1}, ["query_loss"]),
                           ({"steps": 300, "lr": 2.0}, ["query_loss", "t_half", "n"])]:
        with pytest.warns(PoorFitWarning):
            out = explain(model, start, samples(sup), samples(q), inner=inner, targets=targets,
                          check_loo=True)
        assert "most harmful" not in out.attrs["summary"]
        assert all(math.isnan(a["pearson"]) for a in out.attrs["agreement"].values())
