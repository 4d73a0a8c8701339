"""`matmeta jmak fit --prior --report`: 2-3 points with a prior learned across the shipped polymer
series give the published half time; the report folder; bad input writes nothing."""

from __future__ import annotations

import pandas as pd
import pytest

from matmeta.bayes import learn_prior
from matmeta.cli.main import main
from matmeta.models.parametric import JMAK, Prior
from tests.helpers import DATA

CURVES = DATA / "kinetics" / "avrami_reconstructed_curves.csv"


@pytest.fixture(scope="module")
def held_out_and_prior(tmp_path_factory):
    """A prior learned on 35 of the 36 reconstructed curves; the 36th is the new sample."""
    df = pd.read_csv(CURVES)
    groups = list(df.groupby(["material", "temperature_K"]))
    (_, held), train = groups[0], groups[1:]
    fit = learn_prior(JMAK(), [g.time_s.to_numpy() for _, g in train],
                      [g.fraction.to_numpy() for _, g in train], noise_std=0.03)
    folder = tmp_path_factory.mktemp("prior")
    fit.prior.save(folder / "prior.json")
    return held, folder / "prior.json"


def test_two_points_with_prior_give_the_published_half_time_and_a_report(
        held_out_and_prior, tmp_path, capsys):
    held, prior = held_out_and_prior
    two = held.iloc[[1, 3]][["material", "temperature_K", "time_s", "fraction"]]
    two.to_csv(tmp_path / "two.csv", index=False)
    code = main(["jmak", "fit", str(tmp_path / "two.csv"), "--prior", str(prior), "--out",
                 str(tmp_path / "fit.csv"), "--report", str(tmp_path / "rep")])
    err = capsys.readouterr().err
    assert code == 0, err
    published = float(held["t_half_s_published"].iloc[0])
    fits = pd.read_csv(tmp_path / "fit.csv")
    assert fits["t_half_s"].iloc[0] == pytest.approx(published, rel=0.05)
    params = pd.read_csv(tmp_path / "rep" / "parameters.csv").set_index("quantity")
    row = params.loc["t_half_s"]
    assert row["posterior_low95"] < published < row["posterior_high95"]
    # the two points narrow the prior's interval of t_half by more than 10x
    assert (row["prior_high95"] / row["prior_low95"]) > 10 * (
        row["posterior_high95"] / row["posterior_low95"])
    # the command's table and the report agree on the MAP fit
    assert row["posterior"] == pytest.approx(fits["t_half_s"].iloc[0], rel=1e-6)
    assert len(pd.read_csv(tmp_path / "rep" / "influence.csv")) == 2
    assert "t_half_s =" in err and "rep" in err


def _fails(argv, capsys, text):
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and text in lines[0], err
    return lines[0]


def test_report_needs_a_prior_and_another_models_prior_is_refused(
        held_out_and_prior, tmp_path, capsys):
    held, _ = held_out_and_prior
    held[["time_s", "fraction"]].to_csv(tmp_path / "m.csv", index=False)
    _fails(["jmak", "fit", str(tmp_path / "m.csv"), "--out", str(tmp_path / "f.csv"),
            "--report", str(tmp_path / "rep")], capsys, "--report needs --prior")
    Prior.from_std("birch_murnaghan", ["ln_V0"], [3.0], [0.1]).save(tmp_path / "eos.json")
    _fails(["jmak", "fit", str(tmp_path / "m.csv"), "--prior", str(tmp_path / "eos.json"),
            "--out", str(tmp_path / "f.csv"), "--report", str(tmp_path / "rep")], capsys,
           "birch_murnaghan")
    assert not (tmp_path / "f.csv").exists() and not (tmp_path / "rep").exists()


def test_one_point_without_prior_is_refused(tmp_path, capsys):
    pd.DataFrame({"time_s": [100.0], "fraction": [0.4]}).to_csv(tmp_path / "one.csv",
                                                              index=False)
    line = _fails(["jmak", "fit", str(tmp_path / "one.csv"), "--out", str(tmp_path / "f.csv")],
                  capsys, "1 points for 2 free parameters")
    assert "row 2" in line and "--prior" in line
    assert not (tmp_path / "f.csv").exists()
