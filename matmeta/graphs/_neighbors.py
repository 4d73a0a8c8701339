"""Periodic neighbour lists and the capped nearest-neighbour selection, vectorised.

The search is pymatgen's cell-list ``find_points_in_spheres`` on plain arrays; everything after
it (self-pair removal, ordering, the top-k cap, checks) is numpy over the whole edge list, since
FINDINGS measured per-atom Python assembly, not the search, as the cost.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from matmeta.errors import InputError
from matmeta.io._crystal import Crystal, element_symbol

__all__ = ["NeighborList", "neighbor_list", "select_nearest"]

# Distances equal to within this (angstrom) count as exact ties, so that symmetry-equivalent
# neighbours whose float distances differ in the last bit are ordered by index, not by noise.
TIE_TOLERANCE_A = 1e-8

# grow_cutoff stops here: beyond it an isolated atom is a broken structure, not a sparse one.
_MAX_GROWN_CUTOFF_A = 100.0


class NeighborList(NamedTuple):
    """Directed neighbour pairs (one entry per centre-neighbour-image triple).

    Shapes:
        center: (E,) index of the centre atom.
        neighbor: (E,) index of the neighbour atom.
        cell_offset: (E, 3) integer lattice shift of the neighbour's image: the neighbour sits at
            ``positions[neighbor] + cell_offset @ cell``.
        distance: (E,) |neighbour image - centre| in angstrom.
    """

    center: np.ndarray
    neighbor: np.ndarray
    cell_offset: np.ndarray
    distance: np.ndarray


def _search_lattice(crystal: Crystal, cutoff: float) -> np.ndarray:
    if crystal.pbc.all():
        return np.ascontiguousarray(crystal.cell, dtype=np.float64)
    if not crystal.pbc.any():
        # pymatgen bins by fractional coordinates, so a finite structure gets a box around it.
        extent = np.ptp(crystal.positions, axis=0)
        return np.diag(extent + cutoff + 1.0)
    cell = np.array(crystal.cell, dtype=np.float64)
    if abs(np.linalg.det(cell)) < 1e-6:
        raise InputError(f"{crystal.source}: partly periodic structure needs three independent "
                         "cell vectors (give the vacuum direction a length)")
    return cell


def neighbor_list(crystal: Crystal, cutoff: float) -> NeighborList:
    """All neighbour pairs within ``cutoff`` angstrom, periodic images included, no self pairs.

    Example:
        >>> nl = neighbor_list(crystal, 6.0)
        >>> nl.distance.min()                       # shortest interatomic distance (angstrom)
    """
    from pymatgen.optimization.neighbors import find_points_in_spheres

    coords = np.ascontiguousarray(crystal.positions, dtype=np.float64)
    center, neighbor, offset, distance = find_points_in_spheres(
        coords, coords, r=float(cutoff), pbc=crystal.pbc.astype(np.int64),
        lattice=_search_lattice(crystal, cutoff), tol=1e-8)
    offset = np.rint(offset).astype(np.int64)
    if not crystal.pbc.all():
        offset[:, ~crystal.pbc] = 0
    center = center.astype(np.int64)
    neighbor = neighbor.astype(np.int64)
    self_pair = (center == neighbor) & ~offset.any(axis=1)
    keep = ~self_pair
    return NeighborList(center[keep], neighbor[keep], offset[keep], distance[keep])


def check_min_distance(crystal: Crystal, nl: NeighborList, min_distance: float) -> None:
    """Raise :class:`InputError` naming the first pair of atoms closer than ``min_distance``."""
    close = nl.distance < min_distance
    if close.any():
        k = int(np.argmin(np.where(close, nl.distance, np.inf)))
        i, j = int(nl.center[k]), int(nl.neighbor[k])
        si, sj = element_symbol(int(crystal.numbers[i])), element_symbol(int(crystal.numbers[j]))
        what = (f"atom {i} ({si}) and its own periodic image" if i == j
                else f"atoms {min(i, j)} and {max(i, j)} ({si}, {sj})")
        raise InputError(f"{crystal.source}: {what} are {nl.distance[k]:.3f} A apart; expected "
                         f"at least min_distance={min_distance} A (overlapping or duplicated "
                         "atoms?)")


def select_nearest(nl: NeighborList, num_atoms: int, max_neighbors: int | None,
                   ) -> tuple[NeighborList, np.ndarray]:
    """Order edges and keep at most ``max_neighbors`` nearest per centre atom.

    Example:
        >>> nl = neighbor_list(crystal, 6.0)
        >>> kept, counts = select_nearest(nl, crystal.num_atoms, 12)

    Edges come out sorted by centre atom, then distance (ties within 1e-8 angstrom are exact),
    then neighbour index, then image offset (a, b, c ascending); with a cap, each centre keeps
    the first ``max_neighbors`` of that order.

    Returns:
        The selected edges and the (N,) number of neighbours each atom had before the cap.
    """
    dkey = np.rint(nl.distance / TIE_TOLERANCE_A).astype(np.int64)
    # One int64 key for the image (a, b, c) in lexicographic order; offsets stay far below
    # 2**20 cells for any cutoff a neighbour search can handle.
    off = nl.cell_offset + (1 << 20)
    image = (off[:, 0] << 42) | (off[:, 1] << 21) | off[:, 2]
    order = np.lexsort((image, nl.neighbor, dkey, nl.center))
    center = nl.center[order]
    counts = np.bincount(center, minlength=num_atoms)
    if max_neighbors is not None and (counts > max_neighbors).any():
        starts = np.cumsum(counts) - counts
        rank = np.arange(center.shape[0]) - starts[center]
        order = order[rank < max_neighbors]
    sel = NeighborList(nl.center[order], nl.neighbor[order], nl.cell_offset[order],
                       nl.distance[order])
    return sel, counts


def grow_until_connected(crystal: Crystal, cutoff: float, grow: bool,
                         ) -> tuple[NeighborList, float]:
    """Neighbour list at ``cutoff``; if an atom has none, raise or (``grow``) enlarge x1.25."""
    while True:
        nl = neighbor_list(crystal, cutoff)
        counts = np.bincount(nl.center, minlength=crystal.num_atoms)
        lonely = np.where(counts == 0)[0]
        if lonely.size == 0:
            return nl, cutoff
        i = int(lonely[0])
        if not grow or cutoff * 1.25 > _MAX_GROWN_CUTOFF_A:
            sym = element_symbol(int(crystal.numbers[i]))
            hint = ("set grow_cutoff=True or raise the cutoff" if not grow
                    else f"grew to {cutoff:.3g} A without finding one")
            raise InputError(f"{crystal.source}, atom {i} ({sym}): no neighbour within "
                             f"{cutoff:.4g} A ({lonely.size} such atom(s)); expected every atom "
                             f"to have one ({hint})")
        cutoff *= 1.25
