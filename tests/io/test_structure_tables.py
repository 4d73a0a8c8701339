"""Structure tables (the real MP and CMR files) read into validated DataFrames."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Structure
from pymatgen.io.cif import CifParser

from matmeta.errors import InputError
from matmeta.io import Crystal, read_structure_table
from tests.helpers import shared_dataset


@pytest.mark.shared_data
def test_mp_binary_elasticity_json():
    path = shared_dataset("structures/mp_binary_elasticity.json.gz")
    df = read_structure_table(path, target_column=["bulk_modulus_vrh", "shear_modulus_vrh"],
                              family_column="family", id_column="mp_id")
    with gzip.open(path, "rt") as fh:
        rows = json.load(fh)
    assert len(df) == len(rows) == 3398
    assert df["bulk_modulus_vrh"].dtype == np.float64
    assert df["family"].nunique() == 63
    assert df.attrs["target_columns"] == ["bulk_modulus_vrh", "shear_modulus_vrh"]
    rng = np.random.default_rng(0)
    for k in rng.choice(len(rows), size=100, replace=False):
        ref = Structure.from_dict(rows[k]["structure"])   # pymatgen's own reader as reference
        c = df["structure"].iloc[k]
        assert isinstance(c, Crystal) and rows[k]["mp_id"] in c.source
        np.testing.assert_array_equal(c.numbers, ref.atomic_numbers)
        np.testing.assert_allclose(c.positions, ref.cart_coords, atol=1e-9)
        np.testing.assert_allclose(c.cell, ref.lattice.matrix, atol=1e-12)
        assert df["bulk_modulus_vrh"].iloc[k] == float(rows[k]["bulk_modulus_vrh"])


@pytest.mark.shared_data
def test_perovskite_csv_with_cif_column():
    path = shared_dataset("structures/perovskites_cmr.csv.gz")
    raw = pd.read_csv(path, nrows=40)          # CIF parsing is slow: a slice is enough here
    raw.attrs["source"] = str(path)
    df = read_structure_table(raw, structure_column="cif", target_column="heat_all",
                              family_column="family")
    assert "cif" not in df.columns and len(df) == 40
    for k in range(40):
        ref = CifParser.from_str(raw["cif"].iloc[k]).parse_structures(primitive=False)[0]
        c = df["structure"].iloc[k]
        assert c.num_atoms == len(ref) == 5 and c.source == f"{path}, row {k}"
        np.testing.assert_allclose(c.cell, ref.lattice.matrix, atol=1e-9)
        frac = np.linalg.solve(c.cell.T, c.positions.T).T
        for site in ref:                        # same species at the same place, mod lattice
            d = frac - site.frac_coords
            d -= np.rint(d)
            match = np.abs(d).max(axis=1) < 1e-8
            assert match.sum() == 1 and c.numbers[match][0] == site.specie.Z


def test_family_column_is_copied_and_checked(tmp_path):
    from ase.build import bulk
    from pymatgen.io.ase import AseAtomsAdaptor

    d = AseAtomsAdaptor.get_structure(bulk("Cu", "fcc", a=3.6)).as_dict()
    path = tmp_path / "t.json"
    path.write_text(json.dumps([{"s": d, "B_GPa": "140.5", "host": "Cu"},
                                {"s": d, "B_GPa": "141", "host": None}]))
    # JSON rows are numbered from 1 (the second object here).
    with pytest.raises(InputError, match=r"row 2, column 'host': empty family"):
        read_structure_table(path, structure_column="s", family_column="host")
    path.write_text(json.dumps([{"s": d, "B_GPa": "140.5", "host": "Cu"}]))
    df = read_structure_table(path, structure_column="s", target_column="B_GPa",
                              family_column="host")
    assert df["family"].tolist() == ["Cu"] and df["B_GPa"].tolist() == [140.5]


def test_paths_in_a_table_are_relative_to_the_table(tmp_path):
    import ase.io
    from ase.build import bulk

    (tmp_path / "cells").mkdir()
    ase.io.write(tmp_path / "cells" / "Cu.cif", bulk("Cu", "fcc", a=3.6))
    table = tmp_path / "t.csv"
    pd.DataFrame({"file": ["cells/Cu.cif"], "B_GPa": [140.0]}).to_csv(table, index=False)
    df = read_structure_table(table, target_column="B_GPa")
    c = df["structure"].iloc[0]
    assert c.numbers.tolist() == [29] and c.source == str(tmp_path / "cells" / "Cu.cif")
