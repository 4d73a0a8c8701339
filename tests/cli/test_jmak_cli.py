"""`matmeta jmak fit`: JSON keys, CSV and plot files, real data, and bad input writes nothing."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from matmeta.cli.main import main
from tests.helpers import DATA, shared_dataset

KEYS = {"k_per_s", "k_per_s_se", "n", "n_se", "t0_s", "t0_s_se", "f_max", "f_max_se",
        "t_half_s", "t_half_s_se", "rmse", "n_points", "converged", "nk_correlation",
        "poorly_determined"}


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_reconstructed_demo_recovers_published_n_and_t_half(tmp_path, capsys):
    src = DATA / "kinetics" / "avrami_reconstructed_curves.csv"
    out = tmp_path / "fits.csv"
    code, stdout, _ = run(["jmak", "fit", str(src), "--out", str(out), "--json"], capsys)
    assert code == 0
    rows = json.loads(stdout)
    assert len(rows) == 36 and KEYS | {"material", "temperature_K"} <= set(rows[0])
    truth = pd.read_csv(src).groupby(["material", "temperature_K"]).first()
    for r in rows:
        ref = truth.loc[(r["material"], r["temperature_K"])]
        assert math.isclose(r["n"], ref["n_published"], rel_tol=1e-6)
        assert math.isclose(r["t_half_s"], ref["t_half_s_published"], rel_tol=1e-6)
        assert r["converged"] and r["t0_s"] == 0.0 and r["f_max"] == 1.0
    written = pd.read_csv(out)
    assert KEYS <= set(written.columns) and len(written) == 36


def test_plots_are_written(tmp_path, capsys):
    demo = pd.read_csv(DATA / "kinetics" / "avrami_reconstructed_curves.csv")
    src = tmp_path / "demo.csv"
    demo[demo["material"] == demo["material"].iloc[0]].head(21).to_csv(src, index=False)
    code, _, err = run(["jmak", "fit", str(src), "--out", str(tmp_path / "fits.csv"),
                        "--plot", str(tmp_path / "fits.png")], capsys)
    assert code == 0, err
    for name in ("fits.png", "fits_avrami.png", "fits_arrhenius.png"):
        assert (tmp_path / name).stat().st_size > 10_000
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_fit_t0_and_time_unit(tmp_path, capsys):
    t_min = np.array([0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0])
    f = np.where(t_min > 1.0, 1 - np.exp(-((0.25 * (t_min - 1.0)) ** 2)), 0.0)
    src = tmp_path / "m.csv"
    pd.DataFrame({"time": t_min, "fraction": f}).to_csv(src, index=False)
    code, stdout, _ = run(["jmak", "fit", str(src), "--time-unit", "min", "--fit-t0",
                           "--out", str(tmp_path / "o.csv"), "--json"], capsys)
    assert code == 0
    [row] = json.loads(stdout)
    assert math.isclose(row["t0_s"], 60.0, rel_tol=1e-5)
    assert math.isclose(row["k_per_s"], 0.25 / 60.0, rel_tol=1e-5)


@pytest.mark.shared_data
def test_tungsten_every_curve_converges(tmp_path, capsys):
    src = shared_dataset("kinetics/tungsten_recrystallization.csv")
    code, stdout, err = run(["jmak", "fit", str(src), "--fraction-tolerance", "0.15",
                             "--allow-negative-time", "--out", str(tmp_path / "w.csv"),
                             "--json"], capsys)
    assert code == 0, err
    rows = json.loads(stdout)
    assert len(rows) == 25 and all(r["converged"] for r in rows)
    assert "negative times kept" in err


@pytest.mark.shared_data
def test_tungsten_arrhenius_per_grade(tmp_path, capsys):
    df = pd.read_csv(shared_dataset("kinetics/tungsten_recrystallization.csv"))
    src = tmp_path / "lopez.csv"
    df[df.dataset_id.isin(["W_Lopez2015_MR", "W_Richou2020_A"])].to_csv(src, index=False)
    code, stdout, err = run(["jmak", "fit", str(src), "--arrhenius", "--fraction-tolerance",
                             "0.01", "--allow-negative-time", "--out", str(tmp_path / "a.csv"),
                             "--plot", str(tmp_path / "a.png"), "--json"], capsys)
    assert code == 0, err
    rows = json.loads(stdout)
    assert len(rows) == 10
    assert KEYS | {"ln_k0", "ln_k0_se", "Q_kJ_per_mol", "Q_kJ_per_mol_se", "temperature_K"} \
        <= set(rows[0])
    for r in rows:
        assert r["converged"] and 200 < r["Q_kJ_per_mol"] < 1500
    assert (tmp_path / "a_arrhenius.png").exists()


@pytest.mark.shared_data
def test_bainite_needs_fit_fmax(tmp_path, capsys):
    src = shared_dataset("kinetics/bainite_dilatometry.csv")
    base = ["jmak", "fit", str(src), "--fraction-tolerance", "0.01", "--json"]
    _, out_plain, _ = run(base + ["--out", str(tmp_path / "p.csv")], capsys)
    code, out_free, err = run(base + ["--fit-fmax", "--out", str(tmp_path / "f.csv")], capsys)
    assert code == 0, err
    plain, free = json.loads(out_plain)[0], json.loads(out_free)[0]
    assert free["converged"] and 0.6 < free["f_max"] < 0.72
    assert free["rmse"] < 0.5 * plain["rmse"]


def test_prior_for_another_model_is_refused_and_prior_allows_two_points(tmp_path, capsys):
    from matmeta.models.parametric import Prior

    src = tmp_path / "two.csv"
    pd.DataFrame({"time_s": [300.0, 900.0], "fraction": [0.2, 0.8]}).to_csv(src, index=False)
    Prior.from_std("arrhenius_jmak", ["ln_k0", "Q_kJ_per_mol", "ln_n"], [20, 300, 0.5],
                   [5, 100, 0.5]).save(tmp_path / "wrong.json")
    out = tmp_path / "o.csv"
    code, _, err = run(["jmak", "fit", str(src), "--prior", str(tmp_path / "wrong.json"),
                        "--out", str(out)], capsys)
    assert code == 2 and "prior is for model 'arrhenius_jmak', not 'jmak'" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    code, _, err = run(["jmak", "fit", str(src), "--fit-fmax", "--out", str(out)], capsys)
    assert code == 2 and "2 points for 3 free parameters" in err and not out.exists()
    Prior.from_std("jmak", ["ln_k", "ln_n"], [math.log(1e-3), 0.5], [2.0, 0.5]) \
        .save(tmp_path / "p.json")
    code, stdout, err = run(["jmak", "fit", str(src), "--prior", str(tmp_path / "p.json"),
                             "--out", str(out), "--json"], capsys)
    assert code == 0 and json.loads(stdout)[0]["converged"]


BAD = [
    ("time_s,fraction\n1,0.1\n2,1.4\n3,0.9\n", "row 3, column 'fraction': fraction 1.4 outside"),
    ("time_s,fraction\n1,0.1\n2,\n3,0.9\n", "row 3, column 'fraction': missing value"),
    ("time_s,fraction\n1,0.1\n-2,0.5\n3,0.9\n", "row 3, column 'time_s': negative time"),
    ("time_s,fraction,temperature_K\n1,0.1,0\n2,0.5,0\n3,0.9,0\n",
     "row 2, column 'temperature_K': temperature 0 K"),
    ("time_s,frac\n1,0.1\n", "missing required column 'fraction'"),
    ("time,fraction\n1,0.1\n2,0.5\n", "column 'time': the time unit cannot be determined"),
    ("time_s,fraction\n1,0.4\n", "1 points for 2 free parameters"),
    ("time_s,fraction\n1,0.4\n2,0.4\n3,0.4\n", "all 3 fractions equal 0.4"),
    ("time_s,fraction\n1,0.1\n2,inf\n3,0.9\n", "row 3, column 'fraction': infinite value"),
]


@pytest.mark.parametrize("text,message", BAD)
def test_bad_input_one_line_error_and_nothing_written(tmp_path, capsys, text, message):
    src = tmp_path / "bad.csv"
    src.write_text(text)
    out, plot = tmp_path / "o.csv", tmp_path / "o.png"
    code, stdout, err = run(["jmak", "fit", str(src), "--out", str(out), "--plot", str(plot),
                             "--json"], capsys)
    assert code == 2
    assert message in err and str(src) in err
    assert len(err.strip().splitlines()) == 1 and stdout == ""
    assert not out.exists() and not plot.exists()
    assert list(tmp_path.iterdir()) == [src]


@pytest.mark.parametrize("out,plot,message", [
    ("o.csv", "o.txt", "o.txt: cannot write a figure as 'txt'; use one of"),
    ("afile/o.csv", None, "afile/o.csv: cannot write there: "),
    ("o.csv", "afile/o.png", "afile/o.png: cannot write there: "),
    ("sub", None, "sub: is a folder"),
])
def test_bad_output_names_refused_before_anything_is_written(tmp_path, capsys, out, plot,
                                                             message):
    """A figure format matplotlib does not write, or an output under a file, is refused up
    front (the table was once written before the figure failed with a traceback)."""
    src = tmp_path / "good.csv"
    src.write_text("time_s,fraction\n10,0.1\n20,0.3\n40,0.6\n80,0.9\n160,0.99\n")
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "sub").mkdir()
    before = sorted(tmp_path.iterdir())
    argv = ["jmak", "fit", str(src), "--out", str(tmp_path / out)]
    argv += [] if plot is None else ["--plot", str(tmp_path / plot)]
    code, stdout, err = run(argv, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert sorted(tmp_path.iterdir()) == before and not list((tmp_path / "sub").iterdir())


def test_folder_input_and_unsorted_times_said_once(tmp_path, capsys):
    code, _, err = run(["jmak", "fit", str(tmp_path), "--out", str(tmp_path / "o.csv")], capsys)
    assert code == 2 and f"{tmp_path}: is a folder; expected a CSV file" in err
    src = tmp_path / "unsorted.csv"
    src.write_text("time_s,fraction\n10,0.1\n40,0.6\n20,0.3\n80,0.9\n160,0.99\n")
    code, _, err = run(["jmak", "fit", str(src), "--out", str(tmp_path / "o.csv")], capsys)
    assert code == 0 and err.count("times are not in increasing order") == 1


def test_help_mentions_units(capsys):
    with pytest.raises(SystemExit):
        main(["jmak", "fit", "--help"])
    out = capsys.readouterr().out
    assert "k in 1/s" in out and "kJ/mol" in out and "--fit-fmax" in out


def test_group_by_and_unweighted(tmp_path, capsys):
    t = np.array([60.0, 120.0, 240.0, 480.0, 960.0])
    rows = []
    for lab, k in (("a", 1 / 200.0), ("b", 1 / 400.0)):
        for ti in t:
            rows.append({"lab": lab, "time_s": ti, "fraction": 1 - math.exp(-((k * ti) ** 1.5)),
                         "fraction_std": 0.02})
    src = tmp_path / "g.csv"
    pd.DataFrame(rows).to_csv(src, index=False)
    code, stdout, err = run(["jmak", "fit", str(src), "--group-by", "lab", "--unweighted",
                             "--out", str(tmp_path / "o.csv"), "--json"], capsys)
    assert code == 0, err
    out = json.loads(stdout)
    assert [r["lab"] for r in out] == ["a", "b"]
    assert math.isclose(out[1]["k_per_s"], 1 / 400.0, rel_tol=1e-6)
    code, _, err = run(["jmak", "fit", str(src), "--group-by", "nope", "--out",
                        str(tmp_path / "o2.csv")], capsys)
    assert code == 2 and "--group-by column 'nope' not in the table" in err


@pytest.mark.parametrize("fit_fmax", [False, True])
def test_arrhenius_rows_delta_method_matches_finite_differences(fit_fmax):
    """Each isotherm's k, n and t_half and their standard errors (delta method on the fit's
    covariance) against central finite differences of the closed forms
    ln k = ln k0 - Q/(R T), t_half = ln(2)^(1/n) / k."""
    import torch

    from matmeta.cli.jmak import _rows_arrhenius
    from matmeta.fitting import fit_curves
    from matmeta.models.parametric import ArrheniusJMAK

    rng = np.random.default_rng(3)
    temps = [900.0, 950.0, 1000.0]
    ln_k0, q, n, r = 20.0, 250.0, 1.6, 8.314462618
    rows = []
    for temp in temps:
        k = math.exp(ln_k0 - q * 1e3 / (r * temp))
        t = np.geomspace(0.1, 10.0, 9) / k
        f = 0.8 if fit_fmax else 1.0
        frac = f * -np.expm1(-(k * t) ** n) + rng.normal(0, 0.01, t.size)
        rows += [{"time_s": a, "temperature_K": temp, "fraction": b}
                 for a, b in zip(t, frac, strict=True)]
    cur = pd.DataFrame(rows)
    model = ArrheniusJMAK(fit_fmax=fit_fmax)
    x = np.stack([cur["time_s"].to_numpy(), cur["temperature_K"].to_numpy()], -1)
    res = fit_curves(model, [x], [cur["fraction"].to_numpy()])
    out = _rows_arrhenius(None, [({"grade": "A"}, cur)], res, model)
    assert [o["temperature_K"] for o in out] == temps
    theta, cov = res.theta[0].double(), res.cov[0].double()
    names = model.flat_names

    def closed(th, temp):
        lk = th[names.index("ln_k0")] - th[names.index("Q_kJ_per_mol")] * 1e3 / (r * temp)
        ln_n = th[names.index("ln_n")]
        return torch.stack([lk, ln_n, math.log(math.log(2.0)) / torch.exp(ln_n) - lk])

    for o, temp in zip(out, temps, strict=True):
        val = closed(theta, temp)
        h = 1e-6
        jac = torch.stack([(closed(theta + h * e, temp) - closed(theta - h * e, temp)) / (2 * h)
                           for e in torch.eye(len(theta), dtype=theta.dtype)], -1)
        var = jac @ cov @ jac.T
        assert o["k_per_s"] == pytest.approx(math.exp(val[0]), rel=1e-12)
        assert o["n"] == pytest.approx(math.exp(val[1]), rel=1e-12)
        assert o["t_half_s"] == pytest.approx(math.exp(val[2]), rel=1e-12)
        assert o["k_per_s_se"] == pytest.approx(math.exp(val[0]) * float(var[0, 0]) ** 0.5,
                                                rel=1e-6)
        assert o["n_se"] == pytest.approx(math.exp(val[1]) * float(var[1, 1]) ** 0.5, rel=1e-6)
        assert o["t_half_s_se"] == pytest.approx(math.exp(val[2]) * float(var[2, 2]) ** 0.5,
                                                 rel=1e-6)
        assert o["nk_correlation"] == pytest.approx(
            float(var[0, 1] / (var[0, 0] * var[1, 1]) ** 0.5), abs=1e-6)
        assert o["Q_kJ_per_mol"] == pytest.approx(float(theta[names.index("Q_kJ_per_mol")]))
    assert abs(out[0]["Q_kJ_per_mol"] - q) < 0.1 * q and abs(out[0]["n"] - n) < 0.2 * n


def test_arrhenius_one_isotherm_needs_a_prior(tmp_path, capsys):
    """One isotherm under --arrhenius: refused without a prior (Q is not in the points), the
    MAP fit under an Arrhenius prior (Q close to the prior's, k at the points' temperature)."""
    from matmeta.models.parametric import ArrheniusJMAK, Prior

    model = ArrheniusJMAK()
    Prior.from_std("arrhenius_jmak", model.flat_names, [28.0, 250.0, 0.7], [3.0, 50.0, 0.5],
                   noise_std=0.03, model_config=model.config()).save(tmp_path / "arr.json")
    src = tmp_path / "one.csv"
    src.write_text("time_s,temperature_K,fraction\n100,1000,0.05\n1000,1000,0.4\n"
                   "5000,1000,0.9\n")
    base = ["jmak", "fit", str(src), "--arrhenius", "--out", str(tmp_path / "o.csv"), "--json"]
    code, _, err = run(base, capsys)
    assert code == 2 and "or give an Arrhenius --prior" in err
    code, out, err = run([*base, "--prior", str(tmp_path / "arr.json")], capsys)
    assert code == 0, err
    row = json.loads(out)[0]
    assert row["temperature_K"] == 1000.0 and row["converged"]
    assert abs(row["Q_kJ_per_mol"] - 250.0) < 60.0
    # k at 1000 K is what the points say: t_half between the 0.05 and 0.9 points
    assert 100.0 < row["t_half_s"] < 5000.0


def test_report_folder_of_the_users_is_refused_before_anything_is_written(tmp_path, capsys):
    """--report names a folder holding the user's file: refused first (the table and plots
    were once written before the refusal), the message naming --report."""
    src = tmp_path / "three.csv"
    src.write_text("time_s,fraction\n300,0.1\n600,0.3\n1500,0.8\n")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    out, plot = tmp_path / "fit.csv", tmp_path / "fit.png"
    code, _, err = run(["jmak", "fit", str(src), "--prior", str(tmp_path / "p.json"), "--out",
                        str(out), "--plot", str(plot), "--report", str(mine)], capsys)
    assert code == 2 and "choose another --report" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not plot.exists() and (mine / "notes.txt").read_text() == "mine"
