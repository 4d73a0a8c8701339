"""The datasets shipped in data/ against the sources they came from (ASE's data, ASE's EMT)."""

from __future__ import annotations

import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.eos import EquationOfState
from ase.units import GPa

from matmeta.errors import InputError
from matmeta.graphs import build_graphs
from matmeta.io import load_builtin


def test_dcdft_elements_match_ase_collection(dcdft_atoms):
    from ase.collections import dcdft

    df = load_builtin("dcdft_elements")
    assert len(df) == len(dcdft_atoms) == 71
    assert df["family"].nunique() == 6 and df["bulk_modulus_GPa"].dtype == np.float64
    for _, row in df.iterrows():
        atoms = dcdft_atoms[row["name"]]
        assert row["bulk_modulus_GPa"] == dcdft.data[row["name"]]["wien2k_B"]
        assert row["volume_A3_per_atom"] == dcdft.data[row["name"]]["wien2k_volume"]
        c = row["structure"]
        np.testing.assert_array_equal(c.numbers, atoms.numbers)
        np.testing.assert_allclose(c.positions, atoms.positions, atol=1e-9)


def test_emt_alloys_agree_with_a_fresh_emt_calculation():
    df = load_builtin("emt_binary_alloys").set_index("name")
    assert len(df) == 154 and df["family"].nunique() == 22
    assert (df["family"].value_counts() == 7).all()
    pure = df[df["family"] == "pure"]
    np.testing.assert_allclose(pure["mixing_energy_eV_per_atom"], 0.0, atol=1e-12)
    for name in ("Cu-Au L1_2_A3B", "Ni-Pt L1_0_AB", "Al-Ni B2_AB"):
        row = df.loc[name]
        atoms = row["structure"].to_ase()
        atoms.calc = EMT()
        n = len(atoms)
        # The stored structure sits at the EOS minimum: its EMT energy is the stored E0.
        assert atoms.get_potential_energy() / n == pytest.approx(row["energy_eV_per_atom"],
                                                                 abs=2e-4)
        a, b = row["A"], row["B"]
        e_ref = (1 - row["x_B"]) * pure.loc[f"{a} fcc", "energy_eV_per_atom"] + \
            row["x_B"] * pure.loc[f"{b} fcc", "energy_eV_per_atom"]
        assert row["mixing_energy_eV_per_atom"] == pytest.approx(
            row["energy_eV_per_atom"] - e_ref, abs=3e-8)    # file stores 8 decimals
        assert row["x_B"] == pytest.approx(np.mean(np.array(atoms.get_chemical_symbols()) == b))
        # Bulk modulus from an independent finer EOS around the stored cell.
        cell = atoms.cell.array.copy()
        vols, ens = [], []
        for s in np.linspace(0.97, 1.03, 11):
            atoms.set_cell(cell * s ** (1 / 3), scale_atoms=True)
            vols.append(atoms.get_volume())
            ens.append(atoms.get_potential_energy())
        _, _, bulk = EquationOfState(vols, ens, eos="birchmurnaghan").fit()
        assert bulk / GPa == pytest.approx(row["bulk_modulus_GPa"], rel=0.03)


def test_builtin_sets_build_graphs_at_default_settings():
    for name in ("dcdft_elements", "emt_binary_alloys"):
        graphs = build_graphs(load_builtin(name)["structure"], workers=1, progress=False)
        assert all(g.num_edges > 0 and g.cutoff_used == 6.0 for g in graphs)


def test_unknown_builtin_name():
    with pytest.raises(InputError, match="unknown built-in dataset 'nope'; expected one of"):
        load_builtin("nope")
