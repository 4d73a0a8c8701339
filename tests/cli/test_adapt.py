"""`matmeta meta-train --model composition`, `matmeta adapt` and `matmeta predict --model adapted/`
end to end, and their one-line errors with nothing half-written."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest
import torch

from matmeta.cli.main import main
from matmeta.models._composition import UnknownElementWarning
from matmeta.workflows._adapt import load_adapted
from tests.workflows.test_adapt_predict import write_alloys

FAST = ["--k-shot", "3", "--q-query", "3", "--meta-batch", "4", "--steps", "4",
        "--inner-steps", "2", "--hidden", "8", "--val-every", "2", "--threads", "1",
        "--device", "cpu", "--no-progress", "--test-families", "Co-Ni-Ti"]


def _meta_train(data, out, *extra):
    return main(["meta-train", "--model", "composition", "--data", str(data), "--target",
                 "strength_MPa", "--composition-column", "formula", "--process-columns", "T_C",
                 "--out", str(out), *FAST, *extra])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = write_alloys(root / "alloys.csv")
    df = pd.read_csv(data)
    held = df["formula"].str.match(r"Co[\d.]+Ni[\d.]+Ti")
    df[held].head(5).to_csv(root / "lab.csv", index=False)
    pd.DataFrame({"formula": ["Co0.2Ni0.2Ti0.6", "Co0.6Ni0.3Ti0.1", "Al0.5Cr0.5"],
                  "T_C": [25, 25, 400]}).to_csv(root / "cands.csv", index=False)
    assert _meta_train(data, root / "meta.pt") == 0
    assert _meta_train(data, root / "ens.pt", "--members", "2") == 0
    return root


def test_meta_train_records_how_to_read_tables(files):
    raw = torch.load(files / "meta.pt", weights_only=True)
    spec = raw["extra"]["data_spec"]
    assert spec["kind"] == "composition" and spec["composition_column"] == "formula"
    assert [p["column"] for p in spec["process"]] == ["T_C"]
    assert "Co-Ni-Ti" in raw["extra"]["families"]["test"]
    # the test system's elements are all known, but the vocabulary is the meta-train families'
    assert raw["model_config"]["elements"] == ["Al", "Ti", "Cr", "Fe", "Co", "Ni"]
    assert "Co-Ni-Ti" not in raw["extra"]["family_index"]["names"]
    ens = torch.load(files / "ens.pt", weights_only=True)
    assert ens["matmeta_kind"] == "ensemble"


def test_adapt_then_predict_folder_and_csv(files, tmp_path, capsys):
    out = tmp_path / "adapted"
    assert main(["adapt", "--model", str(files / "meta.pt"), "--support",
                 str(files / "lab.csv"), "--out", str(out), "--threads", "1"]) == 0
    assert "leave-one-out MAE" in capsys.readouterr().out
    assert (out / "adapted.pt").is_file() and (out / "report.md").is_file()
    screen = tmp_path / "screen"
    assert main(["predict", "--model", str(out), "--candidates", str(files / "cands.csv"),
                 "--goal", "min", "--out", str(screen), "--threads", "1"]) == 0
    ranked = pd.read_csv(screen / "ranked.csv")
    assert ranked["rank"].tolist() == [1, 2, 3]
    assert ranked["strength_MPa"].is_monotonic_increasing
    assert {"ranked.png", "report.md"} <= {p.name for p in screen.iterdir()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownElementWarning)
        direct = load_adapted(out).predict(files / "cands.csv", goal="min")
    direct = direct.sort_values("rank").reset_index(drop=True)
    pd.testing.assert_series_equal(ranked["strength_MPa"], direct["strength_MPa"])
    assert ranked["nearest_family"].notna().all()
    csv = tmp_path / "ranked.csv"
    assert main(["predict", "--model", str(out), "--candidates", str(files / "cands.csv"),
                 "--goal", "500", "--out", str(csv), "--threads", "1"]) == 0
    assert len(pd.read_csv(csv)) == 3


def test_ensemble_gives_intervals(files, tmp_path):
    out = tmp_path / "adapted"
    assert main(["adapt", "--model", str(files / "ens.pt"), "--support",
                 str(files / "lab.csv"), "--out", str(out), "--threads", "1"]) == 0
    csv = tmp_path / "ranked.csv"
    assert main(["predict", "--model", str(out), "--candidates", str(files / "cands.csv"),
                 "--uncertainty", "--out", str(csv), "--threads", "1"]) == 0
    ranked = pd.read_csv(csv)
    assert (ranked["strength_MPa_low90"] < ranked["strength_MPa"]).all()
    assert (ranked["strength_MPa"] < ranked["strength_MPa_high90"]).all()
    assert (ranked["strength_MPa_std"] > 0).all()


def _fails(argv, capsys, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert match in err, err


def test_bad_support_is_one_line_and_writes_nothing(files, tmp_path, capsys):
    bad = tmp_path / "lab.csv"
    bad.write_text("formula,T_C,strength_MPa\nCo0.5Ni0.5,25,500\nCo0.5Ni,25,\n")
    args = ["adapt", "--model", str(files / "meta.pt"), "--support", str(bad), "--out",
            str(tmp_path / "adapted"), "--threads", "1"]
    _fails(args, capsys, "row 3, column 'strength_MPa': empty target")
    bad.write_text("formula,T_C,strength_MPa\nCo0.5Ni0.5,25,500\nCo0.5Qq1,25,510\n")
    _fails(args, capsys, "row 3, column 'formula'")
    bad.write_text("formula,T_C,yield\nCo0.5Ni0.5,25,500\n")
    _fails(args, capsys, "no column 'strength_MPa'")
    bad.write_text("formula,strength_MPa\nCo0.5Ni0.5,500\n")
    _fails(args, capsys, "no column 'T_C'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab.csv"]


def test_bad_candidates_and_uncertainty_from_one_model(files, tmp_path, capsys):
    out = tmp_path / "adapted"
    assert main(["adapt", "--model", str(files / "meta.pt"), "--support",
                 str(files / "lab.csv"), "--out", str(out), "--threads", "1",
                 "--no-loo", "--no-plots"]) == 0
    capsys.readouterr()
    empty = tmp_path / "empty.csv"
    empty.write_text("formula,T_C\n")
    screen = tmp_path / "screen"
    _fails(["predict", "--model", str(out), "--candidates", str(empty), "--out", str(screen)],
           capsys, "no data rows")
    _fails(["predict", "--model", str(out), "--candidates", str(files / "cands.csv"),
            "--uncertainty", "--out", str(screen)], capsys, "uncertainty needs an ensemble")
    _fails(["predict", "--model", str(out), "--candidates", str(files / "cands.csv"),
            "--goal", "highest"], capsys, "--goal 'highest'")
    _fails(["predict", "--model", str(files / "meta.pt"), "--candidates",
            str(files / "cands.csv")], capsys, "--candidates is for adapted models")
    assert not screen.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_help_explains_units_and_outputs(capsys):
    with pytest.raises(SystemExit):
        main(["adapt", "--help"])
    text = capsys.readouterr().out
    assert "leave-one-out" in text and "units" in text
    with pytest.raises(SystemExit):
        main(["meta-train", "--help"])
    assert "--members" in capsys.readouterr().out


def test_outputs_never_replace_a_users_folder_or_the_model(files, tmp_path, capsys):
    mine = tmp_path / "mywork"
    mine.mkdir()
    (mine / "notes.txt").write_text("important")
    assert main(["adapt", "--model", str(files / "meta.pt"), "--support",
                 str(files / "lab.csv"), "--out", str(mine), "--threads", "1"]) == 2
    assert "not written by matmeta" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    adapted = tmp_path / "adapted"
    assert main(["adapt", "--model", str(files / "meta.pt"), "--support",
                 str(files / "lab.csv"), "--out", str(adapted), "--threads", "1"]) == 0
    capsys.readouterr()
    for argv, says in ((["--out", str(adapted)], "own folder"),
                       (["--out", str(tmp_path / "screen"), "--json"], "--json with the folder")):
        assert main(["predict", "--model", str(adapted), "--candidates",
                     str(files / "cands.csv"), *argv, "--threads", "1"]) == 2
        err = capsys.readouterr().err.strip()
        assert says in err and len(err.splitlines()) == 1
    assert (adapted / "adapted.pt").is_file() and not (tmp_path / "screen").exists()
    assert main(["predict", "--model", str(adapted), "--candidates", str(files / "cands.csv"),
                 "--out", str(tmp_path / "r.json"), "--json", "--threads", "1"]) == 0
    import json

    assert len(json.loads((tmp_path / "r.json").read_text())["predictions"]) == 3


def test_evaluation_lambda_is_read_per_fold_with_inf_for_no_offset():
    from matmeta.errors import InputError
    from matmeta.workflows._adapt import evaluation_shrinkage

    def table(chosen):
        return pd.DataFrame({"k": [2, 5], "method": ["offset", "offset"],
                             "chosen": ["0.5", chosen]})

    assert evaluation_shrinkage(table('"inf"'), 5) == float("inf")
    assert evaluation_shrinkage(table("10.0;2.0;3.0"), 5) == 3.0     # the median over folds
    assert evaluation_shrinkage(table("1.0"), 2) == 0.5              # the nearest k
    with pytest.raises(InputError, match="cannot read the offset lambda"):
        evaluation_shrinkage(table("lots"), 5)


def test_rerun_keeps_a_users_file_and_replaces_only_with_overwrite(files, tmp_path, capsys):
    out = tmp_path / "adapted"
    base = ["adapt", "--model", str(files / "meta.pt"), "--support", str(files / "lab.csv"),
            "--out", str(out), "--threads", "1", "--no-loo", "--no-plots"]
    assert main([*base, "--steps", "1"]) == 0
    written = sorted(p.name for p in out.iterdir())
    (out / "my_notes.txt").write_text("mine")
    capsys.readouterr()
    for extra in ([], ["--overwrite"]):            # the reviewer's re-run, and with --overwrite
        _fails([*base, *extra], capsys, "holds my_notes.txt, which matmeta did not write")
        assert (out / "my_notes.txt").read_text() == "mine"
        assert sorted(p.name for p in out.iterdir()) == sorted([*written, "my_notes.txt"])
    (out / "my_notes.txt").unlink()
    _fails(base, capsys, "pass --overwrite")
    assert load_adapted(out).settings.eval_inner_steps == 1
    assert main([*base, "--steps", "3", "--overwrite"]) == 0
    assert load_adapted(out).settings.eval_inner_steps == 3       # replaced whole
    assert sorted(p.name for p in out.iterdir()) == written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapted"]   # no staging left


def test_predict_folder_is_replaced_only_with_overwrite(files, tmp_path, capsys):
    out = tmp_path / "adapted"
    assert main(["adapt", "--model", str(files / "meta.pt"), "--support",
                 str(files / "lab.csv"), "--out", str(out), "--threads", "1", "--no-loo",
                 "--no-plots"]) == 0
    screen = tmp_path / "screen"
    args = ["predict", "--model", str(out), "--candidates", str(files / "cands.csv"),
            "--out", str(screen), "--threads", "1"]
    assert main(args) == 0
    capsys.readouterr()
    _fails(args, capsys, "pass --overwrite")
    (screen / "picked.csv").write_text("my choice")
    _fails([*args, "--overwrite"], capsys, "holds picked.csv")
    (screen / "picked.csv").unlink()
    assert main([*args, "--overwrite", "--goal", "min"]) == 0
    assert pd.read_csv(screen / "ranked.csv")["strength_MPa"].is_monotonic_increasing
