"""``matmeta evaluate``: writes the table and the plot, ``--json`` parses, bad input is one line."""

import json

import numpy as np
import pandas as pd
import pytest

from matmeta.cli.main import main


def _feature_table(path, n_fam=6, size=10):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_fam):
        b = rng.normal()
        for _ in range(size):
            x = rng.uniform(-3, 3)
            rows.append({"family": f"F{i}", "x": x, "y_eV": 1.5 * np.sin(x) + b})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _kinetics_table(path, grades=4):
    rng = np.random.default_rng(1)
    rows = []
    t = np.logspace(1, 5, 8)
    for g in range(grades):
        for temp in (1400.0, 1500.0):
            lnk = -7 + rng.normal(0, 0.5) + (temp - 1400) / 100
            f = 1 - np.exp(-np.exp(2.0 * (lnk + np.log(t)))) + rng.normal(0, 0.02, t.size)
            rows += [{"dataset_id": f"W{g}", "temperature_K": temp, "time_s": ti,
                      "fraction": float(np.clip(fi, 0, 1))} for ti, fi in zip(t, f, strict=True)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


FAST = ["--steps", "10", "--meta-batch", "3", "--k-shot", "2", "--q-query-train", "4",
        "--pretrain-steps", "20", "--repeats", "2", "--val-repeats", "1", "--bootstrap", "100",
        "--no-progress", "--threads", "1", "--device", "cpu"]


def test_json_table_csv_and_plot(tmp_path, capsys):
    data = _feature_table(tmp_path / "t.csv")
    out = tmp_path / "res.csv"
    rc = main(["evaluate", "--data", str(data), "--model", "mlp", "--target", "y_eV",
               "--features", "x", "--hidden", "8", "--test-families", "F0,F1",
               "--val-families", "F2", "--shots", "2,5", "--methods",
               "meta,pretrained,offset,scratch", "--out", str(out), "--json", *FAST])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    table = pd.DataFrame(doc["table"])
    assert set(table.method) == {"meta", "pretrained", "offset", "scratch"}
    assert sorted(set(table.k)) == [2, 5]
    assert doc["folds"][0]["test"] == ["F0", "F1"]
    csv = pd.read_csv(out)
    assert len(csv) == len(table) == 8
    np.testing.assert_allclose(csv.error, table.error)
    assert (csv.ci_low <= csv.error).all() and (csv.error <= csv.ci_high).all()
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_kinetics_table_with_independent_and_map_fits(tmp_path, capsys):
    data = _kinetics_table(tmp_path / "k.csv")
    out = tmp_path / "k_res.csv"
    rc = main(["evaluate", "--data", str(data), "--model", "jmak", "--test-families", "W0",
               "--val-families", "W1", "--shots", "2,3", "--methods", "meta,independent,map",
               "--out", str(out), "--plot", str(tmp_path / "k.png"), *FAST])
    assert rc == 0
    text = capsys.readouterr().out
    assert "independent" in text and "map" in text and "rmse" in text
    csv = pd.read_csv(out)
    assert set(csv.method) == {"meta", "independent", "map"}
    assert (tmp_path / "k.png").exists()
    # MAP's Laplace std is scored in the CSV, and the calibration plot is written beside it
    assert csv[csv.method == "map"][["crps", "coverage_50", "coverage_90"]].notna().all().all()
    assert csv[csv.method == "meta"][["crps", "coverage_90"]].isna().all().all()
    assert (tmp_path / "k_res_coverage.png").stat().st_size > 1000


@pytest.mark.parametrize("extra, message", [
    (["--shots", "50"], "k=50: no test family has more than 50 samples"),
    (["--methods", "meta,magic"], "unknown evaluation method 'magic'"),
    (["--algorithm", "mamal"], "unknown algorithm 'mamal'"),
    (["--methods", "gp"], "has no features(params, inputs)"),
    (["--test-families", "Nope"], "not among the families"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, extra, message):
    data = _feature_table(tmp_path / "t.csv")
    out = tmp_path / "res.csv"
    args = ["evaluate", "--data", str(data), "--model", "mlp", "--target", "y_eV",
            "--features", "x", "--hidden", "4", "--test-families", "F0", "--val-families",
            "F1", "--out", str(out), *FAST]
    rc = main(args + extra)
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and err.strip().count("\n") == 0
    assert not out.exists()


def test_a_run_with_no_task_writes_nothing(tmp_path, capsys):
    # JMAK has two parameters: an independent fit needs k >= 2, so at k=1 no task is scored
    data = _kinetics_table(tmp_path / "k.csv")
    out, plot, tasks = tmp_path / "r.csv", tmp_path / "r.png", tmp_path / "tasks.csv"
    rc = main(["evaluate", "--data", str(data), "--model", "jmak", "--test-families", "W0",
               "--val-families", "W1", "--shots", "1", "--methods", "independent",
               "--out", str(out), "--plot", str(plot), "--tasks-out", str(tasks), *FAST])
    err = capsys.readouterr().err
    assert rc == 2 and "no task could be evaluated" in err
    assert not out.exists() and not plot.exists() and not tasks.exists()
    assert list(tmp_path.iterdir()) == [data]


def test_alloy_rows_without_a_target_are_counted_in_the_notes(tmp_path, capsys):
    rng = np.random.default_rng(2)
    rows = []
    for a, b in (("Fe", "Ni"), ("Co", "Ni"), ("Cr", "Fe"), ("Co", "Fe")):
        for x in np.linspace(0.1, 0.9, 8):
            rows.append({"composition": f"{a}{x:.3f}{b}{1 - x:.3f}",
                         "YS_MPa": 300 + 200 * x + rng.normal(0, 5)})
    rows[3]["YS_MPa"] = rows[12]["YS_MPa"] = rows[20]["YS_MPa"] = None
    data = tmp_path / "alloys.csv"
    pd.DataFrame(rows).to_csv(data, index=False)
    rc = main(["evaluate", "--data", str(data), "--model", "mlp", "--target", "YS_MPa",
               "--composition-column", "composition", "--hidden", "4", "--test-families",
               "Fe-Ni", "--val-families", "Co-Ni", "--shots", "2", "--methods",
               "pretrained,offset", "--out", str(tmp_path / "a.csv"), "--json", *FAST])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert sum("3 row(s) with an empty 'YS_MPa' dropped" in n for n in doc["notes"]) == 1
    fold = doc["folds"][0]
    assert fold["target_transform"]["kind"] == "standardize"


def test_composition_model_matches_the_python_api(tmp_path, capsys):
    """`--model composition` reads the table as meta-train does and scores the heads' std."""
    import torch

    from matmeta.meta import MetaSettings, MetaTrainSettings, evaluate, load_families
    from matmeta.meta._evaluate import EvaluationSettings
    from matmeta.models._registry import build_model

    rng = np.random.default_rng(3)
    rows = []
    for a, b in (("Fe", "Ni"), ("Co", "Ni"), ("Cr", "Fe"), ("Co", "Fe"), ("Cr", "Ni")):
        for x in np.linspace(0.1, 0.9, 8):
            rows.append({"composition": f"{a}{x:.3f}{b}{1 - x:.3f}", "T_K": 300 + 100 * x,
                         "YS_MPa": 300 + 200 * x + rng.normal(0, 5)})
    data = tmp_path / "alloys.csv"
    pd.DataFrame(rows).to_csv(data, index=False)
    methods = "pretrained,offset,pretrained_bayes_linear"
    rc = main(["evaluate", "--data", str(data), "--model", "composition", "--target", "YS_MPa",
               "--composition-column", "composition", "--process-columns", "T_K",
               "--hidden", "8", "--test-families", "Fe-Ni", "--val-families", "Co-Ni",
               "--shots", "3", "--methods", methods, "--out", str(tmp_path / "a.csv"), "--json",
               *FAST])
    assert rc == 0
    cli = pd.DataFrame(json.loads(capsys.readouterr().out)["table"]).set_index("method")

    loaded = load_families(data, "composition", target="YS_MPa",
                           composition_column="composition", process_columns=["T_K"])
    model = build_model("composition", {
        "elements": sorted({e for fr in loaded.table["fractions"] for e in fr}),
        "process": loaded.spec["process"], "hidden": 8, "dtype": "float32"})
    settings = EvaluationSettings(shots=(3,), methods=tuple(methods.split(",")), repeats=2,
                                  val_repeats=1, bootstrap=100, pretrain_steps=20, seed=0)
    api = evaluate(model, loaded.families, test=["Fe-Ni"], val=["Co-Ni"], settings=settings,
                   meta_settings=MetaSettings(inner_lr=0.01),
                   meta_train_settings=MetaTrainSettings(steps=10, meta_batch=3, k_shot=2,
                                                         q_query=4, val_every=2, val_tasks=16,
                                                         checkpoint_every=10),
                   target_transform="standardize", device=torch.device("cpu")).table
    api = api.set_index("method")
    for m in methods.split(","):
        assert cli.loc[m, "error"] == pytest.approx(api.loc[m, "error"], rel=1e-6)
    # only the head has a predictive std, so only it has coverage
    assert 0.0 <= cli.loc["pretrained_bayes_linear", "coverage_90"] <= 1.0
    assert np.isnan(cli.loc["offset", "coverage_90"])
