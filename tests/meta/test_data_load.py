"""`load_families`: one loader for every model kind, the same families as the table readers."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch

from matmeta.errors import InputError
from matmeta.io import read_kinetics_table
from matmeta.io.alloys import parse_composition
from matmeta.meta import families_from_table
from matmeta.meta._data import encode_rows, load_families, read_rows
from tests.helpers import DATA

KINETICS = DATA / "kinetics" / "avrami_reconstructed_curves.csv"


def test_kinetics_families_equal_the_reader_and_families_from_table():
    data = load_families(KINETICS, "jmak", family="material")
    table = read_kinetics_table(KINETICS, require_temperature=True)
    want = families_from_table(table.data.set_index("row"), "jmak", family="material",
                               source=str(KINETICS))
    assert [f.name for f in data.families] == [f.name for f in want]
    for a, b in zip(data.families, want, strict=True):
        torch.testing.assert_close(a.y, b.y)
        torch.testing.assert_close(a.inputs, b.inputs)
        assert a.rows == b.rows and a.group == b.group
    assert data.spec["target"] == "fraction" and data.units == "fraction"


def test_alloy_table_as_mlp_features_are_atomic_fractions(tmp_path):
    path = tmp_path / "alloys.csv"
    pd.DataFrame({"formula": ["Al0.5CoCrFeNi", "CoCrNi", "CoNi", "Co2Ni", "HfNbTaTiZr"],
                  "hv": [500.0, 300.0, 200.0, 210.0, None]}).to_csv(path, index=False)
    data = load_families(path, "mlp", target="hv", composition_column="formula")
    assert data.notes == [f"{path}: 1 row(s) with an empty 'hv' dropped"]
    assert [f.name for f in data.families] == ["Al-Co-Cr-Fe-Ni", "Co-Cr-Ni", "Co-Ni"]
    feats = data.spec["features"]
    assert feats == ["x_Al", "x_Co", "x_Cr", "x_Fe", "x_Ni"]
    first = data.families[0].inputs[0].tolist()
    fr = parse_composition("Al0.5CoCrFeNi")
    np.testing.assert_allclose(first, [fr[c[2:]] for c in feats])
    co_ni = data.families[2]
    assert co_ni.rows == [4, 5]                      # file lines (header is line 1)
    np.testing.assert_allclose(co_ni.inputs[1].tolist(), [0, 2 / 3, 0, 0, 1 / 3])
    # a later file read with the same spec gives the same encoding
    df = read_rows(path, data.spec, with_target=False)
    with pytest.warns(UserWarning, match="Hf, Nb, Ta, Ti, Zr have no fraction feature"):
        x, y = encode_rows(df, data.spec, with_target=False)
    assert y is None and x.shape == (5, 5)
    assert x[4].sum() == 0          # HfNbTaTiZr: none of its elements is an input


def test_min_family_size_drops_and_says_so(tmp_path):
    path = tmp_path / "alloys.csv"
    pd.DataFrame({"formula": ["CoNi", "Co2Ni", "CoNi2", "CrFe"],
                  "ys_MPa": [1.0, 2.0, 3.0, 4.0]}).to_csv(path, index=False)
    data = load_families(path, "composition", target="ys_MPa", composition_column="formula",
                         min_family_size=2)
    assert [f.name for f in data.families] == ["Co-Ni"]
    assert "kept 1 of 2 families (3 of 4 rows)" in data.notes[0]


@pytest.mark.parametrize("kwargs, match", [
    ({"model": "transformer", "target": "y"}, "model kind 'transformer'"),
    ({"model": "composition"}, "needs a target column"),
    ({"model": "composition", "target": "missing_MPa"}, "no column 'missing_MPa'"),
])
def test_bad_requests_are_one_line_errors(tmp_path, kwargs, match):
    path = tmp_path / "a.csv"
    path.write_text("composition,ys_MPa\nCoNi,1\n")
    with pytest.raises(InputError, match=match):
        load_families(path, **kwargs)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_families(tmp_path / "none.csv", "mlp", target="y")


def test_read_rows_names_a_missing_feature_column(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,y\n1,2,3\n")
    spec = {"kind": "mlp", "target": "y", "features": ["a", "c"]}
    with pytest.raises(InputError, match="no column 'c', which the model was trained with"):
        read_rows(path, spec)


def test_alloy_families_from_a_column_or_a_grouping(tmp_path):
    path = tmp_path / "alloys.csv"
    pd.DataFrame({"formula": ["CoNi", "Co2Ni", "CrFe", "NiO"], "lab": ["A", "B", "A", "B"],
                  "ys_MPa": [1.0, 2.0, 3.0, 4.0]}).to_csv(path, index=False)
    data = load_families(path, "composition", target="ys_MPa", composition_column="formula",
                         family="lab")
    assert [(f.name, f.rows) for f in data.families] == [("A", [2, 4]), ("B", [3, 5])]
    data = load_families(path, "composition", target="ys_MPa", composition_column="formula",
                         family="anion")
    assert [f.name for f in data.families] == ["Fe", "Ni", "O"]
    with pytest.raises(InputError, match="no column 'batch'"):
        load_families(path, "composition", target="ys_MPa", composition_column="formula",
                      family="batch")


def test_tables_with_their_own_id_column_keep_it(tmp_path):
    """A support or candidate table that already has an ``id`` column (composition or
    structure rows): its ids name the rows (the reader once raised pandas' 'cannot insert id,
    already exists')."""
    path = tmp_path / "alloys.csv"
    pd.DataFrame({"id": ["s1", "s2", "s3", "s4"], "formula": ["CoNi", "Co2Ni", "CoNi2", "CrFe"],
                  "ys_MPa": [1.0, 2.0, 3.0, 4.0]}).to_csv(path, index=False)
    data = load_families(path, "composition", target="ys_MPa", composition_column="formula",
                         min_family_size=1)
    df = read_rows(path, data.spec)
    assert list(df.columns[:1]) == ["id"] and df["ys_MPa"].tolist() == [1.0, 2.0, 3.0, 4.0]
    # (the alloy reader keeps compositions, targets and process columns: rows are named by
    # their composition as written)
    assert df["id"].tolist() == ["CoNi", "Co2Ni", "CoNi2", "CrFe"]

    from ase.build import bulk
    from ase.io import write

    rows = []
    for i, a in enumerate((3.5, 3.6, 3.7)):
        buf = io.BytesIO()
        write(buf, bulk("Cu", "fcc", a=a), format="cif")
        rows.append({"id": f"cu{i}", "structure": buf.getvalue().decode(), "B_GPa": 100.0 + i})
    spath = tmp_path / "s.csv"
    pd.DataFrame(rows).to_csv(spath, index=False)
    spec = {"kind": "cgcnn", "target": "B_GPa", "structure_column": "structure"}
    got = read_rows(spath, spec)
    assert got["id"].tolist() == ["cu0", "cu1", "cu2"]
    assert got["B_GPa"].tolist() == [100.0, 101.0, 102.0]
