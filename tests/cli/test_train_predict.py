"""`matmeta train` and `matmeta predict` end to end on real crystals (ASE's Delta-codes set)."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
import torch
from ase.collections import dcdft
from ase.io import write

from matmeta.cli.main import main
from matmeta.training import load_predictor, predict_structures

# Small, quick cells (1-2 atoms) spanning the s, p and d blocks, with their WIEN2k moduli (GPa).
ELEMENTS = ["Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt", "Fe", "W", "Mo", "Cr", "V", "Nb", "Ta",
            "Li", "Na", "K", "Mg", "Ca", "Ti", "Zr", "Si", "Ge", "C"]
BLOCK = {"Li": "s", "Na": "s", "K": "s", "Mg": "s", "Ca": "s", "Al": "p", "Si": "p", "Ge": "p",
         "C": "p"}
FAST = ["--epochs", "3", "--hidden", "12", "--n-conv", "1", "--workers", "1", "--quiet",
        "--device", "cpu", "--threads", "1", "--cutoff", "6", "--max-neighbors", "8",
        "--n-basis", "12"]


def cif_text(atoms) -> str:
    buf = io.BytesIO()
    write(buf, atoms, format="cif")
    return buf.getvalue().decode()


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    rows = [{"name": el, "cif": cif_text(dcdft[el]), "bulk_modulus_GPa": dcdft.data[el]["wien2k_B"],
             "block": BLOCK.get(el, "d")} for el in ELEMENTS]
    path = tmp_path_factory.mktemp("data") / "moduli.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def trained(table, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "model.pt"
    rc = main(["train", "--data", str(table), "--target", "bulk_modulus_GPa", "--log-target",
               "--family-column", "block", "--id-column", "name", "--out", str(out),
               "--metrics", str(out.with_suffix(".json")), *FAST])
    assert rc == 0
    return out


def test_train_writes_a_checkpoint_plots_and_metrics(trained):
    assert trained.is_file()
    for suffix in ("_parity.png", "_loss.png"):
        png = trained.with_name(trained.stem + suffix)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    raw = torch.load(trained, weights_only=True)
    assert raw["matmeta_kind"] == "model"
    assert raw["extra"]["featurizer_settings"]["cutoff"] == 6.0
    assert raw["extra"]["featurizer_settings"]["max_neighbors"] == 8
    metrics = json.loads(trained.with_suffix(".json").read_text())["metrics"]
    assert metrics["train"]["n"] + metrics["val"]["n"] + metrics["test"]["n"] == len(ELEMENTS)
    pred = load_predictor(trained)
    assert pred.target == "bulk_modulus_GPa" and pred.transform.kind == "log10_standardize"
    # The stored transform is fitted on the training split: log10 moduli of real elements.
    assert 0.5 < pred.transform.mean < 2.5


def test_predict_files_and_folders_in_target_units(trained, tmp_path):
    folder = tmp_path / "candidates"
    folder.mkdir()
    for el in ("Cu", "W", "Si"):
        write(folder / f"{el}.cif", dcdft[el], format="cif")
    write(tmp_path / "POSCAR", dcdft["Al"], format="vasp")
    out = tmp_path / "preds.csv"
    assert main(["predict", "--model", str(trained), str(folder), str(tmp_path / "POSCAR"),
                 "--out", str(out), "--workers", "1", "--quiet", "--device", "cpu"]) == 0
    df = pd.read_csv(out)
    assert list(df.columns) == ["structure", "bulk_modulus_GPa"]
    assert len(df) == 4 and (df["bulk_modulus_GPa"] > 0).all()
    assert df["structure"].str.contains("W.cif").any()
    # Same numbers as the library, from the structures themselves (not the files).
    lib = predict_structures(trained, [dcdft[el] for el in ("Cu", "Si", "W", "Al")])
    by_name = dict(zip(df["structure"], df["bulk_modulus_GPa"], strict=True))
    got = [next(v for k, v in by_name.items() if k.endswith(n))
           for n in ("Cu.cif", "Si.cif", "W.cif", "POSCAR")]
    np.testing.assert_allclose(got, lib, rtol=1e-5)


def test_predict_table_as_json(trained, table, tmp_path):
    out = tmp_path / "preds.json"
    assert main(["predict", "--model", str(trained), "--table", str(table), "--id-column",
                 "name", "--json", "--out", str(out), "--workers", "1", "--quiet"]) == 0
    doc = json.loads(out.read_text())
    assert doc["target"] == "bulk_modulus_GPa"
    assert [r["name"] for r in doc["predictions"]] == ELEMENTS


def test_family_split_trains(table, tmp_path):
    out = tmp_path / "fam.pt"
    assert main(["train", "--data", str(table), "--target", "bulk_modulus_GPa",
                 "--family-column", "block", "--split", "family", "--no-plots",
                 "--out", str(out), *FAST]) == 0
    info = load_predictor(out).info
    assert info["split"] == "family" and info["n_samples"]["test"] > 0


def _error(capsys, argv) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_input_gives_one_line_errors(table, trained, tmp_path, capsys):
    df = pd.read_csv(table)
    df.loc[3, "bulk_modulus_GPa"] = np.nan
    nan_table = tmp_path / "nan.csv"
    df.to_csv(nan_table, index=False)
    err = _error(capsys, ["train", "--data", str(nan_table), "--target", "bulk_modulus_GPa",
                          "--out", str(tmp_path / "m.pt"), *FAST])
    assert "row 5" in err and "bulk_modulus_GPa" in err        # 0-based data row 3 + header
    assert not (tmp_path / "m.pt").exists()

    err = _error(capsys, ["train", "--data", str(table), "--target", "K", "--out",
                          str(tmp_path / "m.pt"), *FAST])
    assert "'K'" in err

    df = pd.read_csv(table)
    df.loc[5, "bulk_modulus_GPa"] = -1.0
    neg = tmp_path / "neg.csv"
    df.to_csv(neg, index=False)
    err = _error(capsys, ["train", "--data", str(neg), "--target", "bulk_modulus_GPa",
                          "--log-target", "--out", str(tmp_path / "m.pt"), *FAST])
    assert "row 7" in err and "log10" in err

    empty = tmp_path / "empty"
    empty.mkdir()
    err = _error(capsys, ["predict", "--model", str(trained), str(empty), "--quiet"])
    assert "empty" in err

    err = _error(capsys, ["predict", "--model", str(trained), "--cutoff", "5",
                          str(tmp_path), "--quiet"])
    assert "'cutoff'" in err and "6.0" in err and "5.0" in err

    err = _error(capsys, ["predict", "--model", str(tmp_path / "missing.pt"), str(empty)])
    assert "missing.pt" in err


def test_train_on_a_builtin_dataset(tmp_path, capsys):
    out = tmp_path / "emt.pt"
    assert main(["train", "--builtin", "emt_binary_alloys", "--log-target", "--split", "family",
                 "--epochs", "2", "--no-plots", "--out", str(out), *FAST[2:]]) == 0
    printed = capsys.readouterr().out
    assert "154 structures" in printed and "log10: MAE=" in printed
    pred = load_predictor(out)
    assert pred.target == "bulk_modulus_GPa" and pred.info["data"] == "emt_binary_alloys"


def _predict_stderr(capsys, argv) -> str:
    import warnings

    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("always")        # every run warns, as in a fresh process
        assert main(argv) == 0
    return capsys.readouterr().err


def test_predict_warns_once_naming_elements_unseen_in_training(trained, tmp_path, capsys):
    pred = load_predictor(trained)
    # one structure per element: the training split's elements are exactly what it recorded
    assert pred.elements is not None and set(pred.elements) < set(ELEMENTS)
    assert len(pred.elements) == pred.info["n_samples"]["train"]
    seen = pred.elements[0]
    folder = tmp_path / "cands"
    folder.mkdir()
    write(folder / f"{seen}.cif", dcdft[seen], format="cif")
    args = ["predict", "--model", str(trained), str(folder), "--out", str(tmp_path / "p.csv"),
            "--workers", "1", "--quiet", "--device", "cpu"]
    err = _predict_stderr(capsys, args)
    assert "never seen" not in err and "warning" not in err
    for el in ("He", "Xe"):                     # noble gases: in no training split
        write(folder / f"{el}.cif", dcdft[el], format="cif")
    err = _predict_stderr(capsys, args)
    lines = [line for line in err.splitlines() if "warning" in line]
    assert len(lines) == 1, err
    assert "element(s) He, Xe never seen in training" in lines[0]
    assert "2 of 3 structure(s)" in lines[0] and "He.cif" in lines[0]
    assert len(pd.read_csv(tmp_path / "p.csv")) == 3          # predicted all the same


def test_checkpoint_without_training_elements_predicts_without_warning(trained, tmp_path,
                                                                        capsys):
    raw = torch.load(trained, weights_only=True)
    del raw["extra"]["train_elements"]          # as written before elements were recorded
    old = tmp_path / "old.pt"
    torch.save(raw, old)
    assert load_predictor(old).elements is None
    write(tmp_path / "He.cif", dcdft["He"], format="cif")
    err = _predict_stderr(capsys, ["predict", "--model", str(old), str(tmp_path / "He.cif"),
                                   "--out", str(tmp_path / "p.csv"), "--workers", "1",
                                   "--quiet"])
    assert "never seen" not in err
    assert len(pd.read_csv(tmp_path / "p.csv")) == 1


def test_train_never_replaces_a_file_without_overwrite(table, trained, tmp_path, capsys):
    mine = tmp_path / "model.pt"
    mine.write_text("my notes, not a checkpoint")
    err = _error(capsys, ["train", "--data", str(table), "--target", "bulk_modulus_GPa",
                          "--out", str(mine), *FAST])
    assert "--out" in err and "exists" in err and "--overwrite" in err
    assert mine.read_text() == "my notes, not a checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]   # no plots either
    plot = tmp_path / "parity.png"
    plot.write_text("mine too")
    err = _error(capsys, ["train", "--data", str(table), "--target", "bulk_modulus_GPa",
                          "--out", str(tmp_path / "new.pt"), "--plot", str(plot), *FAST])
    assert "--plot" in err and plot.read_text() == "mine too"
    # the training table itself is never an output, --overwrite or not
    err = _error(capsys, ["train", "--data", str(table), "--target", "bulk_modulus_GPa",
                          "--out", str(tmp_path / "new.pt"), "--metrics", str(table),
                          "--overwrite", *FAST])
    assert "training table" in err
    assert pd.read_csv(table)["name"].tolist() == ELEMENTS
    # an earlier checkpoint is replaced when asked
    again = tmp_path / "again.pt"
    again.write_bytes(trained.read_bytes())
    assert main(["train", "--data", str(table), "--target", "bulk_modulus_GPa", "--no-plots",
                 "--out", str(again), "--overwrite", "--epochs", "1", *FAST[2:]]) == 0
    assert load_predictor(again).info["train_settings"]["epochs"] == 1


def test_predict_never_writes_over_its_input(trained, table, capsys):
    before = table.read_bytes()
    err = _error(capsys, ["predict", "--model", str(trained), "--table", str(table),
                          "--out", str(table), "--quiet"])
    assert "is an input of this command" in err
    assert table.read_bytes() == before
