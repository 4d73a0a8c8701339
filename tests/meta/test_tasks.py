"""Families, tasks, groupings, splits and the episodic sampler."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from matmeta.errors import InputError
from matmeta.meta import (
    EpisodeSampler,
    Family,
    anion_set,
    element_system,
    families_from_table,
    family_keys,
    most_electronegative_element,
    split_families,
)
from tests.helpers import shared_dataset


def test_groupings_of_formulas():
    assert most_electronegative_element("Fe2O3") == "O"
    assert most_electronegative_element("NaCl") == "Cl"
    assert most_electronegative_element("TiN") == "N"
    assert most_electronegative_element("PtS2") == "S"
    assert element_system("NiFeCrCoAl") == "Al-Co-Cr-Fe-Ni"
    assert element_system("Hf0.2Nb0.2Ta0.2Ti0.2Zr0.2") == "Hf-Nb-Ta-Ti-Zr"
    assert anion_set("SrTiO2N") == "NO"
    assert anion_set("BaTiO2F") == "FO"
    assert anion_set("CO2") == "O"
    with pytest.raises(InputError, match="not a chemical formula"):
        element_system("Xx9")


def test_family_keys_name_the_row_of_a_bad_formula():
    df = pd.DataFrame({"formula": ["NaCl", "Qq2"], "y": [1.0, 2.0]})
    # a table from a CSV file is numbered by file lines: header line 1, so index 1 is line 3
    with pytest.raises(InputError, match=r"^t.csv, row 3, column 'formula'"):
        family_keys(df, "anion", source="t.csv")
    with pytest.raises(InputError, match=r"^<table>, row 1, column 'formula'"):
        family_keys(df, "anion")
    with pytest.raises(InputError, match="no family column 'grade'"):
        family_keys(df, "grade")


def test_family_samples_index_rows_and_the_sampler_is_reproducible():
    fams = [Family(f"f{i}", torch.arange(20.0).reshape(10, 2) + 100 * i,
                   torch.arange(10.0) + 100 * i) for i in range(4)]
    a = EpisodeSampler(fams, 3, 4, 5, seed=7)
    b = EpisodeSampler(fams, 3, 4, 5, seed=7)
    ta, tb = a.sample(), b.sample()
    for x, y in zip(ta, tb, strict=True):
        assert x.family == y.family and torch.equal(x.support.y, y.support.y)
    for t in ta:
        # support and query come from one family, disjoint, and inputs stay aligned with targets
        fam = int(t.family[1:])
        both = torch.cat([t.support.y, t.query.y])
        assert len(set(both.tolist())) == 7 and bool(((both // 100) == fam).all())
        torch.testing.assert_close(t.support.inputs[:, 1], 2 * t.support.y - 100 * fam + 1)
    # a saved state replays the same episodes
    state = a.state()
    nxt = a.sample()
    b.restore(state)
    assert [t.family for t in b.sample()] == [t.family for t in nxt]


def test_split_by_group_never_leaks():
    fams = [Family(f"g{g}@{t}K", torch.zeros(5, 1), torch.zeros(5), group=f"g{g}")
            for g in range(10) for t in (900, 1000)]
    train, val, test = split_families(fams, val=0.2, test=["g3"], seed=1)
    groups = [{f.group for f in s} for s in (train, val, test)]
    assert groups[2] == {"g3"} and len(groups[1]) == 2
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2])
    assert not (groups[1] & groups[2])
    assert sum(len(s) for s in (train, val, test)) == len(fams)
    with pytest.raises(InputError, match="not among the families"):
        split_families(fams, test=["nope"])


def test_families_from_table_for_an_mlp_with_named_bad_rows():
    df = pd.DataFrame({"family": ["A", "A", "B"], "x": [1.0, 2.0, 3.0], "y": [1.0, 4.0, 9.0]})
    fams = families_from_table(df, "mlp", target="y", features=["x"], dtype=torch.float64)
    assert [f.name for f in fams] == ["A", "B"]
    torch.testing.assert_close(fams[0].inputs, torch.tensor([[1.0], [2.0]], dtype=torch.float64))
    assert fams[1].rows == [2]
    df.loc[1, "x"] = float("nan")
    # an in-memory table has no file lines: its own index labels are reported
    with pytest.raises(InputError, match=r"^<table>, row 1, column 'x': nan: expected a finite"):
        families_from_table(df, "mlp", target="y", features=["x"])


def test_bad_cells_of_a_csv_are_named_by_their_file_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("family,formula,x,y\nA,NaCl,1.0,1.0\nA,KBr,2.0,4.0\nB,MgO,abc,9.0\n"
                    "B,Qq2,4.0,2.0\n,LiF,5.0,1.0\n")
    lines = path.read_text().splitlines()  # lines[n - 1] is file line n; the header is line 1
    df = pd.read_csv(path)
    with pytest.raises(InputError) as err:  # the rows before the one without a family
        families_from_table(df.iloc[:4], "mlp", target="y", features=["x"], source=str(path))
    assert str(err.value) == f"{path}, row 4, column 'x': 'abc': expected a finite number"
    assert lines[4 - 1].split(",")[2] == "abc"
    with pytest.raises(InputError, match=r"t.csv, row 5, column 'formula'"):
        family_keys(df, "anion", source=str(path))
    assert lines[5 - 1].split(",")[1] == "Qq2"
    with pytest.raises(InputError, match=r"t.csv, row 6, column 'family': empty family name"):
        family_keys(df, "family", source=str(path))
    assert lines[6 - 1].startswith(",")
    # numpy scalars are shown as numbers, not as np.float64(...)
    df2 = pd.read_csv(path).iloc[:2].copy()
    df2.loc[1, "y"] = np.inf
    with pytest.raises(InputError, match=r"t.csv, row 3, column 'y': inf: expected a finite"):
        families_from_table(df2, "mlp", target="y", features=["x"], source=str(path))
    ok = families_from_table(df.iloc[:2], "mlp", target="y", features=["x"], source=str(path))
    assert ok[0].rows == [2, 3]


def test_kinetics_rows_are_the_line_numbers_the_reader_attached(tmp_path):
    from matmeta.io.kinetics import read_kinetics_table

    path = tmp_path / "k.csv"
    path.write_text("dataset_id,temperature_K,time_s,fraction\nW1,1000,10,0.1\n"
                    "W1,1000,100,0.5\nW1,1000,-5,0.9\n")
    table = read_kinetics_table(path, allow_negative_time=True)
    df = table.data.set_index("row")
    with pytest.raises(InputError, match=r"k.csv, row 4, column 'time_s': -5: expected a time"):
        families_from_table(df, "jmak", source=str(path))
    assert path.read_text().splitlines()[4 - 1].split(",")[2] == "-5"


@pytest.mark.shared_data
def test_tungsten_isotherms_become_families_grouped_by_grade():
    df = pd.read_csv(shared_dataset("kinetics/tungsten_recrystallization.csv"))
    df = df[df["time_s"] >= 0]
    fams = families_from_table(df, "jmak", family="dataset_id")
    n_iso = df.groupby(["dataset_id", "temperature_K"]).ngroups
    assert len(fams) == n_iso and sum(len(f) for f in fams) == len(df)
    assert {f.group for f in fams} == set(df["dataset_id"])
    f = fams[0]
    sub = df[(df["dataset_id"] == f.group)
             & (df["temperature_K"].map(lambda t: f"{t:g}") == f.name.split("@")[1][:-1])]
    assert sorted(f.y.tolist()) == pytest.approx(sorted(sub["fraction"].tolist()), rel=1e-6)
    grades = families_from_table(df, "arrhenius_jmak")
    assert len(grades) == df["dataset_id"].nunique() and grades[0].inputs.shape[1] == 2
    raw = pd.read_csv(shared_dataset("kinetics/tungsten_recrystallization.csv"))
    if (raw["time_s"] < 0).any():  # the digitised file has a few negative times: named, not dropped
        with pytest.raises(InputError, match=r"row \d+, column 'time_s'"):
            families_from_table(raw, "jmak")


def test_families_from_table_for_graphs_collate_per_task():
    from ase.build import bulk

    from matmeta.graphs import GraphBatch
    from matmeta.models._transforms import TargetTransform

    atoms = [bulk("NaCl", "rocksalt", a=5.6), bulk("Cu", "fcc", a=3.6, cubic=True),
             bulk("MgO", "rocksalt", a=4.2)]
    df = pd.DataFrame({"structure": atoms, "K_GPa": [25.0, 140.0, 160.0],
                       "family": ["Cl", "Cu", "O"]})
    tt = TargetTransform("log10_standardize", mean=2.0, std=0.5)
    fams = families_from_table(df, "cgcnn", target="K_GPa", target_transform=tt,
                               dtype=torch.float64)
    assert [f.name for f in fams] == ["Cl", "Cu", "O"]
    expected = (math.log10(140.0) - 2.0) / 0.5
    torch.testing.assert_close(fams[1].y, torch.tensor([expected], dtype=torch.float64))
    batch = fams[1].samples([0]).inputs
    assert isinstance(batch, GraphBatch) and batch.num_graphs == 1
    assert int(batch.num_atoms[0]) == len(atoms[1]) == 4
    assert batch.edge_attr.shape[1] == fams[1].featurizer.n_basis
