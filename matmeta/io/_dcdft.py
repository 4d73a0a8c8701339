"""Export ASE's Delta-codes elemental crystals to ``data/structures/dcdft_elements.json``.

Run ``python -m matmeta.io._dcdft``. The structures and the per-element reference data
(WIEN2k all-electron PBE bulk modulus B0 in GPa, its pressure derivative B0', equilibrium volume
in cubic angstrom per atom, and experimental values where ASE has them) come from
``ase.collections.dcdft``, ASE's copy of the Delta test set (Lejaeghere et al., Science 351,
aad3000 (2016)); ASE is LGPL-2.1-or-later. Families group elements by periodic-table block.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np

__all__ = ["FAMILIES", "export_dcdft", "family_of", "main"]

# Periodic-table groupings used as families for meta-learning across element kinds.
FAMILIES = {
    "s-block": ("H", "Li", "Be", "Na", "Mg", "K", "Ca", "Rb", "Sr", "Cs", "Ba"),
    "3d transition": ("Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn"),
    "4d transition": ("Y", "Zr", "Nb", "Mo", "Tc", "Ru", "Rh", "Pd", "Ag", "Cd"),
    "5d transition": ("Lu", "Hf", "Ta", "W", "Re", "Os", "Ir", "Pt", "Au", "Hg"),
    "p-block": ("B", "C", "N", "O", "F", "Al", "Si", "P", "S", "Cl", "Ga", "Ge", "As", "Se",
                "Br", "In", "Sn", "Sb", "Te", "I", "Tl", "Pb", "Bi", "Po"),
    "noble gas": ("He", "Ne", "Ar", "Kr", "Xe", "Rn"),
}


def family_of(symbol: str) -> str:
    for fam, members in FAMILIES.items():
        if symbol in members:
            return fam
    raise KeyError(symbol)


def export_dcdft() -> list[dict]:
    """One row per element: structure dict, family, reference B0/B0'/V0 (and experiment)."""
    from ase.collections import dcdft
    from pymatgen.io.ase import AseAtomsAdaptor

    rows = []
    for name in dcdft.names:
        atoms = dcdft[name]
        ref = dcdft.data[name]
        exp_b = ref.get("exp_B")
        exp_v = ref.get("exp_volume")
        rows.append({
            "name": name,
            "formula": atoms.get_chemical_formula(mode="metal", empirical=True),
            "family": family_of(name),
            "num_atoms": len(atoms),
            "bulk_modulus_GPa": float(ref["wien2k_B"]),
            "bulk_modulus_derivative": float(ref["wien2k_Bp"]),
            "volume_A3_per_atom": float(ref["wien2k_volume"]),
            "exp_bulk_modulus_GPa": None if exp_b is None else float(exp_b),
            "exp_volume_A3_per_atom": None if exp_v is None else float(exp_v),
            "structure_volume_A3_per_atom": float(atoms.get_volume() / len(atoms)),
            "structure": AseAtomsAdaptor.get_structure(atoms).as_dict(),
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    from matmeta.checkpoint import atomic_write_text

    parser = argparse.ArgumentParser(
        prog="python -m matmeta.io._dcdft",
        description="Export ASE's Delta-codes elemental crystals (bulk modulus in GPa, volume "
                    "in A^3/atom) into data/structures.")
    default = Path(__file__).resolve().parents[2] / "data" / "structures"
    parser.add_argument("--out", type=Path, default=default, help=f"folder (default {default})")
    args = parser.parse_args(argv)
    rows = export_dcdft()
    payload = {
        "description": "Delta-codes elemental crystals from ase.collections.dcdft (ASE, LGPL); "
                       "reference values: WIEN2k all-electron PBE (Lejaeghere et al., Science "
                       "2016); exp_*: experimental values where ASE provides them",
        "units": {"bulk_modulus_GPa": "GPa", "volume_A3_per_atom": "angstrom^3/atom",
                  "bulk_modulus_derivative": "dimensionless"},
        "data": rows,
    }
    out = atomic_write_text(args.out / "dcdft_elements.json",
                            json.dumps(payload, separators=(",", ":")) + "\n")
    buf = io.StringIO()
    cols = [k for k in rows[0] if k != "structure"]
    buf.write(",".join(cols) + "\n")
    for r in rows:
        buf.write(",".join("" if r[k] is None else (f"{r[k]:.6g}" if isinstance(r[k], float)
                                                     else str(r[k])) for k in cols) + "\n")
    atomic_write_text(args.out / "dcdft_elements.csv", buf.getvalue())
    counts = {f: int(np.sum([r["family"] == f for r in rows])) for f in FAMILIES}
    print(f"wrote {len(rows)} elements to {out}; families {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
