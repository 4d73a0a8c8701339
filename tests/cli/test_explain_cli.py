"""`matmeta explain` end to end on a JMAK adaptation, checked against re-running the inner loop."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from matmeta.checkpoint import save_checkpoint
from matmeta.cli.main import main
from matmeta.meta import inner_loop
from matmeta.meta._algorithms import MetaSettings
from matmeta.meta._train import inner_record
from matmeta.models import Samples, sample_loss, save_model
from matmeta.models.parametric._jmak import JMAK

STEPS, LR = 300, 5.0


def _tables(tmp_path):
    model = JMAK()
    truth = model.from_physical(k_per_s=1e-3, n=2.0)
    t = torch.tensor([100.0, 300, 500, 700, 900, 1200, 1600, 2200, 3000], dtype=torch.float64)
    y = model.forward(truth, t)
    y[2] = 0.85  # a corrupted measurement
    pd.DataFrame({"id": [f"m{i}" for i in range(9)], "time_s": t.numpy(),
                  "fraction": y.numpy()}).to_csv(tmp_path / "support.csv", index=False)
    tq = torch.tensor([400.0, 800, 1400, 2600], dtype=torch.float64)
    pd.DataFrame({"time_s": tq.numpy(), "fraction": model.forward(truth, tq).numpy()}).to_csv(
        tmp_path / "query.csv", index=False)
    start = model.from_physical(k_per_s=5e-4, n=1.5)
    return model, start, Samples(t, y), Samples(tq, model.forward(truth, tq))


def _meta_checkpoint(tmp_path, model, start):
    settings = MetaSettings(algorithm="maml", inner_steps=5, inner_lr=LR, eval_inner_steps=STEPS)
    payload = {"model_name": model.name, "model_config": model.config(), "params": start,
               "meta_params": start, "inner": inner_record(settings, start),
               "meta_settings": settings.to_dict(),
               "extra": {"data": {"model_kind": "jmak", "options": {}}}}
    return save_checkpoint(tmp_path / "meta.pt", payload, kind="meta")


def test_explain_meta_checkpoint_json_matches_rerun_inner_loop(tmp_path, capsys):
    model, start, support, query = _tables(tmp_path)
    ckpt = _meta_checkpoint(tmp_path, model, start)
    rc = main(["explain", "--model", str(ckpt), "--support", str(tmp_path / "support.csv"),
               "--query", str(tmp_path / "query.csv"), "--target", "query_loss,n,t_half",
               "--check-loo", "--json", "--out", str(tmp_path / "influence.csv"),
               "--plot", str(tmp_path / "bars.png"), "--curve-plot", str(tmp_path / "fit.png"),
               "--threads", "1", "--no-progress"])
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["sample"] for r in rows] == [f"m{i}" for i in range(9)]
    for key in ("query_loss", "n", "t_half", "loo:query_loss", "spearman:query_loss",
                "pearson:n", "effect"):
        assert key in rows[0]
    # exact LOO = re-adapting without the row, written out directly with the inner loop
    full = inner_loop(model, start, support, steps=STEPS, lr=LR)
    base = float(sample_loss(model, full, query))
    for i in (0, 2, 5):
        keep = torch.arange(9) != i
        part = inner_loop(model, start, Samples(support.inputs[keep], support.y[keep]),
                          steps=STEPS, lr=LR)
        assert rows[i]["loo:query_loss"] == pytest.approx(
            float(sample_loss(model, part, query)) - base, rel=1e-6, abs=1e-12)
    worst = min(rows, key=lambda r: r["query_loss"])
    assert worst["sample"] == "m2" and worst["effect"] == "harmful"
    assert rows[0]["spearman:query_loss"] >= 0.9
    csv = pd.read_csv(tmp_path / "influence.csv")
    assert list(csv["sample"]) == [f"m{i}" for i in range(9)]
    np.testing.assert_allclose(csv["query_loss"], [r["query_loss"] for r in rows])
    assert (tmp_path / "bars.png").stat().st_size > 1000
    assert (tmp_path / "fit.png").stat().st_size > 1000


def test_explain_model_checkpoint_needs_inner_settings(tmp_path, capsys):
    model, start, _, _ = _tables(tmp_path)
    path = save_model(tmp_path / "jmak.pt", model, start)
    args = ["explain", "--model", str(path), "--support", str(tmp_path / "support.csv"),
            "--query", str(tmp_path / "query.csv"), "--out", str(tmp_path / "out.csv"),
            "--threads", "1", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "--inner-steps" in err and len(err.splitlines()) == 1
    assert main([*args, "--inner-steps", str(STEPS), "--inner-lr", str(LR),
                 "--estimator", "implicit"]) == 0
    out = pd.read_csv(tmp_path / "out.csv")
    assert out.loc[out["query_loss"].idxmin(), "sample"] == "m2"


def test_explain_bad_tables_one_line(tmp_path, capsys):
    model, start, _, _ = _tables(tmp_path)
    ckpt = _meta_checkpoint(tmp_path, model, start)
    pd.DataFrame({"t": [1.0], "fraction": [0.5]}).to_csv(tmp_path / "badq.csv", index=False)
    pd.DataFrame({"time_s": [], "fraction": []}).to_csv(tmp_path / "empty.csv", index=False)
    base = ["explain", "--model", str(ckpt), "--out", str(tmp_path / "o.csv"), "--threads", "1"]
    assert main([*base, "--support", str(tmp_path / "support.csv"),
                 "--query", str(tmp_path / "badq.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert "badq.csv" in err and "'time_s'" in err and len(err.splitlines()) == 1
    assert main([*base, "--support", str(tmp_path / "empty.csv"),
                 "--query", str(tmp_path / "support.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no rows" in err and len(err.splitlines()) == 1
    sup = pd.read_csv(tmp_path / "support.csv")
    sup.loc[0, "time_s"] = -5.0  # digitisation noise near t = 0
    sup.to_csv(tmp_path / "neg.csv", index=False)
    args = [*base, "--support", str(tmp_path / "neg.csv"), "--query", str(tmp_path / "query.csv")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "neg.csv, row 0, column 'time_s'" in err and "--allow-negative-time" in err
    assert main([*args, "--allow-negative-time"]) == 0
    capsys.readouterr()
    assert main([*base, "--support", str(tmp_path / "support.csv"), "--query",
                 str(tmp_path / "query.csv"), "--estimator", "implicit", "--inner-steps",
                 "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unrolled" in err and len(err.splitlines()) == 1


def test_explain_graph_model_from_structure_tables(tmp_path, capsys, dcdft_atoms):
    import io

    from ase.io import write

    from matmeta.graphs import FeaturizerSettings
    from matmeta.models._gnn import CGCNN

    fs = FeaturizerSettings(cutoff=5.0, max_neighbors=8, n_basis=16)
    rows = []
    for i, name in enumerate(sorted(dcdft_atoms)[:12]):
        buf = io.BytesIO()
        write(buf, dcdft_atoms[name], format="cif")
        rows.append({"id": name, "structure": buf.getvalue().decode(), "log10_K": 1.0 + 0.1 * i})
    df = pd.DataFrame(rows)
    df.iloc[:8].to_csv(tmp_path / "sup.csv", index=False)
    df.iloc[8:].to_csv(tmp_path / "q.csv", index=False)
    df.iloc[8:].drop(columns="structure").to_csv(tmp_path / "q_nostruct.csv", index=False)
    model = CGCNN(hidden=8, n_conv=1, n_basis=16, readout_hidden=(8,))
    p = model.init_params(torch.Generator().manual_seed(0))
    payload = {"model_name": "cgcnn", "model_config": model.config(), "params": p,
               "inner": {"steps": 3, "lr": 0.01, "per_param_lr": None, "trainable": None,
                         "proximal": 0.0},
               "extra": {"featurizer": fs.to_dict(), "target_transform": None,
                         "data": {"model_kind": "cgcnn", "options": {"target": "log10_K"}}}}
    ckpt = save_checkpoint(tmp_path / "gnn_meta.pt", payload, kind="meta")
    base = ["explain", "--model", str(ckpt), "--support", str(tmp_path / "sup.csv"),
            "--out", str(tmp_path / "g.csv"), "--threads", "1", "--no-progress"]
    assert main([*base, "--query", str(tmp_path / "q.csv"), "--check-loo"]) == 0
    out = pd.read_csv(tmp_path / "g.csv")
    assert list(out["sample"]) == list(df["id"].iloc[:8])
    assert np.isfinite(out["query_loss"]).all() and np.isfinite(out["loo:query_loss"]).all()
    capsys.readouterr()
    assert main([*base, "--query", str(tmp_path / "q_nostruct.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert "q_nostruct.csv" in err and "'structure'" in err and len(err.splitlines()) == 1
