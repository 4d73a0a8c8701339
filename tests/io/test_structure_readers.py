"""Every structure format reads into the same Crystal as ASE/pymatgen's own readers give."""

from __future__ import annotations

import json
import warnings

import ase.io
import numpy as np
import pandas as pd
import pytest
from ase.build import bulk
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor
from pymatgen.io.cif import CifWriter

from matmeta.io import Crystal, read_structure, read_structures


def _atoms():
    atoms = bulk("NaCl", "rocksalt", a=5.64).repeat((1, 1, 2))
    atoms.rattle(0.02, seed=0)
    return atoms


def _same_structure(c: Crystal, atoms) -> None:
    """Same species, cell and positions (modulo lattice translations) as ``atoms``."""
    np.testing.assert_array_equal(c.numbers, atoms.numbers)
    np.testing.assert_allclose(c.cell, atoms.cell.array, atol=1e-5)
    frac = np.linalg.solve(c.cell.T, (c.positions - atoms.positions).T).T
    np.testing.assert_allclose(frac - np.rint(frac), 0.0, atol=1e-5)


def test_cif_file(tmp_path):
    atoms = _atoms()
    path = tmp_path / "NaCl.cif"
    CifWriter(AseAtomsAdaptor.get_structure(atoms)).write_file(path)
    crystal = read_structure(path)
    ref = ase.io.read(path)                     # ASE's own CIF reader as the reference
    assert sorted(crystal.numbers) == sorted(ref.numbers)
    np.testing.assert_allclose(crystal.to_ase().cell.cellpar(), ref.cell.cellpar(), atol=1e-5)
    assert crystal.source == str(path)
    assert crystal.volume == pytest.approx(ref.get_volume())


def test_poscar_and_contcar(tmp_path):
    atoms = _atoms()
    for name in ("POSCAR", "CONTCAR", "x.vasp"):
        ase.io.write(tmp_path / name, atoms, format="vasp")
        _same_structure(read_structure(tmp_path / name), atoms)


def test_extxyz_frames(tmp_path):
    frames = [_atoms(), bulk("Cu", "fcc", a=3.6, cubic=True)]
    ase.io.write(tmp_path / "two.extxyz", frames, format="extxyz")
    crystals = read_structures(tmp_path / "two.extxyz")
    assert len(crystals) == 2 and crystals[1].source.endswith("frame 1")
    for c, a in zip(crystals, frames, strict=True):
        _same_structure(c, a)


def test_pymatgen_objects_dicts_and_json(tmp_path):
    atoms = _atoms()
    s = AseAtomsAdaptor.get_structure(atoms)
    for obj in (s, s.as_dict(), json.dumps(s.as_dict()), atoms, Crystal.from_arrays(
            atoms.numbers, atoms.positions, atoms.cell.array)):
        _same_structure(read_structure(obj), atoms)
    (tmp_path / "s.json").write_text(json.dumps([s.as_dict(), s.as_dict()]))
    assert len(read_structures(tmp_path / "s.json")) == 2


def test_fast_dict_reader_matches_pymatgen():
    s = Structure.from_spacegroup("Fm-3m", [[5.6, 0, 0], [0, 5.6, 0], [0, 0, 5.6]],
                                  ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    d = s.as_dict()
    for site in d["sites"]:
        del site["xyz"]                         # fractional-only dicts are read too
    c = read_structure(d)
    ref = Structure.from_dict(d)
    np.testing.assert_allclose(c.positions, ref.cart_coords, atol=1e-10)
    np.testing.assert_array_equal(c.numbers, ref.atomic_numbers)


def test_dataframe_with_mixed_structure_column(tmp_path):
    atoms = _atoms()
    s = AseAtomsAdaptor.get_structure(atoms)
    ase.io.write(tmp_path / "POSCAR", atoms, format="vasp")
    df = pd.DataFrame({"structure": [str(CifWriter(s)), s.as_dict(), str(tmp_path / "POSCAR"),
                                     s, atoms]})
    crystals = read_structures(df)
    assert len(crystals) == 5
    for c in crystals:
        assert sorted(c.numbers) == sorted(atoms.numbers)
        assert c.volume == pytest.approx(atoms.get_volume(), rel=1e-6)
    assert crystals[0].source == "<DataFrame>, row 0, column 'structure'"
    assert crystals[2].source == str(tmp_path / "POSCAR")


def test_folder_and_list(tmp_path):
    atoms = _atoms()
    ase.io.write(tmp_path / "b.cif", atoms)
    ase.io.write(tmp_path / "a.vasp", atoms, format="vasp")
    (tmp_path / "notes.txt").write_text("not a structure")
    crystals = read_structures(tmp_path)
    assert [c.source.rsplit("/", 1)[-1] for c in crystals] == ["a.vasp", "b.cif"]
    mixed = read_structures([tmp_path / "a.vasp", atoms, AseAtomsAdaptor.get_structure(atoms)])
    assert len(mixed) == 3 and mixed[1].source == "list item 1"


def test_disorder_majority_keeps_majority_species_and_says_so(tmp_path):
    path = tmp_path / "CuAu.cif"
    path.write_text(_partial_cif())
    with pytest.warns(UserWarning, match=r"1 disordered site\(s\) replaced by their majority"):
        c = read_structure(path, disorder="majority")
    assert sorted(c.numbers.tolist()) == [29] * 3 + [79]    # Au 0.75 / Cu 0.25 site -> Au


def test_reading_a_cif_emits_no_library_warnings(tmp_path):
    path = tmp_path / "x.cif"
    path.write_text(_partial_cif().replace("Au Au1 0 0 0 0.75\n Cu Cu3 0 0 0 0.25",
                                           "Au Au1 0 0 0 1"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_structure(path)


def _partial_cif() -> str:
    return """data_test
_cell_length_a 3.9
_cell_length_b 3.9
_cell_length_c 3.9
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
 _atom_site_type_symbol
 _atom_site_label
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
 _atom_site_occupancy
 Au Au1 0 0 0 0.75
 Cu Cu3 0 0 0 0.25
 Cu Cu1 0.5 0.5 0 1
 Cu Cu2 0.5 0 0.5 1
 Cu Cu4 0 0.5 0.5 1
"""


def test_crystal_round_trips_to_pymatgen_and_ase():
    atoms = _atoms()
    c = read_structure(atoms)
    _same_structure(read_structure(c.to_pymatgen()), atoms)
    _same_structure(read_structure(c.to_ase()), atoms)
    assert c.formula == "Na2Cl2"


def test_pymatgen_molecule_and_generators():
    from pymatgen.core import Molecule

    m = Molecule(["C", "O"], [[0, 0, 0], [0, 0, 1.13]])
    (c,) = read_structures(x for x in [m])
    assert c.numbers.tolist() == [6, 8] and not c.pbc.any() and c.volume == 0.0
    np.testing.assert_allclose(c.positions, m.cart_coords)


@pytest.mark.filterwarnings("ignore::DeprecationWarning:spglib")   # CifWriter's symmetry search
def test_cif_with_symmetry_operations_is_expanded(tmp_path):
    s = Structure.from_spacegroup("Fm-3m", [[5.64, 0, 0], [0, 5.64, 0], [0, 0, 5.64]],
                                  ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    path = tmp_path / "NaCl_sym.cif"
    CifWriter(s, symprec=0.01).write_file(path)        # asymmetric unit + symmetry ops
    assert path.read_text().count("Na  Na") < 4
    c = read_structure(path)
    assert sorted(c.numbers.tolist()) == [11] * 4 + [17] * 4
    assert c.volume == pytest.approx(5.64**3)
