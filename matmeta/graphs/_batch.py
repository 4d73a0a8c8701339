"""Many crystal graphs as one disjoint graph: the GNN's input.

A :class:`GraphBatch` is a NamedTuple of plain tensors (a pytree for ``torch.func``), built
outside any transformed function by :func:`collate` from ``torch_geometric.data.Data`` graphs made
by :func:`matmeta.graphs.structure_to_graph`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from matmeta.errors import InputError
from matmeta.graphs._settings import FeaturizerSettings

__all__ = ["GraphBatch", "collate", "gaussian_expansion"]


class GraphBatch(NamedTuple):
    """A disjoint union of graphs.

    Shapes:
        z: (N,) atomic numbers (long).
        edge_index: (2, E) long; row 0 the neighbour (source), row 1 the centre atom (target).
        edge_attr: (E, n_basis) Gaussian expansion of the edge distances.
        distance: (E,) edge lengths in angstrom.
        graph_index: (N,) which graph each atom belongs to (long).
        num_atoms: (G,) atoms per graph (float, for mean pooling).
    """

    z: Tensor
    edge_index: Tensor
    edge_attr: Tensor
    distance: Tensor
    graph_index: Tensor
    num_atoms: Tensor

    @property
    def num_graphs(self) -> int:
        return int(self.num_atoms.shape[0])

    def to(self, device: torch.device | str) -> GraphBatch:
        return GraphBatch(*(t.to(device) for t in self))


def gaussian_expansion(distance: Tensor, settings: FeaturizerSettings) -> Tensor:
    """Expand distances (E,) into (E, n_basis) Gaussians exp(-(d - mu_k)^2 / width^2)."""
    centres = torch.linspace(0.0, settings.cutoff, settings.n_basis, dtype=distance.dtype,
                             device=distance.device)
    return torch.exp(-((distance[:, None] - centres[None, :]) ** 2) / settings.width**2)


def collate(graphs: Sequence, settings: FeaturizerSettings,
            dtype: torch.dtype = torch.float32) -> GraphBatch:
    """Join ``Data`` graphs (with ``z``, ``edge_index``, ``distance``) into one :class:`GraphBatch`.

    Raises:
        InputError: an empty list of graphs.
    """
    if len(graphs) == 0:
        raise InputError("no graphs to batch: the input list is empty")
    zs, edges, dists, gidx, counts = [], [], [], [], []
    offset = 0
    for i, g in enumerate(graphs):
        n = int(g.z.shape[0])
        zs.append(g.z.long())
        edges.append(g.edge_index.long() + offset)
        dists.append(g.distance.to(dtype))
        gidx.append(torch.full((n,), i, dtype=torch.long))
        counts.append(n)
        offset += n
    distance = torch.cat(dists)
    return GraphBatch(
        z=torch.cat(zs),
        edge_index=torch.cat(edges, dim=1),
        edge_attr=gaussian_expansion(distance, settings),
        distance=distance,
        graph_index=torch.cat(gidx),
        num_atoms=torch.tensor(counts, dtype=dtype),
    )
