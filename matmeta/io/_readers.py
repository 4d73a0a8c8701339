"""Readers from every structure format we accept into :class:`~matmeta.io.Crystal`.

CIF and POSCAR go through pymatgen, extended XYZ through ASE; pymatgen ``Structure`` dicts are
read directly from their arrays (no ``Structure`` is built, which is 20x faster on tables of
thousands of rows). Library warnings are captured while parsing: they are noise next to our
own one-line error, and the useful one is quoted in that error when a parse fails.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from matmeta.errors import InputError
from matmeta.io._crystal import MAX_Z, Crystal

__all__ = ["STRUCTURE_SUFFIXES", "read_structure", "read_structures"]

Disorder = Literal["refuse", "majority"]

# Recognised file suffixes (after an optional .gz) -> format.
STRUCTURE_SUFFIXES = {
    ".cif": "cif", ".vasp": "poscar", ".poscar": "poscar", ".xyz": "extxyz",
    ".extxyz": "extxyz", ".json": "json",
}
_POSCAR_NAMES = ("POSCAR", "CONTCAR")
_EXPECTED_FILES = ".cif, POSCAR/CONTCAR/.vasp, .xyz/.extxyz or pymatgen .json (optionally .gz)"

_OCCUPANCY_TOL = 1e-3


def _symbol_table() -> dict[str, int]:
    from ase.data import atomic_numbers

    return {s: z for s, z in atomic_numbers.items() if 0 < z <= MAX_Z}


_SYMBOLS: dict[str, int] | None = None


def _z_of(symbol: str) -> int:
    global _SYMBOLS
    if _SYMBOLS is None:
        _SYMBOLS = _symbol_table()
    return _SYMBOLS.get(symbol, 0)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())[:200]


def _resolve_site(species: list[tuple[str, float]], disorder: Disorder, source: str,
                  index: int, label: str | None) -> tuple[int, bool]:
    """Atomic number of one site from its (symbol, occupancy) list; flag if it was disordered."""
    where_ = f"{source}, atom {index}" + (f" ({label})" if label else "")
    for sym, _ in species:
        if _z_of(sym) == 0:
            raise InputError(f"{where_}: unknown element {sym!r}; expected a chemical symbol "
                             f"H..Og")
    ordered = len(species) == 1 and abs(species[0][1] - 1.0) <= _OCCUPANCY_TOL
    if ordered:
        return _z_of(species[0][0]), False
    if disorder == "majority":
        # max() keeps the first of equal occupancies: the species listed first wins a tie.
        sym = max(species, key=lambda so: so[1])[0]
        return _z_of(sym), True
    occ = ", ".join(f"{s}:{o:g}" for s, o in species)
    raise InputError(f"{where_}: partial occupancy ({occ}); expected an ordered structure "
                     "(pass disorder='majority' to keep each site's majority species)")


def _note_disorder(n_sites: int, source: str) -> None:
    if n_sites:
        warnings.warn(f"{source}: {n_sites} disordered site(s) replaced by their majority "
                      "species (disorder='majority')", UserWarning, stacklevel=4)


def _check_disorder(disorder: str) -> None:
    if disorder not in ("refuse", "majority"):
        raise InputError(f"disorder={disorder!r}: expected 'refuse' or 'majority'")


# --------------------------------------------------------------------------- object converters

def from_pymatgen(structure: Any, source: str = "<pymatgen Structure>",
                  disorder: Disorder = "refuse") -> Crystal:
    """Convert a pymatgen ``Structure`` (or ``IStructure``).

    Example:
        >>> crystal = from_pymatgen(Structure.from_file("NaCl.cif"), source="NaCl.cif")
    """
    lattice = structure.lattice
    # By symbol, not .Z: pymatgen's placeholder for an unknown symbol (DummySpecies) has a
    # meaningless Z.
    numbers = [_z_of(getattr(sp, "symbol", "")) for sp in structure.species] \
        if structure.is_ordered else [0]
    if not all(numbers):
        numbers, n_dis = [], 0
        for i, site in enumerate(structure):
            species = [(getattr(sp, "symbol", str(sp)), float(o))
                       for sp, o in site.species.items()]
            z, dis = _resolve_site(species, disorder, source, i, getattr(site, "label", None))
            numbers.append(z)
            n_dis += dis
        _note_disorder(n_dis, source)
    return Crystal.from_arrays(numbers, structure.cart_coords, lattice.matrix,
                               pbc=getattr(lattice, "pbc", True), source=source)


def from_ase(atoms: Any, source: str = "<ase Atoms>") -> Crystal:
    """Convert an ASE ``Atoms``.

    Example:
        >>> crystal = from_ase(ase.build.bulk("Cu", "fcc", a=3.6), source="fcc Cu")
    """
    return Crystal.from_arrays(atoms.numbers, atoms.positions, np.asarray(atoms.cell),
                               pbc=atoms.pbc, source=source)


def from_dict(d: Mapping, source: str = "<structure dict>",
              disorder: Disorder = "refuse") -> Crystal:
    """Convert a pymatgen ``Structure.as_dict()`` or ``{numbers, positions, cell[, pbc]}``.

    Example:
        >>> crystal = from_dict(row["structure"], source="mp.json.gz, row 7")

    The arrays are read straight from the dict (no pymatgen ``Structure`` is built).
    """
    try:
        if "numbers" in d and "positions" in d:
            cell = d.get("cell", np.zeros((3, 3)))
            return Crystal.from_arrays(d["numbers"], d["positions"], cell,
                                       pbc=d.get("pbc", True), source=source)
        if "lattice" not in d or "sites" not in d:
            raise InputError(f"{source}: a dict without 'lattice' and 'sites'; expected a "
                             "pymatgen Structure dict or {numbers, positions, cell}")
        lat = d["lattice"]
        matrix = np.asarray(lat["matrix"], dtype=np.float64)
        sites = d["sites"]
        numbers = np.empty(len(sites), dtype=np.int64)
        coords = np.empty((len(sites), 3))
        n_dis = 0
        for i, site in enumerate(sites):
            species = [(sp["element"], float(sp.get("occu", 1.0))) for sp in site["species"]]
            if len(species) == 1 and abs(species[0][1] - 1.0) <= _OCCUPANCY_TOL \
                    and _z_of(species[0][0]):
                numbers[i] = _z_of(species[0][0])
            else:
                numbers[i], dis = _resolve_site(species, disorder, source, i, site.get("label"))
                n_dis += dis
            coords[i] = site["xyz"] if "xyz" in site else np.asarray(site["abc"]) @ matrix
        _note_disorder(n_dis, source)
        return Crystal.from_arrays(numbers, coords, matrix, pbc=lat.get("pbc", True),
                                   source=source)
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{source}: malformed structure dict ({type(exc).__name__}: "
                         f"{_one_line(exc)}); expected a pymatgen Structure dict") from None


# --------------------------------------------------------------------------- text and files

_IDENTITY_OPS = {"x,y,z", "+x,+y,+z"}


def _cif_float(value: str) -> float:
    return float(value.split("(")[0])             # "3.5(2)" carries an uncertainty


def _parse_p1_cif(text: str, source: str) -> Crystal | None:
    """Arrays straight from a one-block P1 CIF with full occupancies; ``None`` otherwise.

    pymatgen's full parser (symmetry expansion, site merging) costs ~8 ms per CIF; tables of
    thousands of P1 CIFs (as pymatgen and CDVAE write them) need only the tokenizer (~0.6 ms).
    Anything unusual returns ``None`` and goes through the full parser.
    """
    from pymatgen.core import Lattice
    from pymatgen.io.cif import CifFile

    try:
        blocks = list(CifFile.from_str(text).data.values())
        if len(blocks) != 1:
            return None
        d = blocks[0].data
        ops = d.get("_symmetry_equiv_pos_as_xyz", d.get("_space_group_symop_operation_xyz"))
        ops = [ops] if isinstance(ops, str) else ops
        if ops is None or {o.replace(" ", "").replace("'", "").lower() for o in ops} \
                - _IDENTITY_OPS:
            return None
        symbols = d["_atom_site_type_symbol"]
        symbols = [symbols] if isinstance(symbols, str) else symbols
        n = len(symbols)
        occ = d.get("_atom_site_occupancy", ["1"] * n)
        occ = [occ] if isinstance(occ, str) else occ
        if len(occ) != n or any(abs(_cif_float(o) - 1.0) > _OCCUPANCY_TOL for o in occ):
            return None
        numbers = [_z_of(sym) for sym in symbols]
        if not all(numbers):
            return None
        frac = np.array([[_cif_float(v) for v in (
            [d[f"_atom_site_fract_{ax}"]] if isinstance(d[f"_atom_site_fract_{ax}"], str)
            else d[f"_atom_site_fract_{ax}"])] for ax in "xyz"]).T
        if frac.shape != (n, 3):
            return None
        lattice = Lattice.from_parameters(
            *(_cif_float(d[f"_cell_length_{k}"]) for k in "abc"),
            *(_cif_float(d[f"_cell_angle_{k}"]) for k in ("alpha", "beta", "gamma")))
    except (KeyError, ValueError, TypeError, IndexError):
        return None
    matrix = lattice.matrix
    return Crystal.from_arrays(numbers, np.mod(frac, 1.0) @ matrix, matrix, source=source)


def _parse_cif(text: str, source: str, disorder: Disorder) -> list[Crystal]:
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        fast = _parse_p1_cif(text, source)
    if fast is not None:
        return [fast]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            parser = CifParser.from_str(text)
            structures = parser.parse_structures(primitive=False, on_error="raise")
        except Exception as exc:  # noqa: BLE001 - pymatgen raises anything on bad CIF
            hints = [_one_line(w.message) for w in caught
                     if "No structure parsed" in str(w.message) or "Error" in str(w.message)]
            hint = f"; {hints[0]}" if hints else ""
            raise InputError(
                f"{source}: cannot read CIF ({type(exc).__name__}: {_one_line(exc)}{hint}); "
                "expected a complete CIF with cell lengths, angles and an _atom_site loop"
            ) from None
    if not structures:
        raise InputError(f"{source}: CIF holds no structure; expected a cell and atom sites")
    if len(structures) == 1:
        return [from_pymatgen(structures[0], source, disorder)]
    return [from_pymatgen(s, f"{source}, block {k}", disorder) for k, s in enumerate(structures)]


def _parse_poscar(text: str, source: str) -> list[Crystal]:
    from pymatgen.io.vasp import Poscar

    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        try:
            structure = Poscar.from_str(text).structure
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{source}: cannot read POSCAR ({type(exc).__name__}: "
                             f"{_one_line(exc)}); expected a VASP POSCAR/CONTCAR with element "
                             "names") from None
    return [from_pymatgen(structure, source)]


def _parse_ase(path: Path, source: str, fmt: str | None) -> list[Crystal]:
    import ase.io

    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        try:
            frames = ase.io.read(path, index=":", format=fmt)
        except Exception as exc:  # noqa: BLE001 - ASE raises KeyError on unknown elements etc.
            raise InputError(f"{source}: cannot read {fmt or 'structure'} file "
                             f"({type(exc).__name__}: {_one_line(exc)}); expected "
                             f"{_EXPECTED_FILES}") from None
    if not frames:
        raise InputError(f"{source}: holds no structure")
    if len(frames) == 1:
        return [from_ase(frames[0], source)]
    return [from_ase(a, f"{source}, frame {k}") for k, a in enumerate(frames)]


def _parse_json(text: str, source: str, disorder: Disorder) -> list[Crystal]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{source}: not valid JSON ({exc}); expected a pymatgen Structure dict "
                         "or a list of them") from None
    if isinstance(obj, dict):
        return [from_dict(obj, source, disorder)]
    if isinstance(obj, list):
        return [from_dict(d, f"{source}, item {k}", disorder) if isinstance(d, dict)
                else _bad_item(d, f"{source}, item {k}") for k, d in enumerate(obj)]
    raise InputError(f"{source}: JSON holds a {type(obj).__name__}; expected a structure dict")


def _bad_item(obj: Any, source: str):
    raise InputError(f"{source}: a {type(obj).__name__}; expected a structure dict")


def _format_of(path: Path) -> str | None:
    name = path.name
    if name.lower().endswith(".gz"):
        name = name[:-3]
    if any(name.upper().startswith(p) for p in _POSCAR_NAMES):
        return "poscar"
    return STRUCTURE_SUFFIXES.get(Path(name).suffix.lower())


def _read_text(path: Path) -> str:
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8", errors="replace") as fh:
                return fh.read()
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InputError(f"{path}: cannot read file ({exc.strerror or exc})") from None


def _read_file(path: Path, disorder: Disorder) -> list[Crystal]:
    source = str(path)
    fmt = _format_of(path)
    if fmt == "cif":
        return _parse_cif(_read_text(path), source, disorder)
    if fmt == "poscar":
        return _parse_poscar(_read_text(path), source)
    if fmt == "json":
        return _parse_json(_read_text(path), source, disorder)
    if fmt == "extxyz":
        if path.name.lower().endswith(".gz"):
            raise InputError(f"{source}: compressed XYZ is not supported; decompress it first")
        return _parse_ase(path, source, "extxyz")
    return _parse_ase(path, source, None)


def _read_folder(folder: Path, disorder: Disorder) -> list[Crystal]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and _format_of(p) is not None)
    if not files:
        raise InputError(f"{folder}: folder holds no structure files; expected {_EXPECTED_FILES}")
    out: list[Crystal] = []
    for p in files:
        out.extend(_read_file(p, disorder))
    return out


def _looks_like_path(text: str) -> bool:
    return "\n" not in text and len(text) < 4096 and not text.lstrip().startswith("{")


def _from_text_or_path(text: str, source: str | None, disorder: Disorder) -> list[Crystal]:
    if _looks_like_path(text):
        path = Path(text)
        if path.is_dir():
            return _read_folder(path, disorder)
        if path.is_file():
            return _read_file(path, disorder)
        raise InputError(f"{source + ': ' if source else ''}no such file or folder {text!r}; "
                         f"expected a structure file ({_EXPECTED_FILES}), a folder or CIF text")
    src = source or "<text>"
    stripped = text.lstrip()
    if stripped.startswith("{") or stripped.startswith("["):
        return _parse_json(text, src, disorder)
    if "_cell_length_a" in text or stripped.startswith("data_") or "_atom_site" in text:
        return _parse_cif(text, src, disorder)
    return _parse_poscar(text, src)


def _to_crystals(obj: Any, source: str | None, disorder: Disorder) -> list[Crystal]:
    if isinstance(obj, Crystal):
        return [obj]                            # already named by whoever read it
    if isinstance(obj, (str, os.PathLike)):
        if isinstance(obj, os.PathLike):
            path = Path(obj)
            if path.is_dir():
                return _read_folder(path, disorder)
            if path.is_file():
                return _read_file(path, disorder)
            raise InputError(f"{source + ': ' if source else ''}no such file or folder "
                             f"'{path}'; expected a structure file or folder")
        return _from_text_or_path(obj, source, disorder)
    if isinstance(obj, Mapping):
        return [from_dict(obj, source or "<structure dict>", disorder)]
    cls = type(obj)
    module = cls.__module__
    # isinstance against already-imported modules only: an object of a library the user never
    # imported cannot be an instance of it, and importing it here would cost seconds.
    pmg = sys.modules.get("pymatgen.core.structure")
    if pmg is not None and isinstance(obj, pmg.IStructure | pmg.Structure):
        return [from_pymatgen(obj, source or f"<{cls.__name__} {obj.formula}>", disorder)]
    if pmg is not None and isinstance(obj, pmg.IMolecule | pmg.Molecule):
        src = source or f"<{cls.__name__} {obj.formula}>"
        numbers = [_z_of(getattr(sp, "symbol", "")) for sp in obj.species]
        if not obj.is_ordered or not all(numbers):
            raise InputError(f"{src}: disordered or unknown species; expected an ordered "
                             "molecule of known elements")
        return [Crystal.from_arrays(numbers, obj.cart_coords, np.zeros((3, 3)), pbc=False,
                                    source=src)]
    ase_mod = sys.modules.get("ase")
    if ase_mod is not None and isinstance(obj, ase_mod.Atoms):
        return [from_ase(obj, source or f"<Atoms {obj.get_chemical_formula()}>")]
    if module.startswith("pandas") and cls.__name__ == "DataFrame":
        return _from_dataframe(obj, None, disorder, source or "<DataFrame>")
    if isinstance(obj, (list, tuple)) or (hasattr(obj, "__iter__")
                                          and not isinstance(obj, (bytes, bytearray))):
        items = list(obj)
        if not items:
            raise InputError(f"{source or 'input'}: empty list of structures; expected at least "
                             "one structure")
        out: list[Crystal] = []
        for k, item in enumerate(items):
            # A file names itself; anything else is named by its place in the list.
            is_path = isinstance(item, os.PathLike) or (isinstance(item, str)
                                                        and _looks_like_path(item))
            out.extend(_to_crystals(item, None if is_path else f"{source or 'list'} item {k}",
                                    disorder))
        return out
    raise InputError(f"{source or 'input'}: a {cls.__name__}; expected a structure (file path, "
                     "folder, CIF text, pymatgen Structure or dict, ASE Atoms, DataFrame, list)")


_STRUCTURE_COLUMNS = ("structure", "structures", "cif", "atoms", "poscar", "path", "file")


def _structure_column(df: Any, structure_column: str | None, source: str) -> str:
    if structure_column is not None:
        if structure_column not in df.columns:
            raise InputError(f"{source}: no column {structure_column!r}; columns are "
                             f"{list(map(str, df.columns))}")
        return structure_column
    for name in _STRUCTURE_COLUMNS:
        if name in df.columns:
            return name
    raise InputError(f"{source}: no structure column; expected one of {list(_STRUCTURE_COLUMNS)} "
                     f"or structure_column=..., columns are {list(map(str, df.columns))}")


def _from_dataframe(df: Any, structure_column: str | None, disorder: Disorder,
                    source: str) -> list[Crystal]:
    col = _structure_column(df, structure_column, source)
    if len(df) == 0:
        raise InputError(f"{source}: empty table; expected at least one structure row")
    out: list[Crystal] = []
    for row, value in zip(df.index, df[col], strict=True):
        where_ = f"{source}, row {row}, column {col!r}"
        if value is None or (isinstance(value, float) and not np.isfinite(value)):
            raise InputError(f"{where_}: empty cell; expected a structure")
        crystals = _to_crystals(value, where_, disorder)
        if len(crystals) != 1:
            raise InputError(f"{where_}: holds {len(crystals)} structures; expected one per row")
        out.append(crystals[0])
    return out


# --------------------------------------------------------------------------- public readers

def read_structures(source: Any, *, structure_column: str | None = None,
                    disorder: Disorder = "refuse") -> list[Crystal]:
    """Read structures from any supported input into a list of :class:`Crystal`.

    Example:
        >>> crystals = read_structures("structures/")            # every structure file in a folder
        >>> crystals = read_structures(["a.cif", "POSCAR", atoms])  # mixed list
        >>> crystals = read_structures(df, structure_column="cif")  # DataFrame column

    Args:
        source: a file (CIF, POSCAR/CONTCAR/.vasp, extended XYZ, pymatgen JSON; ``.gz`` read
            transparently except XYZ), a folder of such files, CIF/JSON/POSCAR text, a pymatgen
            ``Structure`` or its dict, an ASE ``Atoms``, a :class:`Crystal`, a pandas DataFrame
            with a structure column (any of those per cell), or a list of any of them.
        structure_column: the DataFrame column holding structures (default: the first of
            ``structure``, ``structures``, ``cif``, ``atoms``, ``poscar``, ``path``, ``file``).
        disorder: ``"refuse"`` (default) raises on a site with partial occupancy;
            ``"majority"`` keeps each such site's majority species and warns how many sites it
            changed.

    Returns:
        One :class:`Crystal` per structure, in input order (files in a folder sorted by name).

    Raises:
        InputError: one line naming the file/row/atom at fault and what was expected.
    """
    _check_disorder(disorder)
    if source is None:
        raise InputError("input is None; expected structures")
    if type(source).__name__ == "DataFrame":
        return _from_dataframe(source, structure_column, disorder, "<DataFrame>")
    return _to_crystals(source, None, disorder)


def read_structure(source: Any, *, disorder: Disorder = "refuse",
                   name: str | None = None) -> Crystal:
    """Read exactly one structure (see :func:`read_structures` for the accepted inputs).

    Example:
        >>> crystal = read_structure("NaCl.cif")
        >>> crystal.numbers, crystal.cell                    # atomic numbers, cell in angstrom

    Args:
        source: one structure in any supported form.
        disorder: ``"refuse"`` or ``"majority"`` (see :func:`read_structures`).
        name: replaces the source string used in later messages.

    Raises:
        InputError: unreadable input, or input holding several structures.
    """
    _check_disorder(disorder)
    crystals = read_structures(source, disorder=disorder) if not isinstance(source, Crystal) \
        else [source]
    if len(crystals) != 1:
        raise InputError(f"{crystals[0].source}: holds {len(crystals)} structures; expected "
                         "one (use read_structures)")
    return crystals[0].with_source(name) if name else crystals[0]


def iter_sources(crystals: Iterable[Crystal]) -> list[str]:
    """The source strings of ``crystals`` (for tables and reports)."""
    return [c.source for c in crystals]
