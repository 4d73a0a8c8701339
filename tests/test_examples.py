"""Every example runs end to end in its fast mode, and the demo runs in quick mode."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

from tests.helpers import ROOT

EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def _run(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_in_fast_mode(script, tmp_path):
    _run([str(script), "--fast", "--out", str(tmp_path / "out")], cwd=tmp_path)
    written = list((tmp_path / "out").iterdir())
    assert written, f"{script.name} wrote nothing"
    for csv in (tmp_path / "out").glob("*.csv"):
        assert len(pd.read_csv(csv)) > 0


def test_fit_example_recovers_published_parameters(tmp_path):
    _run([str(ROOT / "examples" / "fit_jmak_few_points.py"), "--out", str(tmp_path)],
         cwd=tmp_path)
    table = pd.read_csv(tmp_path / "comparison.csv").set_index("fit")
    published = table.loc["published"]
    for fit in ("3 points, no prior", "3 points, MAP with prior"):
        # 3 noisy points (std 0.03) pin the half time to within 10 % and n to within 25 %.
        assert abs(table.loc[fit, "t_half_s"] / published["t_half_s"] - 1) < 0.10
        assert abs(table.loc[fit, "n"] / published["n"] - 1) < 0.25


def test_demo_quick_writes_a_report(tmp_path):
    _run(["-m", "matmeta", "demo", "--quick", "--quiet", "--out", str(tmp_path / "demo"),
                 "--device", "cpu"], cwd=tmp_path)
    report = (tmp_path / "demo" / "report.md").read_text()
    for section in ("JMAK fits", "Meta-learning JMAK", "Which measurements drove",
                    "CGCNN property model", "A new alloy family", "JMAK from 3 points"):
        assert section in report
    fits = pd.read_csv(tmp_path / "demo" / "kinetics" / "fits.csv")
    assert len(fits) == 36 and fits["converged"].all()
    influence = pd.read_csv(tmp_path / "demo" / "explain" / "influence.csv")
    # the corrupted support point must be the most harmful one
    worst = influence.sort_values("query_loss").iloc[0]
    assert "corrupted" in str(worst.iloc[0])

    demo = tmp_path / "demo"
    # the alloy stage ranks the held-out system's 4 other compositions, best (max) first, with
    # intervals around each prediction
    ranked = pd.read_csv(demo / "alloys" / "screen" / "ranked.csv")
    t = "bulk_modulus_GPa"
    assert len(ranked) == 4 and list(ranked["rank"]) == [1, 2, 3, 4]
    assert (ranked[t].diff().dropna() <= 0).all()
    assert ((ranked[f"{t}_low90"] < ranked[t]) & (ranked[t] < ranked[f"{t}_high90"])).all()
    assert len(pd.read_csv(demo / "alloys" / "next.csv")) == 4
    # 3 noise-free points under the meta-learned prior recover the published half time
    fit = pd.read_csv(demo / "jmak_prior" / "fit.csv").iloc[0]
    src = pd.read_csv(ROOT / "data" / "kinetics" / "avrami_reconstructed_curves.csv")
    published = src[(src["material"] == fit["material"])
                    & (src["temperature_K"] == fit["temperature_K"])]["t_half_s_published"]
    assert abs(fit["t_half_s"] / published.iloc[0] - 1) < 0.10
    assert len(pd.read_csv(demo / "jmak_prior" / "report" / "influence.csv")) == 3


def test_demo_reruns_in_its_own_folder_and_refuses_a_users(tmp_path):
    """A second demo writes over the first's files (its sub-commands replace their own earlier
    outputs); a folder of the user's is refused before any stage runs, its files untouched."""
    from matmeta.cli.main import main

    demo = tmp_path / "demo"
    argv = ["demo", "--quick", "--quiet", "--stages", "kinetics,gnn", "--device", "cpu"]
    for _ in range(2):
        assert main([*argv, "--out", str(demo)]) == 0
    assert len(pd.read_csv(demo / "gnn" / "predictions.csv")) == 7
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my notes")
    assert main([*argv, "--out", str(mine)]) == 2
    assert (mine / "report.md").read_text() == "my notes" and len(list(mine.iterdir())) == 1
