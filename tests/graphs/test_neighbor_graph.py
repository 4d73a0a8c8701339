"""Crystal graphs against ASE's neighbour list, cap/tie rules, invariances and edge cases."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list

from matmeta.errors import InputError
from matmeta.graphs import FeaturizerSettings, collate, structure_to_graph
from tests.helpers import shared_dataset


def _ase_edges(atoms: Atoms, cutoff: float) -> dict:
    """(centre, neighbour, image) -> distance from ASE's neighbour list."""
    i, j, d, s = ase_neighbor_list("ijdS", atoms, cutoff)
    return {(int(a), int(b), tuple(int(x) for x in o)): float(dd)
            for a, b, dd, o in zip(i, j, d, s, strict=True)}


def _our_edges(graph) -> dict:
    src, dst = graph.edge_index.numpy()
    off = graph.cell_offset.numpy()
    return {(int(c), int(n), tuple(int(x) for x in o)): float(d)
            for n, c, o, d in zip(src, dst, off, graph.distance.numpy(), strict=True)}


def _assert_same_as_ase(atoms: Atoms, cutoff: float) -> None:
    ours = _our_edges(structure_to_graph(atoms, cutoff=cutoff, max_neighbors=None))
    ref = _ase_edges(atoms, cutoff)
    assert set(ours) == set(ref), f"{atoms.get_chemical_formula()}: pairs differ"
    err = max((abs(ours[k] - ref[k]) for k in ref), default=0.0)
    assert err < 1e-6, f"{atoms.get_chemical_formula()}: distances differ by {err}"


def test_dcdft_elements_match_ase_neighbor_list(dcdft_atoms):
    for atoms in dcdft_atoms.values():
        _assert_same_as_ase(atoms, cutoff=6.0)   # Cs's nearest neighbour sits at 5.3 A


def test_one_atom_cell_sees_its_own_images():
    atoms = bulk("Fe", "bcc", a=2.87)           # 1 atom; cutoff > a
    assert len(atoms) == 1
    _assert_same_as_ase(atoms, cutoff=4.5)
    g = structure_to_graph(atoms, cutoff=4.5, max_neighbors=None)
    assert (g.edge_index == 0).all()            # every edge is the atom and an image of itself
    assert g.edge_index.shape[1] == 8 + 6 + 12  # bcc shells at a*sqrt(3)/2, a, a*sqrt(2)


def test_triclinic_rattled_cell_matches_ase():
    rng = np.random.default_rng(3)
    cell = np.array([[4.1, 0.0, 0.0], [1.3, 3.7, 0.0], [0.9, -1.1, 5.2]])
    frac = rng.random((7, 3))
    atoms = Atoms(numbers=[8, 12, 12, 26, 8, 8, 14], scaled_positions=frac, cell=cell, pbc=True)
    atoms.positions += rng.normal(scale=3.0, size=3)  # unwrapped positions are fine too
    _assert_same_as_ase(atoms, cutoff=6.5)


def test_molecule_without_pbc_matches_ase():
    atoms = molecule("C6H6")
    _assert_same_as_ase(atoms, cutoff=3.0)
    assert not structure_to_graph(atoms, cutoff=3.0).cell_offset.any()


@pytest.mark.shared_data
def test_real_mp_structures_match_ase():
    path = shared_dataset("structures/mp_binary_elasticity.json.gz")
    with gzip.open(path, "rt") as fh:
        rows = json.load(fh)
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    rng = np.random.default_rng(0)
    for k in rng.choice(len(rows), size=25, replace=False):
        s = Structure.from_dict(rows[k]["structure"])
        _assert_same_as_ase(AseAtomsAdaptor.get_atoms(s), cutoff=5.0)


def test_edge_direction_and_fields():
    atoms = bulk("NaCl", "rocksalt", a=5.64)
    g = structure_to_graph(atoms, cutoff=4.0, max_neighbors=None)
    assert g.z.dtype == torch.long and g.edge_index.dtype == torch.long
    assert g.cell_offset.dtype == torch.long and g.cell_offset.shape == (g.num_edges, 3)
    # Row 0 is the neighbour: its image minus the centre gives the stored distance.
    pos, cell = g.pos.numpy(), g.cell.numpy()[0]
    src, dst = g.edge_index.numpy()
    vec = pos[src] + g.cell_offset.numpy() @ cell - pos[dst]
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), g.distance.numpy(), atol=1e-12)
    # Rocksalt: every nearest neighbour of Na (atom 0) is Cl.
    nearest = g.distance.numpy() < 2.9
    assert set(g.z[src[nearest & (dst == 0)]].tolist()) == {17}
    assert g.cutoff_used == 4.0 and g.num_truncated == 0


def test_cap_breaks_exact_ties_deterministically():
    atoms = bulk("Cu", "fcc", a=3.6)             # 1 atom: 12 nearest at a/sqrt(2), exact ties
    first = structure_to_graph(atoms, cutoff=3.0, max_neighbors=8)
    second = structure_to_graph(atoms, cutoff=3.0, max_neighbors=8)
    assert torch.equal(first.cell_offset, second.cell_offset)
    assert first.num_truncated == 1 and first.num_neighbors_before_cap.tolist() == [12]
    # Documented order among ties: neighbour index (all 0 here), then image offset ascending.
    i, j, d, s = ase_neighbor_list("ijdS", atoms, 3.0)
    assert len(i) == 12
    expected = sorted(tuple(int(x) for x in o) for o in s)[:8]
    assert [tuple(o) for o in first.cell_offset.tolist()] == expected
    np.testing.assert_allclose(first.distance.numpy(), 3.6 / np.sqrt(2), atol=1e-12)


