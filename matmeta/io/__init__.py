"""Read any structure (CIF, POSCAR, extended XYZ, pymatgen, ASE, tables) into validated form.

Everything becomes a :class:`Crystal` (arrays in angstrom plus the source it came from); tables
become DataFrames with a ``structure`` column of crystals, float targets and a ``family``.
"""

from matmeta.io._builtin import BUILTIN_DATASETS, builtin_path, load_builtin
from matmeta.io._crystal import Crystal
from matmeta.io._readers import (
    STRUCTURE_SUFFIXES,
    from_ase,
    from_dict,
    from_pymatgen,
    read_structure,
    read_structures,
)
from matmeta.io._tables import read_structure_table, validate_targets
from matmeta.io.alloys import parse_composition, read_alloy_table
from matmeta.io.kinetics import KineticsTable, read_kinetics_table, validate_kinetics

__all__ = [
    "BUILTIN_DATASETS",
    "builtin_path",
    "Crystal",
    "from_ase",
    "from_dict",
    "from_pymatgen",
    "KineticsTable",
    "load_builtin",
    "parse_composition",
    "read_alloy_table",
    "read_kinetics_table",
    "read_structure",
    "read_structure_table",
    "read_structures",
    "STRUCTURE_SUFFIXES",
    "validate_kinetics",
    "validate_targets",
]
