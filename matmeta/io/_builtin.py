"""Small datasets shipped in the project's ``data/`` folder, loaded as validated tables."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from matmeta.errors import InputError
from matmeta.io._tables import read_structure_table

__all__ = ["BUILTIN_DATASETS", "builtin_path", "load_builtin"]

# name -> (file under data/structures, target columns, what it is)
BUILTIN_DATASETS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "dcdft_elements": (
        "dcdft_elements.json",
        ("bulk_modulus_GPa", "volume_A3_per_atom"),
        "71 elemental crystals of the Delta-codes test (ASE's dcdft collection), WIEN2k "
        "all-electron PBE bulk modulus and equilibrium volume; families by periodic-table block",
    ),
    "emt_binary_alloys": (
        "emt_binary_alloys.json",
        ("bulk_modulus_GPa", "mixing_energy_eV_per_atom"),
        "generated: ordered Cu/Ag/Au/Ni/Pd/Pt/Al binaries relaxed with ASE's EMT calculator, "
        "bulk modulus from an equation-of-state fit; families by alloy pair",
    ),
}


def _data_dir() -> Path:
    # The project is installed editable: data/ sits beside the matmeta package.
    return Path(__file__).resolve().parents[2] / "data"


def builtin_path(name: str) -> Path:
    """Path of a shipped dataset file (see :data:`BUILTIN_DATASETS`).

    Example:
        >>> builtin_path("dcdft_elements").name
        'dcdft_elements.json'
    """
    if name not in BUILTIN_DATASETS:
        raise InputError(f"unknown built-in dataset {name!r}; expected one of "
                         f"{sorted(BUILTIN_DATASETS)}")
    path = _data_dir() / "structures" / BUILTIN_DATASETS[name][0]
    if not path.is_file():
        raise InputError(f"built-in dataset {name!r} not found at {path}; matmeta's data/ folder "
                         "ships with the source tree (install it editable from a checkout)")
    return path


def load_builtin(name: str) -> pd.DataFrame:
    """Load a dataset shipped in ``data/`` as a validated table.

    Example:
        >>> df = load_builtin("emt_binary_alloys")
        >>> df[["formula", "family", "bulk_modulus_GPa"]].head()

    Args:
        name: ``"dcdft_elements"`` or ``"emt_binary_alloys"``.

    Returns:
        The same shape as :func:`read_structure_table`: ``structure`` (Crystal), ``name``,
        ``family``, float target columns with units in their names (listed in
        ``df.attrs['target_columns']``), and descriptive columns.
    """
    path = builtin_path(name)
    targets = list(BUILTIN_DATASETS[name][1])
    df = read_structure_table(path, structure_column="structure", target_column=targets,
                              family_column="family", id_column="name")
    df.attrs["builtin"] = name
    return df