def test_cap_keeps_the_nearest_per_atom():
    rng = np.random.default_rng(1)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.05, seed=2)
    atoms.numbers[rng.choice(len(atoms), 3, replace=False)] = 79
    full = structure_to_graph(atoms, cutoff=6.0, max_neighbors=None)
    capped = structure_to_graph(atoms, cutoff=6.0, max_neighbors=12)
    i, j, d, _ = ase_neighbor_list("ijdS", atoms, 6.0)
    for a in range(len(atoms)):
        want = np.sort(d[i == a])[:12]
        got = np.sort(capped.distance.numpy()[capped.edge_index[1].numpy() == a])
        np.testing.assert_allclose(got, want, atol=1e-9)
    assert capped.num_truncated == len(atoms)
    assert full.num_truncated == 0 and full.num_edges == len(i)


def _distance_multiset(atoms: Atoms, cap: int | None) -> np.ndarray:
    return np.sort(structure_to_graph(atoms, cutoff=5.5, max_neighbors=cap).distance.numpy())


@pytest.mark.parametrize("cap", [None, 12])
def test_rotation_translation_permutation_invariance(cap):
    rng = np.random.default_rng(5)
    atoms = bulk("ZnO", "wurtzite", a=3.25, c=5.2).repeat((1, 1, 2))
    atoms.rattle(0.03, seed=4)
    ref = _distance_multiset(atoms, cap)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))               # proper rotation keeps the cell right-handed
    moved = atoms.copy()
    moved.set_cell(atoms.cell.array @ q.T, scale_atoms=True)
    moved.positions += rng.normal(size=3) * 4
    perm = rng.permutation(len(atoms))
    moved = moved[perm]
    np.testing.assert_allclose(_distance_multiset(moved, cap), ref, atol=1e-9)


def test_supercell_gives_the_same_per_atom_distances():
    atoms = bulk("GaAs", "zincblende", a=5.65)
    atoms.rattle(0.02, seed=7)
    small = structure_to_graph(atoms, cutoff=6.0, max_neighbors=None)
    big_atoms = atoms.repeat((2, 2, 2))           # atom k of the supercell copies atom k % n
    big = structure_to_graph(big_atoms, cutoff=6.0, max_neighbors=None)
    n = len(atoms)
    for k in range(len(big_atoms)):
        a = np.sort(small.distance.numpy()[small.edge_index[1].numpy() == k % n])
        b = np.sort(big.distance.numpy()[big.edge_index[1].numpy() == k])
        np.testing.assert_allclose(a, b, atol=1e-9)


def _isolated():
    # Two atoms 2.5 A apart and a third 8 A from both, in a 30 A box.
    return Atoms("Cu2Au", positions=[[5, 5, 5], [7.5, 5, 5], [5, 13, 5]], cell=[30, 30, 30],
                 pbc=True)


def test_atom_without_neighbour_is_an_error_naming_it():
    with pytest.raises(InputError, match=r"atom 2 \(Au\): no neighbour within 6 A") as exc:
        structure_to_graph(_isolated(), cutoff=6.0)
    assert "\n" not in str(exc.value)


def test_grow_cutoff_records_the_cutoff_used():
    atoms = _isolated()
    settings = FeaturizerSettings(cutoff=6.0, grow_cutoff=True)
    g = structure_to_graph(atoms, settings=settings)
    nearest = min(np.linalg.norm(atoms.positions[2] - atoms.positions[:2], axis=1))
    k = int(np.ceil(np.log(nearest / 6.0) / np.log(1.25)))
    assert g.cutoff_used == pytest.approx(6.0 * 1.25**k)
    assert g.cutoff_used > nearest > g.cutoff_used / 1.25
    assert set(g.edge_index[1].tolist()) == {0, 1, 2}


def test_atoms_closer_than_min_distance_are_refused():
    atoms = Atoms("Cu2", positions=[[0, 0, 0], [0.3, 0, 0]], cell=[4, 4, 4], pbc=True)
    with pytest.raises(InputError, match=r"atoms 0 and 1 \(Cu, Cu\) are 0.300 A apart"):
        structure_to_graph(atoms)


def test_settings_and_explicit_arguments():
    s = FeaturizerSettings(cutoff=4.0, max_neighbors=4)
    atoms = bulk("Cu", "fcc", a=3.6)
    assert structure_to_graph(atoms, settings=s).num_edges == 4
    assert structure_to_graph(atoms, settings=s, max_neighbors=None).num_edges == 12 + 6
    assert structure_to_graph(atoms, settings=s, cutoff=3.0, max_neighbors=None).num_edges == 12


def test_graphs_collate_into_a_batch():
    settings = FeaturizerSettings(cutoff=5.0, max_neighbors=12)
    graphs = [structure_to_graph(bulk(el), settings=settings) for el in ("Cu", "Fe", "Si")]
    batch = collate(graphs, settings)
    assert batch.num_graphs == 3
    assert batch.edge_index.shape[1] == sum(g.num_edges for g in graphs)
    assert int(batch.edge_index.max()) == batch.z.shape[0] - 1
