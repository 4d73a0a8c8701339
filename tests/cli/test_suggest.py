"""`matmeta suggest candidates`: ranked CSV from a checkpoint, a support file and candidates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from matmeta.bayes import fit_bayes_linear
from matmeta.cli.main import main
from matmeta.io.alloys import read_alloy_table
from matmeta.models import save_model
from matmeta.models._composition import CompositionModel, encode_compositions
from matmeta.models._transforms import TargetTransform

TARGET = "yield_MPa"
ELEMENTS = ["Co", "Cr", "Fe", "Ni", "Mn"]


def _compositions(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        els = rng.choice(ELEMENTS, size=rng.integers(2, 5), replace=False)
        amounts = rng.uniform(0.5, 2.0, size=len(els))
        out.append("".join(f"{e}{a:.2f}" for e, a in zip(els, amounts, strict=True)))
    return out


def _table(n: int, seed: int, target: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(seed + 100)
    df = pd.DataFrame({"id": [f"c{seed}-{i}" for i in range(n)],
                       "formula": _compositions(n, seed),
                       "T_C": rng.choice([25.0, 400.0, 800.0], size=n)})
    if target:
        df[TARGET] = rng.uniform(200, 1500, size=n).round(1)
    return df


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("suggest")
    train = _table(30, 0)
    train.to_csv(d / "train.csv", index=False)
    df = read_alloy_table(d / "train.csv", "formula", TARGET, process_columns=["T_C"])
    model = CompositionModel.for_table(df, hidden=8, depth=1, embedding_dim=4)
    tt = TargetTransform.fit(df[TARGET].to_numpy(), kind="log10_standardize")
    params = model.init_params(torch.Generator().manual_seed(0))
    extra = {"target_transform": tt.to_dict(),
             "data_spec": {"kind": "composition", "target": TARGET,
                           "composition_column": "formula"}}
    save_model(d / "model.pt", model, params, extra=extra)
    # an ensemble of 3 members, through the ensemble module's own writer
    from matmeta.meta import MetaSettings, MetaTrainSettings
    from matmeta.meta._ensemble import Ensemble, save_ensemble, stack_params

    members = [model.init_params(torch.Generator().manual_seed(s)) for s in range(3)]
    ens = Ensemble(model, stack_params(members), MetaSettings("maml", inner_steps=2,
                                                              inner_lr=0.01),
                   MetaTrainSettings(steps=1), 0.0, [], extra)
    save_ensemble(ens, d / "ensemble.pt")
    one = Ensemble(model, stack_params(members[:1]), ens.settings, ens.train, 0.0, [], extra)
    save_ensemble(one, d / "one.pt")
    _table(4, 1).to_csv(d / "lab.csv", index=False)
    _table(12, 2, target=False).to_csv(d / "cands.csv", index=False)
    return {"dir": d, "model": model, "params": params, "tt": tt, "members": members}


def _run(*args: str) -> int:
    return main(["suggest", "candidates", *map(str, args), "--device", "cpu"])


def test_ranked_csv_matches_an_independent_head_fit(files, capsys):
    d = files["dir"]
    out = d / "next.csv"
    assert _run("--model", d / "model.pt", "--support", d / "lab.csv", "--candidates",
                d / "cands.csv", "--out", out, "--batch", "3", "--plot") == 0
    table = pd.read_csv(out)
    assert len(table) == 12 and table["rank"].tolist() == list(range(1, 13))
    assert table["in_batch"].tolist() == [True] * 3 + [False] * 9
    assert (out.with_suffix(".png")).stat().st_size > 0
    assert "log10_yield_MPa_sq" in " ".join(table.columns)
    # the prediction is the Bayesian head on the model's features, prior mean = output layer
    model, params, tt = files["model"], files["params"], files["tt"]
    lab = read_alloy_table(d / "lab.csv", "formula", TARGET, process_columns={"T_C": "numeric"})
    cands = read_alloy_table(d / "cands.csv", "formula", None, process_columns={"T_C": "numeric"})
    with torch.no_grad():
        phi_s = model.features(params, encode_compositions(lab, model)).double()
        phi_c = model.features(params, encode_compositions(cands, model)).double()
    w = torch.cat([params["head.weight"].reshape(-1), params["head.bias"]]).double()
    post = fit_bayes_linear(phi_s, tt.forward(torch.tensor(lab[TARGET].to_numpy())),
                            prior_mean=w)
    mean, std = post.predict(phi_c)
    by_id = table.set_index("id").loc[[f"c2-{i}" for i in range(12)]]
    np.testing.assert_allclose(by_id[f"predicted_{TARGET}"], tt.inverse(mean).numpy(),
                               rtol=1e-6)
    lo = tt.inverse(mean - 1.6448536269514722 * std).numpy()
    np.testing.assert_allclose(by_id[f"lower90_{TARGET}"], lo, rtol=1e-6)
    # the batch's first pick has the largest single-step reduction
    score = f"expected_variance_reduction_log10_{TARGET}_sq"
    assert table[score].iloc[0] == pytest.approx(table[score].max())
    assert 0 < table["share_of_region_variance"].max() <= 1
    assert "wrote" in capsys.readouterr().out


def test_blank_lines_in_the_support_and_candidates_keep_ids_with_their_rows(files, tmp_path):
    """pandas skips blank lines; the ids (the user's own column) must stay with their rows."""
    d = files["dir"]
    plain = d / "next_plain.csv"
    assert _run("--model", d / "model.pt", "--support", d / "lab.csv", "--candidates",
                d / "cands.csv", "--out", plain) == 0
    for name in ("lab.csv", "cands.csv"):
        lines = (d / name).read_text().splitlines()
        gapped = [lines[0], "", lines[1], "  ", *lines[2:4], "", *lines[4:]]
        (tmp_path / name).write_text("\n".join(gapped) + "\n")
    gapped_out = tmp_path / "next.csv"
    assert _run("--model", d / "model.pt", "--support", tmp_path / "lab.csv", "--candidates",
                tmp_path / "cands.csv", "--out", gapped_out) == 0
    a = pd.read_csv(plain).set_index("id").sort_index()
    b = pd.read_csv(gapped_out).set_index("id").sort_index()
    np.testing.assert_allclose(b[f"predicted_{TARGET}"], a[f"predicted_{TARGET}"], rtol=1e-9)
    assert b["composition"].tolist() == a["composition"].tolist()
    assert b["T_C"].tolist() == a["T_C"].tolist()


@pytest.mark.parametrize("goal", ["max", "min", "700"])
def test_top_region_follows_the_goal(files, goal):
    d = files["dir"]
    out = d / f"next_{goal}.csv"
    assert _run("--model", d / "model.pt", "--support", d / "lab.csv", "--candidates",
                d / "cands.csv", "--out", out, "--goal", goal, "--target-region",
                "top:0.25") == 0
    t = pd.read_csv(out)
    pred = t[f"predicted_{TARGET}"]
    region = t["in_target_region"].astype(bool)
    assert region.sum() == 3
    if goal == "max":
        assert pred[region].min() >= pred[~region].max()
    elif goal == "min":
        assert pred[region].max() <= pred[~region].min()
    else:
        dist = (pred - 700).abs()
        assert dist[region].max() <= dist[~region].min()


def test_target_region_from_a_file_and_ensemble_strategies(files):
    d = files["dir"]
    _table(3, 7, target=False).to_csv(d / "region.csv", index=False)
    for strategy in ("variance", "disagreement", "maxstd", "random"):
        out = d / f"ens_{strategy}.csv"
        assert _run("--model", d / "ensemble.pt", "--support", d / "lab.csv", "--candidates",
                    d / "cands.csv", "--out", out, "--strategy", strategy,
                    "--target-region", d / "region.csv", "--batch", "2") == 0
        t = pd.read_csv(out)
        assert sorted(t["id"]) == sorted(f"c2-{i}" for i in range(12))
        assert t["in_batch"].sum() == 2
    # disagreement is the variance of the adapted members' predictions (ensemble contract)
    from matmeta.meta import adapt_params
    from matmeta.models import Samples

    t = pd.read_csv(d / "ens_disagreement.csv").set_index("id")
    model, tt = files["model"], files["tt"]
    lab = read_alloy_table(d / "lab.csv", "formula", TARGET, process_columns={"T_C": "numeric"})
    cands = read_alloy_table(d / "cands.csv", "formula", None, process_columns={"T_C": "numeric"})
    sup = Samples(encode_compositions(lab, model),
                  tt.forward(torch.tensor(lab[TARGET].to_numpy())).float())
    from matmeta.meta import MetaSettings

    settings = MetaSettings("maml", inner_steps=2, inner_lr=0.01)
    preds = torch.stack([model.forward(adapt_params(model, p, sup, settings),
                                       encode_compositions(cands, model)).detach()
                         for p in files["members"]])
    var = preds.double().var(0, unbiased=False) * tt.std ** 2
    col = f"member_variance_log10_{TARGET}_sq"
    np.testing.assert_allclose(t.loc[[f"c2-{i}" for i in range(12)], col], var.numpy(),
                               rtol=1e-4, atol=1e-12)


def _fails(capsys, *args) -> str:
    assert _run(*args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_input_is_one_line_and_writes_nothing(files, tmp_path, capsys):
    d = files["dir"]
    out = tmp_path / "next.csv"
    base = ["--model", d / "model.pt", "--out", out]
    (tmp_path / "empty.csv").write_text("id,formula,T_C\n")
    err = _fails(capsys, *base, "--support", d / "lab.csv", "--candidates",
                 tmp_path / "empty.csv")
    assert "no usable rows" in err
    _table(4, 1).drop(columns=[TARGET]).to_csv(tmp_path / "lab_no_target.csv", index=False)
    err = _fails(capsys, *base, "--support", tmp_path / "lab_no_target.csv", "--candidates",
                 d / "cands.csv")
    assert TARGET in err and "lab_no_target.csv" in err
    err = _fails(capsys, *base, "--support", d / "lab.csv", "--candidates", d / "cands.csv",
                 "--strategy", "disagreement")
    assert "single model" in err and "ensemble" in err
    err = _fails(capsys, "--model", d / "one.pt", "--out", out, "--support", d / "lab.csv",
                 "--candidates", d / "cands.csv", "--strategy", "disagreement")
    assert "1 member" in err
    bad = _table(3, 9, target=False)
    bad.loc[1, "formula"] = "CoXx2"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    err = _fails(capsys, *base, "--support", d / "lab.csv", "--candidates", tmp_path / "bad.csv")
    assert "row 3" in err and "formula" in err
    err = _fails(capsys, *base, "--support", d / "lab.csv", "--candidates", d / "cands.csv",
                 "--target-region", "best")
    assert "--target-region" in err
    err = _fails(capsys, *base, "--support", d / "lab.csv", "--candidates", d / "cands.csv",
                 "--goal", "high")
    assert "--goal" in err
    assert not out.exists() and list(tmp_path.glob("*.tmp")) == []


def test_a_model_without_features_is_refused(tmp_path, capsys):
    from matmeta.models._mlp import MLP

    mlp = MLP(in_dim=3, hidden=(4,))
    save_model(tmp_path / "mlp.pt", mlp, mlp.init_params(torch.Generator().manual_seed(0)))
    err = _fails(capsys, "--model", tmp_path / "mlp.pt", "--support", "lab.csv",
                 "--candidates", "c.csv", "--out", tmp_path / "x.csv")
    assert "no features" in err


def test_help_names_the_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["suggest", "candidates", "--help"])
    text = capsys.readouterr().out
    assert "--target-region" in text and "units" in text


def test_a_meta_checkpoint_gives_the_same_ranking_as_its_model(files, tmp_path):
    """A `matmeta meta-train` checkpoint: the head sits on the meta-learned initial parameters."""
    from matmeta.checkpoint import save_checkpoint
    from matmeta.meta import MetaSettings, MetaTrainSettings

    d, model, params = files["dir"], files["model"], files["params"]
    settings = MetaSettings("maml", inner_steps=2, inner_lr=0.01)
    extra = {"target_transform": files["tt"].to_dict(),
             "data_spec": {"target": TARGET, "composition_column": "formula"}}
    save_checkpoint(tmp_path / "meta.pt", {
        "model_name": model.name, "model_config": model.config(), "params": params,
        "meta_params": params, "step": 1, "history": [], "meta_settings": settings.to_dict(),
        "train_settings": MetaTrainSettings(steps=1).to_dict(),
        "inner": {"algorithm": "maml", "steps": 2, "lr": 0.01}, "extra": extra}, kind="meta")
    for ckpt in (tmp_path / "meta.pt", d / "model.pt"):
        assert _run("--model", ckpt, "--support", d / "lab.csv", "--candidates",
                    d / "cands.csv", "--out", tmp_path / f"{ckpt.stem}.csv", "--batch", "2") == 0
    a, b = pd.read_csv(tmp_path / "meta.csv"), pd.read_csv(tmp_path / "model.csv")
    assert a["id"].tolist() == b["id"].tolist()
    np.testing.assert_allclose(a[f"predicted_{TARGET}"], b[f"predicted_{TARGET}"], rtol=1e-9)


def test_structure_model_ranks_structures(tmp_path):
    """A CGCNN checkpoint: support and candidates as tables of structures."""
    import json

    from matmeta.graphs import FeaturizerSettings
    from matmeta.models._gnn import CGCNN
    from tests.helpers import DATA

    rows = json.loads((DATA / "structures" / "emt_binary_alloys.json").read_text())["data"]
    cu_au = [r for r in rows if r["family"] == "Cu-Au"]
    keep = ["name", "structure", "bulk_modulus_GPa"]
    (tmp_path / "lab.json").write_text(json.dumps([{k: r[k] for k in keep} for r in cu_au[:3]]))
    (tmp_path / "cands.json").write_text(json.dumps([{k: r[k] for k in keep[:2]}
                                                     for r in cu_au[3:]]))
    settings = FeaturizerSettings(cutoff=5.0, max_neighbors=8, n_basis=10)
    model = CGCNN(hidden=8, n_conv=1, n_basis=10)
    tt = TargetTransform.fit([100.0, 150.0, 200.0], kind="log10_standardize")
    save_model(tmp_path / "gnn.pt", model, model.init_params(torch.Generator().manual_seed(0)),
               extra={"featurizer": settings.to_dict(), "target_transform": tt.to_dict()})
    out = tmp_path / "next.csv"
    assert _run("--model", tmp_path / "gnn.pt", "--support", tmp_path / "lab.json",
                "--candidates", tmp_path / "cands.json", "--target", "bulk_modulus_GPa",
                "--out", out, "--goal", "min", "--target-region", "top:0.5") == 0
    t = pd.read_csv(out)
    assert sorted(t["name"]) == sorted(r["name"] for r in cu_au[3:])
    assert t["in_target_region"].sum() == 2 and (t["std_bulk_modulus_GPa"] > 0).all()


def test_disagreement_from_a_single_model_with_bootstrap_heads(files, tmp_path):
    d = files["dir"]
    out = tmp_path / "boot.csv"
    assert _run("--model", d / "model.pt", "--support", d / "lab.csv", "--candidates",
                d / "cands.csv", "--out", out, "--strategy", "disagreement",
                "--bootstrap-heads", "8", "--batch", "2") == 0
    t = pd.read_csv(out)
    col = f"member_variance_log10_{TARGET}_sq"
    assert t["in_batch"].sum() == 2
    # the batch is the two largest disagreements, in order
    assert t[col].iloc[:2].tolist() == sorted(t[col], reverse=True)[:2]
