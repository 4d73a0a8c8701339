"""Crystal graphs: featurizer settings, periodic neighbour lists, distance expansion, cache."""

from matmeta.graphs._batch import GraphBatch, collate, gaussian_expansion
from matmeta.graphs._cache import GraphCache, build_graphs, structure_key
from matmeta.graphs._graph import graph_arrays, graph_from_arrays, structure_to_graph
from matmeta.graphs._neighbors import NeighborList, neighbor_list, select_nearest
from matmeta.graphs._settings import GRAPH_FORMAT_VERSION, FeaturizerSettings

__all__ = [
    "build_graphs",
    "collate",
    "FeaturizerSettings",
    "gaussian_expansion",
    "graph_arrays",
    "GRAPH_FORMAT_VERSION",
    "graph_from_arrays",
    "GraphBatch",
    "GraphCache",
    "neighbor_list",
    "NeighborList",
    "select_nearest",
    "structure_key",
    "structure_to_graph",
]
