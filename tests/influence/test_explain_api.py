"""explain(): the DataFrame, the sign convention, bad input, duplicates, the plots."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from matmeta.errors import InputError
from matmeta.influence import DuplicateSampleWarning, explain
from matmeta.models import Samples
from matmeta.models.parametric._jmak import JMAK
from matmeta.plots._influence import plot_influence_bars, plot_influence_curve
from tests.influence._models import F64, Linear, linear_data

INNER = {"steps": 160, "lr": 0.45}


def test_dataframe_columns_sign_convention_and_loo_check():
    support, query = linear_data(k=10)
    y = support.y.clone()
    y[4] += 3.0  # an outlier: deleting it must lower the query loss
    model = Linear()
    df = explain(model, model.init_params(), Samples(support.inputs, y), query, inner=INNER,
                 targets=["query_loss", "prediction"], estimator="implicit", check_loo=True,
                 ids=[f"s{i}" for i in range(10)])
    assert list(df["sample"]) == [f"s{i}" for i in range(10)]
    assert "query_loss" in df and "prediction:0" in df and "loo:query_loss" in df
    # the convention: loss without the sample - loss with all; the outlier is harmful
    assert df.loc[4, "loo:query_loss"] < 0 and df.loc[4, "query_loss"] < 0
    assert df.loc[4, "effect"] == "harmful" and df.loc[4, "harm_rank"] == 1
    assert (df.loc[df["query_loss"] > 0, "effect"] == "helpful").all()
    a = df.attrs["agreement"]["query_loss"]
    assert a["spearman"] > 0.9 and a["pearson"] > 0.8
    assert "Spearman" in df.attrs["summary"] and "s4" in df.attrs["summary"]
    assert df.attrs["info"]["damping"] == 0.0


def test_bad_input_one_line_errors():
    support, query = linear_data(k=6)
    model = Linear()
    p = model.init_params()
    empty = Samples(support.inputs[:0], support.y[:0])
    with pytest.raises(InputError, match="support set is empty"):
        explain(model, p, empty, query, inner=INNER)
    with pytest.raises(InputError, match="needs a query set"):
        explain(model, p, support, None, inner=INNER, targets="query_loss")
    with pytest.raises(InputError, match="cannot evaluate"):  # a query missing an input column
        explain(model, p, support, Samples(query.inputs[:, :1], query.y), inner=INNER)
    unlabelled = Samples(query.inputs, torch.full_like(query.y, float("nan")))
    with pytest.raises(InputError, match="use target 'prediction'"):
        explain(model, p, support, unlabelled, inner=INNER)
    df = explain(model, p, support, unlabelled, inner=INNER, targets="prediction")
    assert df.shape[0] == 6 and "prediction:7" in df
    with pytest.raises(InputError, match="unknown influence target 'n'"):
        explain(model, p, support, query, inner=INNER, targets="n")
    with pytest.raises(InputError, match="steps"):
        explain(model, p, support, query, inner={"lr": 0.1})
    with pytest.raises(InputError, match="unrolled"):
        explain(model, p, support, query, inner={"steps": 2, "lr": 0.01}, estimator="implicit")
    with pytest.raises(InputError, match="diverged"):
        explain(model, p, support, query, inner={"steps": 300, "lr": 5.0})
    for exc_msg in ("support set is empty", "diverged"):
        assert "\n" not in exc_msg


def test_duplicate_support_samples_warn_naming_both_and_do_not_crash():
    support, query = linear_data(k=6)
    x = torch.cat([support.inputs, support.inputs[2:3]])
    y = torch.cat([support.y, support.y[2:3]])
    model = Linear()
    with pytest.warns(DuplicateSampleWarning, match="'c'.*'g'"):
        df = explain(model, model.init_params(), Samples(x, y), query, inner=INNER,
                     ids=list("abcdefg"), check_loo=True)
    assert np.isfinite(df["query_loss"]).all()
    # each twin's LOO influence is what deleting one copy does: equal for both
    assert df.loc[2, "loo:query_loss"] == pytest.approx(df.loc[6, "loo:query_loss"], abs=1e-10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DuplicateSampleWarning)
        explain(model, model.init_params(), support, query, inner=INNER)


def test_physical_targets_and_plots(tmp_path):
    # synthetic JMAK isotherm (k = 1e-3 /s, n = 2) with one measurement pushed off the curve
    model = JMAK()
    truth = model.from_physical(k_per_s=1e-3, n=2.0)
    t = torch.tensor([100.0, 300, 500, 700, 900, 1200, 1600, 2200, 3000], dtype=F64)
    y = model.forward(truth, t)
    y[3] = 0.9
    start = model.from_physical(k_per_s=5e-4, n=1.5)
    df = explain(model, start, Samples(t, y), None, inner={"steps": 300, "lr": 5.0},
                 targets=["n", "k", "t_half", "params"], estimator="unrolled", check_loo=True)
    assert list(df.columns[1:6]) == ["n", "k", "t_half", "param:ln_k", "param:ln_n"]
    # the pushed point (above the curve, early) raises k: deleting it lowers k the most
    assert int(df["loo:k"].idxmin()) == 3 and int(df["k"].idxmin()) == 3
    assert df.attrs["agreement"]["t_half"]["spearman"] > 0.9
    # chain rule: d ln k = dk / k to first order, so the columns are consistent
    adapted_k = float(torch.exp(JMAK().from_physical(k_per_s=1e-3, n=2.0)["ln_k"]))
    assert np.sign(df["k"]).tolist() == np.sign(df["param:ln_k"]).tolist()
    assert adapted_k > 0
    fig = plot_influence_bars(df, column="k", path=tmp_path / "bars.png")
    assert (tmp_path / "bars.png").stat().st_size > 1000
    assert len(fig.axes[0].patches) == len(t)
    grid = torch.logspace(1.5, 3.7, 50, dtype=F64)
    curve = model.forward(truth, grid)
    plot_influence_curve(df, t.numpy(), y.numpy(), grid.numpy(), curve.numpy(), column="k",
                         path=tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 1000
