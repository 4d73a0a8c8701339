"""The one internal structure representation every reader produces and the graph builder reads.

A :class:`Crystal` is plain arrays (atomic numbers, cartesian positions and cell in angstrom,
periodicity) plus a ``source`` string naming where it came from, so that every later error can
say which file or row is at fault.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from matmeta.errors import InputError

__all__ = ["Crystal", "MAX_Z", "element_symbol"]

# Elements 1..MAX_Z are accepted; anything else is an unknown element.
MAX_Z = 118

# Below this |det(cell)| (cubic angstrom) a periodic cell counts as degenerate.
_MIN_VOLUME_A3 = 1e-6


def element_symbol(z: int) -> str:
    """Chemical symbol of atomic number ``z`` (``"X"`` outside 1..118)."""
    from ase.data import chemical_symbols

    return chemical_symbols[z] if 0 < z <= MAX_Z else "X"


@dataclass(frozen=True, eq=False)
class Crystal:
    """A periodic (or finite) structure as arrays.

    Example:
        >>> c = Crystal.from_arrays([29], [[0, 0, 0]], np.eye(3) * 2.55, source="Cu.cif")
        >>> c.num_atoms, round(c.volume, 3)
        (1, 16.581)

    Attributes:
        numbers: (N,) atomic numbers (int64).
        positions: (N, 3) cartesian positions in angstrom (float64).
        cell: (3, 3) lattice vectors as rows, angstrom (float64); zeros for a finite molecule.
        pbc: (3,) periodicity along each cell vector.
        source: where the structure came from (file, ``file, row 7``, ``list item 3``), used in
            error messages.
    """

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    source: str = "<structure>"

    @classmethod
    def from_arrays(cls, numbers, positions, cell, pbc=True, source: str = "<structure>",
                    ) -> Crystal:
        """Validate and freeze arrays into a :class:`Crystal`.

        Raises:
            InputError: no atoms, wrong shapes, non-finite coordinates, an unknown element, or
                (for a periodic structure) a zero or negative cell volume.
        """
        numbers = np.asarray(numbers)
        positions = np.asarray(positions, dtype=np.float64)
        cell = np.asarray(cell, dtype=np.float64)
        pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
        n = numbers.shape[0] if numbers.ndim == 1 else -1
        if n < 1:
            raise InputError(f"{source}: no atoms; expected at least one atom")
        if positions.shape != (n, 3):
            raise InputError(f"{source}: positions have shape {positions.shape}; "
                             f"expected ({n}, 3) cartesian angstrom")
        if cell.shape != (3, 3):
            raise InputError(f"{source}: cell has shape {cell.shape}; expected (3, 3) angstrom")
        if not np.isfinite(positions).all():
            bad = int(np.where(~np.isfinite(positions).all(axis=1))[0][0])
            raise InputError(f"{source}, atom {bad}: non-finite position; expected numbers")
        if not np.isfinite(cell).all():
            raise InputError(f"{source}: non-finite cell vectors; expected numbers in angstrom")
        if not np.issubdtype(numbers.dtype, np.integer):
            if not np.all(np.mod(numbers, 1) == 0):
                raise InputError(f"{source}: atomic numbers must be integers")
        numbers = numbers.astype(np.int64)
        bad = np.where((numbers < 1) | (numbers > MAX_Z))[0]
        if bad.size:
            i = int(bad[0])
            raise InputError(f"{source}, atom {i}: unknown element (atomic number "
                             f"{int(numbers[i])}); expected 1..{MAX_Z}")
        if pbc.all():
            volume = float(np.linalg.det(cell))
            if volume <= _MIN_VOLUME_A3:
                raise InputError(
                    f"{source}: cell volume {volume:.4g} A^3; expected a positive volume "
                    "(three independent, right-handed lattice vectors)")
        elif pbc.any():
            lengths = np.linalg.norm(cell, axis=1)
            if (lengths[pbc] <= 0).any():
                raise InputError(f"{source}: a periodic direction has a zero cell vector")
        for a in (numbers, positions, cell, pbc):
            a.setflags(write=False)
        return cls(numbers, positions, cell, pbc, str(source))

    @property
    def num_atoms(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def volume(self) -> float:
        """Cell volume in cubic angstrom (0 for a finite structure)."""
        return float(np.linalg.det(self.cell)) if self.pbc.all() else 0.0

    @property
    def formula(self) -> str:
        """Reduced-order formula such as ``Cu3Au`` (elements in order of first appearance)."""
        _, first, counts = np.unique(self.numbers, return_index=True, return_counts=True)
        order = np.argsort(first)
        parts = []
        for k in order:
            sym = element_symbol(int(self.numbers[first[k]]))
            parts.append(sym + (str(int(counts[k])) if counts[k] > 1 else ""))
        return "".join(parts)

    def with_source(self, source: str) -> Crystal:
        return Crystal(self.numbers, self.positions, self.cell, self.pbc, str(source))

    def to_pymatgen(self):
        """A pymatgen ``Structure`` (periodic) of the same atoms."""
        from pymatgen.core import Lattice, Structure

        return Structure(Lattice(self.cell, pbc=tuple(bool(p) for p in self.pbc)),
                         self.numbers.tolist(), self.positions, coords_are_cartesian=True)

    def to_ase(self):
        """An ASE ``Atoms`` of the same atoms."""
        from ase import Atoms

        return Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell,
                     pbc=self.pbc)

    def __repr__(self) -> str:
        return f"Crystal({self.formula}, {self.num_atoms} atoms, source={self.source!r})"

    def __getstate__(self):
        return {k: getattr(self, k) for k in ("numbers", "positions", "cell", "pbc", "source")}

    def __setstate__(self, state):
        for k, v in state.items():
            if isinstance(v, np.ndarray):
                v = v.copy()
                v.setflags(write=False)
            object.__setattr__(self, k, v)
