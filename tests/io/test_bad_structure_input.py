"""Each kind of bad input gives a one-line InputError naming the file (atom, row) at fault."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from ase import Atoms

from matmeta.errors import InputError
from matmeta.graphs import build_graphs, structure_to_graph
from matmeta.io import Crystal, read_structure, read_structure_table, read_structures
from tests.io.test_structure_readers import _partial_cif

_GOOD_CIF = _partial_cif().replace("Au Au1 0 0 0 0.75\n Cu Cu3 0 0 0 0.25", "Au Au1 0 0 0 1")


def _raises(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(InputError, match=match) as exc:
        fn(*args, **kwargs)
    message = str(exc.value)
    assert "\n" not in message, message
    return message


def test_malformed_cif(tmp_path):
    path = tmp_path / "junk.cif"
    path.write_text("hello, this is not a CIF\n")
    _raises(rf"{path}: cannot read CIF .*expected a complete CIF", read_structure, path)


def test_truncated_cif(tmp_path):
    path = tmp_path / "cut.cif"
    path.write_text(_GOOD_CIF[: _GOOD_CIF.index("Cu Cu1") + 9])
    _raises(rf"{path}: cannot read CIF", read_structure, path)


def test_partial_occupancy_refused_by_default(tmp_path):
    path = tmp_path / "CuAu.cif"
    path.write_text(_partial_cif())
    _raises(rf"{path}, atom \d+ \(\w+\): partial occupancy \(Au:0.75, Cu:0.25\); expected an "
            r"ordered structure \(pass disorder='majority'", read_structure, path)


def test_unknown_element_in_cif_poscar_dict_and_numbers(tmp_path):
    cif = tmp_path / "xx.cif"
    cif.write_text(_GOOD_CIF.replace("Au Au1", "Xx Xx1"))
    _raises(rf"{cif}, atom \d \(Xx1\): unknown element 'Xx'", read_structure, cif)
    poscar = tmp_path / "POSCAR"
    poscar.write_text("bad\n1.0\n3 0 0\n0 3 0\n0 0 3\nQq\n1\nDirect\n0 0 0\n")
    _raises(rf"{poscar}, atom 0 \(Qq0\+\): unknown element 'Qq'", read_structure, poscar)
    d = {"lattice": {"matrix": np.eye(3).tolist()},
         "sites": [{"species": [{"element": "Zz", "occu": 1}], "abc": [0, 0, 0]}]}
    _raises(r"atom 0: unknown element 'Zz'", read_structure, d)
    _raises(r"atom 1: unknown element \(atomic number 0\)", Crystal.from_arrays,
            [29, 0], np.zeros((2, 3)), np.eye(3) * 3)


def test_atoms_too_close(tmp_path):
    path = tmp_path / "close.cif"
    path.write_text(_GOOD_CIF.replace("Cu Cu4 0 0.5 0.5 1", "Cu Cu4 0.05 0.05 0.05 1"))
    crystal = read_structure(path)
    _raises(rf"{path}: atoms \d and \d \((Au|Cu), (Au|Cu)\) are 0.338 A apart; expected at "
            r"least min_distance=0.5 A", structure_to_graph, crystal)


@pytest.mark.parametrize("cell, what", [
    (np.diag([3.0, 3.0, 0.0]), "zero"),
    (np.diag([3.0, 3.0, -3.0]), "negative"),
    ([[3, 0, 0], [3, 0, 0], [0, 0, 3]], "degenerate"),
])
def test_zero_or_negative_cell_volume(cell, what):
    atoms = Atoms("Cu", positions=[[0, 0, 0]], cell=cell, pbc=True)
    _raises(r"cell volume -?\d.*A\^3; expected a positive volume", read_structure, atoms)


def test_nan_and_infinite_targets(tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame({"cif": [_GOOD_CIF] * 3,
                  "B_GPa": [100.0, float("nan"), float("inf")]}).to_csv(path, index=False)
    # Row numbers are spreadsheet rows: header = row 1, first data row = row 2.
    _raises(rf"{path}, row 3, column 'B_GPa': target nan is not a finite number",
            read_structure_table, path, target_column="B_GPa")
    with pytest.warns(UserWarning, match="dropped 2 row"):
        df = read_structure_table(path, target_column="B_GPa", drop_bad_targets=True)
    assert len(df) == 1 and df.attrs["dropped_rows"] == [3, 4]
    text = tmp_path / "s.csv"
    pd.DataFrame({"cif": [_GOOD_CIF], "B_GPa": ["abc"]}).to_csv(text, index=False)
    _raises(r"row 2, column 'B_GPa': target 'abc' is not a finite number",
            read_structure_table, text, target_column="B_GPa")


def test_empty_inputs(tmp_path):
    _raises(r"empty list of structures", read_structures, [])
    _raises(r"empty list of structures", build_graphs, [])
    _raises(r"empty table", read_structures, pd.DataFrame({"structure": []}))
    empty = tmp_path / "empty.csv"
    empty.write_text("cif,B_GPa\n")
    _raises(rf"{empty}: empty table", read_structure_table, empty)


def test_folder_without_structure_files(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing here")
    _raises(rf"{tmp_path}: folder holds no structure files; expected \.cif", read_structures,
            tmp_path)


def test_missing_file_and_columns(tmp_path):
    _raises(r"no such file or folder", read_structure, str(tmp_path / "nope.cif"))
    path = tmp_path / "t.csv"
    pd.DataFrame({"text": ["x"], "y": [1.0]}).to_csv(path, index=False)
    _raises(r"no structure column; expected one of", read_structure_table, path)
    _raises(r"no target column 'B'", read_structure_table, path, structure_column="text",
            target_column="B")


def test_bad_row_in_a_table_names_the_row(tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame({"cif": [_GOOD_CIF, "garbage that is not a structure\nline"],
                  "y": [1.0, 2.0]}).to_csv(path, index=False)
    _raises(rf"{path}, row 3, column 'cif': cannot read POSCAR", read_structure_table, path)
