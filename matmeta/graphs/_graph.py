"""One structure -> one crystal graph (``torch_geometric.data.Data``).

Edge convention (used by every layer and by :func:`~matmeta.graphs.collate`): edge ``k`` points
from neighbour ``edge_index[0, k]`` to centre atom ``edge_index[1, k]``; the neighbour's image
sits at ``pos[edge_index[0, k]] + cell_offset[k] @ cell`` and ``distance[k]`` is its distance
to the centre in angstrom. Edges are sorted by centre, then distance, neighbour index, image.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from matmeta.errors import InputError
from matmeta.graphs._neighbors import check_min_distance, grow_until_connected, select_nearest
from matmeta.graphs._settings import GRAPH_FORMAT_VERSION, FeaturizerSettings
from matmeta.io._crystal import Crystal
from matmeta.io._readers import Disorder, read_structure

__all__ = ["GRAPH_FIELDS", "graph_arrays", "graph_from_arrays", "structure_to_graph"]

# Arrays that make up a graph (what the cache stores).
GRAPH_FIELDS = ("z", "edge_index", "distance", "cell_offset", "pos", "cell", "cutoff_used",
                "num_truncated", "num_neighbors_before_cap")

class _FromSettings:
    """Default marker: take the value from the featurizer settings (cutoff 6.0, cap 12)."""

    def __repr__(self) -> str:
        return "<from settings>"


_UNSET: Any = _FromSettings()


def resolve_settings(settings: FeaturizerSettings | None, cutoff: Any = _UNSET,
                     max_neighbors: Any = _UNSET) -> FeaturizerSettings:
    """Settings with explicitly passed ``cutoff`` / ``max_neighbors`` taking precedence."""
    settings = settings if settings is not None else FeaturizerSettings()
    if not isinstance(settings, FeaturizerSettings):
        raise InputError(f"settings is a {type(settings).__name__}; expected FeaturizerSettings")
    changes = {}
    if cutoff is not _UNSET and cutoff is not None:
        changes["cutoff"] = float(cutoff)
    if max_neighbors is not _UNSET:
        changes["max_neighbors"] = None if max_neighbors is None else int(max_neighbors)
    return dataclasses.replace(settings, **changes) if changes else settings


def graph_arrays(crystal: Crystal, settings: FeaturizerSettings) -> dict[str, np.ndarray]:
    """The graph of ``crystal`` as numpy arrays (keys :data:`GRAPH_FIELDS`); no torch involved.

    Example:
        >>> arrays = graph_arrays(read_structure("NaCl.cif"), FeaturizerSettings())
        >>> arrays["edge_index"].shape, arrays["cutoff_used"]

    Raises:
        InputError: atoms closer than ``settings.min_distance``, or an atom with no neighbour
            within the cutoff (unless ``settings.grow_cutoff``).
    """
    nl, cutoff_used = grow_until_connected(crystal, settings.cutoff, settings.grow_cutoff)
    check_min_distance(crystal, nl, settings.min_distance)
    sel, counts = select_nearest(nl, crystal.num_atoms, settings.max_neighbors)
    cap = settings.max_neighbors
    num_truncated = int((counts > cap).sum()) if cap is not None else 0
    return {
        "z": crystal.numbers.astype(np.int64),
        "edge_index": np.stack([sel.neighbor, sel.center]).astype(np.int64),
        "distance": sel.distance.astype(np.float64),
        "cell_offset": sel.cell_offset.astype(np.int64),
        "pos": np.asarray(crystal.positions, dtype=np.float64),
        "cell": np.asarray(crystal.cell, dtype=np.float64).reshape(1, 3, 3),
        "cutoff_used": np.float64(cutoff_used),
        "num_truncated": np.int64(num_truncated),
        "num_neighbors_before_cap": counts.astype(np.int64),
    }


def graph_from_arrays(arrays: dict[str, np.ndarray], source: str = "") -> Any:
    """Wrap :func:`graph_arrays` output as a ``torch_geometric.data.Data``.

    Example:
        >>> graph = graph_from_arrays(graph_arrays(crystal, settings), crystal.source)
    """
    from torch_geometric.data import Data

    z = torch.from_numpy(np.array(arrays["z"], dtype=np.int64))
    data = Data(
        z=z,
        edge_index=torch.from_numpy(np.ascontiguousarray(arrays["edge_index"])),
        distance=torch.from_numpy(np.ascontiguousarray(arrays["distance"])),
        cell_offset=torch.from_numpy(np.ascontiguousarray(arrays["cell_offset"])),
        pos=torch.from_numpy(np.array(arrays["pos"], dtype=np.float64)),
        cell=torch.from_numpy(np.array(arrays["cell"], dtype=np.float64)),
        num_neighbors_before_cap=torch.from_numpy(
            np.ascontiguousarray(arrays["num_neighbors_before_cap"])),
    )
    data.num_nodes = int(z.shape[0])
    data.cutoff_used = float(arrays["cutoff_used"])
    data.num_truncated = int(arrays["num_truncated"])
    data.source = source
    data.graph_format_version = GRAPH_FORMAT_VERSION
    return data


def structure_to_graph(structure: Any, cutoff: float | None = _UNSET,
                       max_neighbors: int | None = _UNSET,
                       settings: FeaturizerSettings | None = None, *,
                       disorder: Disorder = "refuse") -> Any:
    """Build the periodic crystal graph of one structure.

    Example:
        >>> g = structure_to_graph("NaCl.cif", cutoff=6.0, max_neighbors=12)
        >>> g.z, g.edge_index, g.distance      # (N,), (2, E) neighbour -> centre, (E,) angstrom
        >>> g.cell_offset                      # (E, 3) integer lattice shift of each neighbour
        >>> g.cutoff_used, g.num_truncated     # cutoff actually used; atoms the cap truncated

    Args:
        structure: anything :func:`matmeta.io.read_structure` accepts (file, CIF text, pymatgen
            ``Structure`` or dict, ASE ``Atoms``, :class:`~matmeta.io.Crystal`).
        cutoff: neighbour search radius in angstrom (default ``settings.cutoff``, 6.0).
        max_neighbors: keep this many nearest neighbours per atom (default
            ``settings.max_neighbors``, 12); ``None`` keeps every neighbour within the cutoff.
            Exact ties (within 1e-8 angstrom) are broken by neighbour index, then by image
            offset (a, b, c ascending).
        settings: :class:`FeaturizerSettings` (also supplies ``min_distance`` and
            ``grow_cutoff``); explicit ``cutoff`` / ``max_neighbors`` override it.
        disorder: ``"refuse"`` or ``"majority"`` for partially occupied sites.

    Returns:
        ``torch_geometric.data.Data`` with ``z`` (N,) long, ``edge_index`` (2, E) long (row 0
        neighbour, row 1 centre), ``distance`` (E,) float64 angstrom, ``cell_offset`` (E, 3)
        long, ``pos`` (N, 3) angstrom, ``cell`` (1, 3, 3) angstrom, ``num_neighbors_before_cap``
        (N,), and plain attributes ``cutoff_used`` (angstrom), ``num_truncated`` (atoms whose
        list the cap cut), ``source``.

    Raises:
        InputError: unreadable structure, atoms closer than ``min_distance`` (0.5 A), or an atom
            with no neighbour within the cutoff (unless ``grow_cutoff``), naming the structure
            and atom.
    """
    settings = resolve_settings(settings, cutoff, max_neighbors)
    crystal = structure if isinstance(structure, Crystal) else read_structure(
        structure, disorder=disorder)
    return graph_from_arrays(graph_arrays(crystal, settings), crystal.source)
