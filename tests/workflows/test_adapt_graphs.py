"""`adapt` and `predict` for a graph model: a CGCNN meta-trained on the shipped EMT alloys,
adapted to a CSV of CIF texts, predicting a folder of CIF files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from matmeta.cli.main import main
from matmeta.graphs import FeaturizerSettings, build_graphs, collate
from matmeta.meta import adapt_params, load_meta
from matmeta.models._protocol import Samples
from matmeta.models._transforms import TargetTransform
from matmeta.workflows._adapt import adapt, load_adapted
from tests.helpers import DATA, assert_tree_close

FAMILIES = ["Ni-Pt", "Cu-Au", "Ag-Pd", "Al-Ni", "Cu-Pt", "Pd-Pt"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from pymatgen.core import Structure
    from pymatgen.io.cif import CifWriter

    root = tmp_path_factory.mktemp("graphs")
    rows = [r for r in json.loads((DATA / "structures" / "emt_binary_alloys.json").read_text())
            ["data"] if r["family"] in FAMILIES]
    table = pd.DataFrame([{"name": r["name"], "family": r["family"],
                           "cif": str(CifWriter(Structure.from_dict(r["structure"]))),
                           "bulk_modulus_GPa": r["bulk_modulus_GPa"]} for r in rows])
    table.to_csv(root / "train.csv", index=False)
    held = table[table["family"] == "Ni-Pt"]
    held.head(4).drop(columns=["family"]).to_csv(root / "lab.csv", index=False)
    (root / "cands").mkdir()
    for _, r in held.iloc[4:].iterrows():
        (root / "cands" / f"{r['name'].replace(' ', '_')}.cif").write_text(r["cif"])
    assert main(["meta-train", "--model", "cgcnn", "--data", str(root / "train.csv"),
                 "--target", "bulk_modulus_GPa", "--structure-column", "cif",
                 "--test-families", "Ni-Pt", "--val-families", "Cu-Pt", "--steps", "2",
                 "--k-shot", "3", "--q-query", "3", "--meta-batch", "2", "--hidden", "8",
                 "--out", str(root / "meta.pt"), "--threads", "1", "--device", "cpu",
                 "--no-progress"]) == 0
    return root


def test_graph_adaptation_loo_and_folder_predictions(files, tmp_path):
    ck = load_meta(files / "meta.pt")
    adapted = adapt(files / "meta.pt", files / "lab.csv")
    settings = FeaturizerSettings.from_dict(ck.extra["data_spec"]["featurizer"])
    tt = TargetTransform.from_dict(ck.extra["target_transform"])
    lab = pd.read_csv(files / "lab.csv")
    graphs = build_graphs(list(lab["cif"]), settings, workers=1, progress=False)
    y = tt.forward(torch.as_tensor(np.array(lab["bulk_modulus_GPa"], dtype=float)))
    support = Samples(collate(graphs, settings), y.float())
    expected = adapt_params(ck.model, ck.meta_params, support, ck.settings)
    assert_tree_close(adapted.params, expected, rtol=1e-5, atol=1e-6)
    # leave-one-out: the one-graph batch cut from the support batch must predict like the graph
    # built alone, from parameters adapted on the other three
    rest = Samples(collate(graphs[1:], settings), y[1:].float())
    p = adapt_params(ck.model, ck.meta_params, rest, ck.settings)
    want = float(tt.inverse(ck.model.forward(p, collate(graphs[:1], settings)).double())[0])
    assert adapted.fit["bulk_modulus_GPa_loo"].iloc[0] == pytest.approx(want, rel=1e-5)

    adapted.save(tmp_path / "adapted")
    out = load_adapted(tmp_path / "adapted").predict(files / "cands", goal="min")
    files_sorted = sorted((files / "cands").iterdir())
    cand_graphs = build_graphs([str(f) for f in files_sorted], settings, workers=1,
                               progress=False)
    pred = tt.inverse(ck.model.forward(expected, collate(cand_graphs, settings)).double())
    by_id = out.set_index("id")["bulk_modulus_GPa"]
    got = np.array([by_id[[i for i in by_id.index if i.endswith(f.name)][0]]
                    for f in files_sorted])
    np.testing.assert_allclose(got, pred.numpy(), rtol=1e-5)
    assert set(out["nearest_family"]) <= set(FAMILIES) - {"Ni-Pt"}


def test_a_support_folder_without_targets_is_refused(files, tmp_path, capsys):
    rc = main(["adapt", "--model", str(files / "meta.pt"), "--support", str(files / "cands"),
               "--out", str(tmp_path / "a")])
    assert rc == 2
    assert "a support set needs targets" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_predict_builds_candidate_graphs_with_workers_and_cache(files, tmp_path):
    """`matmeta predict` on an adapted graph model uses --workers and --cache-dir: two worker
    processes and a warm cache give the predictions of a plain one-process build."""
    adapted = adapt(files / "meta.pt", files / "lab.csv")
    adapted.save(tmp_path / "adapted")
    plain = load_adapted(tmp_path / "adapted").predict(files / "cands", goal="max")
    cache = tmp_path / "cache"
    outs = []
    for _ in range(2):  # cold, then warm cache
        out = tmp_path / f"ranked{len(outs)}.csv"
        assert main(["predict", "--model", str(tmp_path / "adapted"), "--candidates",
                     str(files / "cands"), "--out", str(out), "--workers", "2",
                     "--cache-dir", str(cache), "--quiet", "--device", "cpu"]) == 0
        outs.append(pd.read_csv(out).set_index("id").sort_index())
    n_cands = len(list((files / "cands").iterdir()))
    assert len([p for p in cache.rglob("*") if p.is_file()]) >= n_cands
    want = plain.set_index("id").sort_index()["bulk_modulus_GPa"]
    for got in outs:
        np.testing.assert_allclose(got["bulk_modulus_GPa"], want, rtol=1e-6)


def test_adapted_graph_model_warns_about_elements_no_training_family_held(files, tmp_path):
    import shutil
    import warnings

    from ase.collections import dcdft

    from matmeta.models._composition import UnknownElementWarning

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        adapted = adapt(files / "meta.pt", files / "lab.csv")       # Ni-Pt: Ni and Pt seen
        ranked = adapted.predict(files / "cands")
    assert not [w for w in seen if issubclass(w.category, UnknownElementWarning)]
    # the meta-training families' elements (Ni-Pt held out for test, Cu-Pt for validation)
    train = load_meta(files / "meta.pt").extra["families"]["train"]
    assert "Ni-Pt" not in train and "Cu-Pt" not in train
    assert adapted.training_elements() == {el for fam in train for el in fam.split("-")}
    cands = tmp_path / "cands"
    shutil.copytree(files / "cands", cands)
    dcdft["W"].write(cands / "W.cif", format="cif")
    with pytest.warns(UnknownElementWarning) as caught:
        more = adapted.predict(cands)
    lines = [str(w.message) for w in caught if issubclass(w.category, UnknownElementWarning)]
    assert len(lines) == 1
    assert lines[0].startswith("element(s) W never seen in the meta-training families")
    assert f"1 of {len(ranked) + 1} rows of candidates" in lines[0] and "W.cif" in lines[0]
    assert len(more) == len(ranked) + 1
    # a checkpoint without the family index (older ones): no warning, no crash
    adapted.extra.pop("family_index")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownElementWarning)
        adapted.predict(cands)
