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
    assert "badq.csv, column 't': the time unit cannot be determined" in err
    assert len(err.splitlines()) == 1
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
    # the file's line number (header = line 1), as in matmeta jmak fit
    assert "neg.csv, row 2, column 'time_s': negative time -5" in err
    assert "--allow-negative-time" in err
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
    # a bad value after a blank line: the message names the row a spreadsheet shows (header 1,
    # first structure 2, the blank row 3, then 4, 5), though each CIF spans many text lines
    bad = df.iloc[:8].astype({"log10_K": object})
    bad.loc[bad.index[2], "log10_K"] = "abc"
    text = bad.iloc[:1].to_csv(index=False, lineterminator="\n") + "\n" + bad.iloc[1:].to_csv(
        index=False, header=False, lineterminator="\n")
    (tmp_path / "sup_blank.csv").write_text(text)
    assert main([*base[:4], str(tmp_path / "sup_blank.csv"), *base[5:], "--query",
                 str(tmp_path / "q.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert "sup_blank.csv, row 5, column 'log10_K'" in err and len(err.splitlines()) == 1


def test_explain_time_min_table_scores_equal_the_time_s_table(tmp_path, capsys):
    """Times in minutes (support) and hours (query) are converted, not read as seconds."""
    model, start, _, _ = _tables(tmp_path)
    ckpt = _meta_checkpoint(tmp_path, model, start)
    sup = pd.read_csv(tmp_path / "support.csv")
    sup.assign(time_min=sup["time_s"] / 60.0).drop(columns="time_s").to_csv(
        tmp_path / "support_min.csv", index=False)
    q = pd.read_csv(tmp_path / "query.csv")
    q.assign(t=q["time_s"] / 3600.0).drop(columns="time_s").to_csv(
        tmp_path / "query_h.csv", index=False)
    base = ["explain", "--model", str(ckpt), "--out", str(tmp_path / "o.csv"), "--threads", "1",
            "--no-progress", "--json", "--target", "query_loss,n"]
    assert main([*base, "--support", str(tmp_path / "support.csv"),
                 "--query", str(tmp_path / "query.csv")]) == 0
    ref = json.loads(capsys.readouterr().out)
    # time_min found by name and converted: the same adaptation, the same scores
    assert main([*base, "--support", str(tmp_path / "support_min.csv"),
                 "--query", str(tmp_path / "query.csv")]) == 0
    got = json.loads(capsys.readouterr().out)
    for a, b in zip(ref, got, strict=True):
        assert a["sample"] == b["sample"]
        assert b["query_loss"] == pytest.approx(a["query_loss"], rel=1e-9, abs=1e-15)
        assert b["n"] == pytest.approx(a["n"], rel=1e-9, abs=1e-15)
    assert main([*base, "--support", str(tmp_path / "support_min.csv"),
                 "--query", str(tmp_path / "query_h.csv")]) == 2
    err = capsys.readouterr().err.strip()  # a unit-less time column is refused, not guessed
    assert "query_h.csv, column 't': the time unit cannot be determined" in err


def test_explain_kinetics_checks_cover_arrhenius_tables(tmp_path):
    """The arrhenius_jmak branch gets the same checks as jmak: fraction range, t >= 0, T > 0,
    with the file's line numbers; the fraction column keeps the user's name in messages."""
    import argparse

    from matmeta.cli.explain import _read_table, _samples
    from matmeta.errors import InputError

    args = argparse.Namespace(time_column=None, time_unit=None, fraction_column="frac",
                              fraction_tolerance=0.0, allow_negative_time=False)
    good = "time_h,temperature_K,frac\n1,900,0.1\n2,900,0.5\n1,950,0.3\n2,950,0.8\n"
    path = tmp_path / "a.csv"
    path.write_text(good)
    s = _samples(_read_table(str(path)), str(path), "arrhenius_jmak", {}, args, labelled=True)
    np.testing.assert_array_equal(s.inputs.numpy(),
                                  [[3600, 900], [7200, 900], [3600, 950], [7200, 950]])
    np.testing.assert_array_equal(s.y.numpy(), [0.1, 0.5, 0.3, 0.8])
    for bad, msg in [
        (good.replace("2,950,0.8", "2,950,1.3"), "row 5, column 'frac': fraction 1.3 outside"),
        (good.replace("2,900,0.5", "-2,900,0.5"), "row 3, column 'time_h': negative time -2"),
        (good.replace("1,950,0.3", "1,-950,0.3"), "row 4, column 'temperature_K': temperature "
                                                  "-950 K; expected a temperature > 0 K"),
        (good.replace("1,950,0.3", "1,abc,0.3"), "row 4, column 'temperature_K': expected a "
                                                 "number, got 'abc'"),
    ]:
        path.write_text(bad)
        with pytest.raises(InputError, match="^" + str(path).replace("\\", "\\\\") + ", "
                           + msg.replace("(", r"\(")):
            _samples(_read_table(str(path)), str(path), "arrhenius_jmak", {}, args,
                     labelled=True)
    path.write_text(good.replace("2,950,0.8", "2,950,1.03"))
    args.fraction_tolerance = 0.05
    s = _samples(_read_table(str(path)), str(path), "arrhenius_jmak", {}, args, labelled=True)
    assert float(s.y[3]) == 1.03  # kept as measured


def test_explain_numeric_messages_name_file_lines_and_plain_values(tmp_path):
    from matmeta.cli.explain import _ids, _read_table, pd_numeric
    from matmeta.errors import InputError

    path = tmp_path / "m.csv"
    path.write_text("x,y\n1.5,2\n2.5,inf\n")
    df = _read_table(str(path))
    with pytest.raises(InputError, match=r"m.csv, row 3, column 'y': inf: expected a finite"):
        pd_numeric(df, "y", str(path))
    assert _ids(df) == ["row 2", "row 3"]
    jpath = tmp_path / "m.json"
    jpath.write_text('[{"x": 1.5}, {"x": "abc"}]')
    with pytest.raises(InputError, match=r"m.json, row 2, column 'x': 'abc': expected a finite"):
        pd_numeric(_read_table(str(jpath)), "x", str(jpath))


# -- composition checkpoints: tables read as `matmeta adapt` reads them ------------------------

COEF = {"Al": 200, "Co": 350, "Cr": 500, "Fe": 300, "Ni": 250, "Mn": 400, "Mo": 800, "Nb": 700}
SYSTEMS = [("Al", "Co", "Cr"), ("Co", "Fe", "Ni"), ("Cr", "Mo", "Nb"), ("Fe", "Mn", "Ni"),
           ("Al", "Fe", "Ni"), ("Co", "Cr", "Ni"), ("Mo", "Nb", "Fe"), ("Cr", "Fe", "Mn")]


def _alloy_rows(system, n, rng, noise=10.0):
    rows = []
    for _ in range(n):
        x = rng.dirichlet(np.full(3, 2.0))
        temp = float(rng.choice([25.0, 300.0, 600.0]))
        ys = sum(COEF[e] * xi for e, xi in zip(system, x, strict=True)) - 0.3 * temp
        rows.append({"FORMULA": " ".join(f"{e}{xi:.3f}" for e, xi in zip(system, x, strict=True)),
                     "T_C": temp, "YS_MPa": round(ys + rng.normal(0, noise), 1)})
    return rows


@pytest.fixture(scope="module")
def alloys(tmp_path_factory):
    """A small alloy table (yield strength linear in the fractions, minus a temperature term),
    meta checkpoints trained on it for a few steps, and a support (one row 200 MPa too high)
    and query of an element system it never saw (Co-Cr-Fe)."""
    d = tmp_path_factory.mktemp("alloys")
    rng = np.random.default_rng(0)
    pd.DataFrame([r for s in SYSTEMS for r in _alloy_rows(s, 14, rng)]).to_csv(
        d / "alloys.csv", index=False)
    new = pd.DataFrame(_alloy_rows(("Co", "Cr", "Fe"), 16, np.random.default_rng(1), noise=0))
    sup = new.iloc[:7].copy()
    sup.loc[sup.index[3], "YS_MPa"] += 200.0  # file row 5
    sup.to_csv(d / "sup.csv", index=False)
    new.iloc[7:].to_csv(d / "q.csv", index=False)
    base = ["meta-train", "--data", str(d / "alloys.csv"), "--model", "composition",
            "--composition-column", "FORMULA", "--process-columns", "T_C", "--target", "YS_MPa",
            "--k-shot", "4", "--q-query", "4", "--meta-batch", "4", "--hidden", "8",
            "--val-families", "0", "--no-progress", "--threads", "1"]
    loop = ["--inner-lr", "0.02", "--eval-inner-steps", "100"]
    assert main([*base, *loop, "--steps", "20", "--out", str(d / "meta.pt")]) == 0
    assert main([*base, *loop, "--steps", "10", "--members", "2",
                 "--out", str(d / "ens.pt")]) == 0
    assert main([*base, "--steps", "10", "--algorithm", "bayes_linear",
                 "--out", str(d / "head.pt")]) == 0
    return d


def _adapted_query_loss(model_path, support_df, query_path, tmp_path, member=None):
    """Query loss (the model's target space) of `matmeta adapt`'s own adaptation."""
    from matmeta.workflows import adapt

    path = tmp_path / "sub.csv"
    support_df.to_csv(path, index=False)
    adapted = adapt(str(model_path), str(path), loo=False)
    inputs, y = adapted.encode(adapted.read(str(query_path), with_target=True), with_target=True)
    if member is None:
        pred, _ = adapted.predict_model_space(inputs)
    else:
        with torch.no_grad():
            pred = adapted.model.forward({k: v[member] for k, v in adapted.params.items()},
                                         inputs)
    return float(((pred.double() - y.double()) ** 2).mean())


def _loo_against_adapt(rows, alloys, model_path, tmp_path, member=None):
    sup = pd.read_csv(alloys / "sup.csv")
    full = _adapted_query_loss(model_path, sup, alloys / "q.csv", tmp_path, member)
    for i in (1, 3, 6):
        without = _adapted_query_loss(model_path, sup.drop(index=i), alloys / "q.csv",
                                      tmp_path, member)
        # adapt runs in the checkpoint's float32, explain in float64
        assert rows[i]["loo:query_loss"] == pytest.approx(without - full, rel=1e-4, abs=2e-6)


def test_explain_composition_checkpoint_reads_tables_like_adapt(alloys, tmp_path, capsys):
    args = ["explain", "--model", str(alloys / "meta.pt"), "--support", str(alloys / "sup.csv"),
            "--query", str(alloys / "q.csv"), "--check-loo", "--json",
            "--out", str(tmp_path / "infl.csv"), "--threads", "1", "--no-progress"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "warning" not in err  # the 100-step adaptation fits its support
    rows = json.loads(out)
    sup = pd.read_csv(alloys / "sup.csv")
    # no id column: the file's row number and the composition name each sample
    assert [r["sample"] for r in rows] == [f"row {i + 2} ({f})"
                                           for i, f in enumerate(sup["FORMULA"])]
    worst = min(rows, key=lambda r: r["query_loss"])
    assert worst["sample"].startswith("row 5 ") and worst["effect"] == "harmful"
    assert rows[0]["spearman:query_loss"] >= 0.9 and rows[0]["agreement_note:query_loss"] is None
    # exact LOO = `matmeta adapt` on the support without the row, scored on the query
    _loo_against_adapt(rows, alloys, alloys / "meta.pt", tmp_path)
    # a query table without the target: predictions; a support without it: one-line error
    pd.read_csv(alloys / "q.csv").drop(columns="YS_MPa").to_csv(tmp_path / "cands.csv",
                                                                 index=False)
    assert main([*args[:6], str(tmp_path / "cands.csv"), *args[7:]]) == 0
    pred = json.loads(capsys.readouterr().out)
    assert "prediction:row 2 (" + pd.read_csv(alloys / "q.csv")["FORMULA"][0] + ")" in pred[0]
    sup.drop(columns="T_C").to_csv(tmp_path / "no_t.csv", index=False)
    assert main([*args[:4], str(tmp_path / "no_t.csv"), *args[5:]]) == 2
    err = capsys.readouterr().err.strip()
    assert "no_t.csv" in err and "'T_C'" in err and len(err.splitlines()) == 1


@pytest.mark.filterwarnings("ignore:.*noise term was not calibrated")
def test_explain_ensemble_member(alloys, tmp_path, capsys):
    args = ["explain", "--model", str(alloys / "ens.pt"), "--support", str(alloys / "sup.csv"),
            "--query", str(alloys / "q.csv"), "--out", str(tmp_path / "infl.csv"),
            "--threads", "1", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "an ensemble of 2" in err and "--member K (0 to 1)" in err
    assert len(err.splitlines()) == 1
    assert main([*args, "--member", "2"]) == 2
    assert "members 0 to 1" in capsys.readouterr().err
    assert main([*args, "--member", "1", "--check-loo", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    # member 1's LOO = `matmeta adapt` of the ensemble without the row, member 1's predictions
    _loo_against_adapt(rows, alloys, alloys / "ens.pt", tmp_path, member=1)
    assert main(["explain", "--model", str(alloys / "meta.pt"), *args[3:], "--member", "0"]) == 2
    assert "not an ensemble" in capsys.readouterr().err


def test_explain_bayes_linear_head_checkpoint_uses_its_closed_form(alloys, tmp_path, capsys):
    args = ["explain", "--model", str(alloys / "head.pt"), "--support", str(alloys / "sup.csv"),
            "--query", str(alloys / "q.csv"), "--out", str(tmp_path / "infl.csv"),
            "--threads", "1", "--no-progress", "--check-loo", "--json"]
    assert main(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["estimator"] == "exact_closed_form"
    assert min(rows, key=lambda r: r["query_loss"])["sample"].startswith("row 5 ")
    assert rows[0]["spearman:query_loss"] >= 0.8
    # the head's LOO refits it (hyperparameters too), as `matmeta adapt` fits it
    _loo_against_adapt(rows, alloys, alloys / "head.pt", tmp_path)
    assert main([*args, "--estimator", "unrolled"]) == 2
    assert "exact_closed_form" in capsys.readouterr().err


def test_explain_misfit_warns_in_one_line_and_claims_no_correlation(tmp_path, capsys):
    """A start whose curve is flat at 1 over the data: the scores are noise and say so."""
    model = JMAK()
    truth = model.from_physical(k_per_s=1.4e-5, n=3.0)
    t = torch.tensor([185.0, 14615, 20072, 29044, 32652, 39866, 54111, 90185],
                     dtype=torch.float64)
    y = model.forward(truth, t)
    y[3] = 0.9
    pd.DataFrame({"time_s": t.numpy(), "fraction": y.numpy()}).to_csv(tmp_path / "s.csv",
                                                                      index=False)
    tq = torch.tensor([9250.0, 25529, 36351, 72055], dtype=torch.float64)
    pd.DataFrame({"time_s": tq.numpy(), "fraction": model.forward(truth, tq).numpy()}).to_csv(
        tmp_path / "q.csv", index=False)
    ckpt = _meta_checkpoint(tmp_path, model, model.from_physical(k_per_s=8.7e-4, n=1.33))
    assert main(["explain", "--model", str(ckpt), "--support", str(tmp_path / "s.csv"),
                 "--query", str(tmp_path / "q.csv"), "--target", "query_loss,t_half",
                 "--check-loo", "--out", str(tmp_path / "o.csv"), "--threads", "1",
                 "--no-progress"]) == 0
    out, err = capsys.readouterr()
    warn = [line for line in err.splitlines() if "warning" in line]
    assert len(warn) == 1 and "does not fit its own support" in warn[0]
    assert "more inner steps" in warn[0] and "prior" in warn[0]
    assert "most harmful" not in out and "Spearman" not in out and "Pearson" not in out
    assert "on query_loss: correlation undefined" in out
    assert "on t_half: correlation undefined" in out
    assert set(pd.read_csv(tmp_path / "o.csv")["effect"]) == {"neutral"}
