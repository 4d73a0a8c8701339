"""Generate the shipped binary-alloy set with ASE's EMT calculator (``data/structures``).

Run ``python -m matmeta.io._emt_alloys`` (about 40 s on one loaded core) to rewrite
``data/structures/emt_binary_alloys.json`` and its CSV summary. Every row is *generated* with
EMT (Jacobsen, Stoltze & Norskov, Surf. Sci. 366, 394 (1996)), a fast effective-medium
potential: its numbers are self-consistent but not DFT or experiment.

For each pair of Cu, Ag, Au, Ni, Pd, Pt, Al and each ordered prototype (fcc-based L1_2 A3B
and AB3, L1_0, L1_1; bcc-based B2, D0_3 A3B and AB3), non-cubic cells first relax their shape
(BFGS on the cell, symmetry kept by the symmetric start), then an equation of state
(Birch-Murnaghan, 7 volumes within +-8 %, isotropic scaling, refitted once around the minimum
if it falls near the edge) gives the equilibrium energy, volume and bulk modulus.
Mixing energy per atom is relative to the pure fcc elements treated the same way.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import warnings
from pathlib import Path

import numpy as np

__all__ = ["ELEMENTS", "PROTOTYPES", "generate_emt_alloys", "main"]

ELEMENTS = ("Al", "Ni", "Cu", "Pd", "Ag", "Pt", "Au")

# prototype -> (description, B fraction, cubic). Cubic cells have volume as their only free
# parameter (the equation of state fixes it); the others relax cell shape first.
PROTOTYPES = {
    "fcc": ("pure element, fcc (A1)", 0.0, True),
    "L1_2_A3B": ("Cu3Au-type L1_2, A3B", 0.25, True),
    "L1_2_AB3": ("Cu3Au-type L1_2, AB3", 0.75, True),
    "L1_0_AB": ("CuAu-type L1_0, AB", 0.5, False),
    "L1_1_AB": ("CuPt-type L1_1, AB", 0.5, False),
    "B2_AB": ("CsCl-type B2, AB", 0.5, True),
    "D0_3_A3B": ("Fe3Al-type D0_3, A3B", 0.25, True),
    "D0_3_AB3": ("Fe3Al-type D0_3, AB3", 0.75, True),
}

_EOS_STRAIN = 0.08      # volume range of the fit, +-8 %
_EOS_POINTS = 7


def _fcc_a(symbol: str) -> float:
    from ase.data import atomic_numbers, reference_states

    ref = reference_states[atomic_numbers[symbol]]
    return float(ref["a"])


def _prototype(name: str, a_el: str, b_el: str):
    """Atoms of prototype ``name`` with A = a_el, B = b_el, at a Vegard-law volume."""
    from ase import Atoms

    x_b = PROTOTYPES[name][1]
    v_atom = ((1 - x_b) * _fcc_a(a_el) ** 3 + x_b * _fcc_a(b_el) ** 3) / 4.0
    if name == "fcc":
        a = (4 * v_atom) ** (1 / 3)
        cell = 0.5 * a * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]])
        return Atoms(a_el, positions=[[0, 0, 0]], cell=cell, pbc=True)
    if name.startswith("L1_2"):
        a = (4 * v_atom) ** (1 / 3)
        minority, majority = (b_el, a_el) if name.endswith("A3B") else (a_el, b_el)
        frac = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
        return Atoms([minority, majority, majority, majority], scaled_positions=frac,
                     cell=np.eye(3) * a, pbc=True)
    if name.startswith("D0_22"):
        a = (4 * v_atom) ** (1 / 3)
        minority, majority = (b_el, a_el) if name.endswith("A3B") else (a_el, b_el)
        frac = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.25], [0, 0.5, 0.25],
                [0, 0, 0.5], [0.5, 0, 0.75], [0, 0.5, 0.75]]
        return Atoms([minority, minority] + [majority] * 6, scaled_positions=frac,
                     cell=np.diag([a, a, 2 * a]), pbc=True)
    if name == "L1_0_AB":
        a = (4 * v_atom) ** (1 / 3)
        frac = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
        return Atoms([a_el, a_el, b_el, b_el], scaled_positions=frac, cell=np.eye(3) * a,
                     pbc=True)
    if name == "L1_1_AB":
        # Alternating (111) planes: in a 2x2x2 supercell of the primitive fcc cell, the plane
        # of site n1 a1 + n2 a2 + n3 a3 is n1 + n2 + n3; species by its parity.
        a = (4 * v_atom) ** (1 / 3)
        prim = 0.5 * a * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]])
        sites = list(itertools.product(range(2), repeat=3))
        symbols = [a_el if sum(n) % 2 == 0 else b_el for n in sites]
        return Atoms(symbols, positions=np.array(sites, float) @ prim, cell=2 * prim, pbc=True)
    if name == "B2_AB":
        a = (2 * v_atom) ** (1 / 3)
        return Atoms([a_el, b_el], scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]],
                     cell=np.eye(3) * a, pbc=True)
    if name.startswith("D0_3"):
        # fcc lattice (conventional bcc edge a) with a four-site basis along the body diagonal.
        a = (16 * v_atom) ** (1 / 3)
        minority, majority = (b_el, a_el) if name.endswith("A3B") else (a_el, b_el)
        prim = 0.5 * a * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]])
        positions = a * np.array([[0, 0, 0], [0.25, 0.25, 0.25], [0.5, 0.5, 0.5],
                                  [0.75, 0.75, 0.75]])
        return Atoms([minority, majority, majority, majority], positions=positions, cell=prim,
                     pbc=True)
    raise KeyError(name)


def _eos(atoms, cell0: np.ndarray) -> tuple[float, float, float]:
    from ase.eos import EquationOfState

    volumes, energies = [], []
    for s in np.linspace(1 - _EOS_STRAIN, 1 + _EOS_STRAIN, _EOS_POINTS):
        atoms.set_cell(cell0 * s ** (1 / 3), scale_atoms=True)
        volumes.append(atoms.get_volume())
        energies.append(atoms.get_potential_energy())
    return EquationOfState(volumes, energies, eos="birchmurnaghan").fit()


def _relax_and_fit(atoms, cubic: bool) -> dict[str, float]:
    from ase.calculators.emt import EMT
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS
    from ase.units import GPa

    atoms = atoms.copy()
    atoms.calc = EMT()
    if not cubic:
        # Symmetric start, symmetric gradients: BFGS keeps the prototype's symmetry.
        BFGS(FrechetCellFilter(atoms), logfile=None).run(fmax=2e-3, steps=100)
    cell0 = atoms.get_cell().array.copy()
    v0, e0, b = _eos(atoms, cell0)
    vol = abs(np.linalg.det(cell0))
    if not (1 - _EOS_STRAIN / 2) < v0 / vol < (1 + _EOS_STRAIN / 2):
        # Minimum near the edge of the sampled range: refit centred on it.
        cell0 = cell0 * (v0 / vol) ** (1 / 3)
        v0, e0, b = _eos(atoms, cell0)
    atoms.set_cell(cell0 * (v0 / abs(np.linalg.det(cell0))) ** (1 / 3), scale_atoms=True)
    atoms.calc = None
    n = len(atoms)
    return {"atoms": atoms, "energy_eV_per_atom": float(e0) / n,
            "volume_A3_per_atom": float(v0) / n, "bulk_modulus_GPa": float(b) / GPa}


def _compute(job: tuple[str, str, str]) -> dict:
    proto, a_el, b_el = job
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _relax_and_fit(_prototype(proto, a_el, b_el), PROTOTYPES[proto][2])


def generate_emt_alloys(elements: tuple[str, ...] = ELEMENTS, workers: int = 2) -> list[dict]:
    """Rows of the generated set: structure dict, family, energies, volume, bulk modulus.

    Example:
        >>> rows = generate_emt_alloys(("Cu", "Au"), workers=1)
        >>> [r["formula"] for r in rows][:3]
    """
    import multiprocessing as mp

    from pymatgen.io.ase import AseAtomsAdaptor

    pure: dict[str, dict] = {}
    rows: list[dict] = []
    jobs = [("fcc", el, el) for el in elements] + [
        (proto, a_el, b_el) for a_el, b_el in itertools.combinations(elements, 2)
        for proto in PROTOTYPES if proto != "fcc"]
    if workers > 1:
        with mp.get_context("spawn").Pool(workers) as pool:
            results = dict(zip(jobs, pool.map(_compute, jobs, chunksize=4), strict=True))
    else:
        results = {job: _compute(job) for job in jobs}

    def add(res: dict, a_el: str, b_el: str | None, proto: str, family: str) -> None:
        atoms = res["atoms"]
        x_b = float(np.mean(atoms.get_chemical_symbols() == np.array(b_el))) if b_el else 0.0
        e_ref = (1 - x_b) * pure[a_el]["energy_eV_per_atom"] + (
            x_b * pure[b_el]["energy_eV_per_atom"] if b_el else 0.0)
        structure = AseAtomsAdaptor.get_structure(atoms)
        pair = f"{a_el}-{b_el}" if b_el else a_el
        rows.append({
            "name": f"{pair} {proto}",
            "formula": structure.composition.reduced_formula,
            "family": family,
            "A": a_el,
            "B": b_el or "",
            "prototype": proto,
            "x_B": x_b,
            "num_atoms": len(atoms),
            "energy_eV_per_atom": res["energy_eV_per_atom"],
            "mixing_energy_eV_per_atom": res["energy_eV_per_atom"] - e_ref,
            "volume_A3_per_atom": res["volume_A3_per_atom"],
            "bulk_modulus_GPa": res["bulk_modulus_GPa"],
            "structure": structure.as_dict(),
        })

    for el in elements:
        pure[el] = results[("fcc", el, el)]
        add(pure[el], el, None, "fcc", "pure")
    for proto, a_el, b_el in jobs[len(elements):]:
        add(results[(proto, a_el, b_el)], a_el, b_el, proto, f"{a_el}-{b_el}")
    return rows


def _round(obj, digits: int = 8):
    if isinstance(obj, float):
        return round(obj, digits)
    if isinstance(obj, dict):
        return {k: _round(v, digits) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round(v, digits) for v in obj]
    return obj


def write_emt_alloys(folder: Path, rows: list[dict]) -> tuple[Path, Path]:
    """Write ``emt_binary_alloys.json`` and ``emt_binary_alloys.csv`` (no structures) atomically."""
    from matmeta.checkpoint import atomic_write_text

    payload = {
        "description": "GENERATED with ASE's EMT calculator by matmeta.io._emt_alloys; "
                       "not DFT or experimental data",
        "units": {"energy_eV_per_atom": "eV/atom", "mixing_energy_eV_per_atom": "eV/atom",
                  "volume_A3_per_atom": "angstrom^3/atom", "bulk_modulus_GPa": "GPa"},
        "data": [_round(r) for r in rows],
    }
    json_path = atomic_write_text(folder / "emt_binary_alloys.json",
                                  json.dumps(payload, separators=(",", ":")) + "\n")
    buf = io.StringIO()
    cols = [k for k in rows[0] if k != "structure"]
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in cols})
    csv_path = atomic_write_text(folder / "emt_binary_alloys.csv", buf.getvalue())
    return json_path, csv_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m matmeta.io._emt_alloys",
        description="Generate the EMT binary-alloy set (mixing energy in eV/atom, bulk modulus "
                    "in GPa) into data/structures.")
    default = Path(__file__).resolve().parents[2] / "data" / "structures"
    parser.add_argument("--out", type=Path, default=default, help=f"folder (default {default})")
    parser.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    args = parser.parse_args(argv)
    rows = generate_emt_alloys(workers=args.workers)
    paths = write_emt_alloys(args.out, rows)
    fams = sorted({r["family"] for r in rows})
    print(f"wrote {len(rows)} rows in {len(fams)} families to {paths[0]} and {paths[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
