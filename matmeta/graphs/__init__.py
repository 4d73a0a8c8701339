"""Crystal graphs: featurizer settings, periodic neighbour lists, distance expansion, cache."""

from matmeta.graphs._batch import GraphBatch, collate, gaussian_expansion
from matmeta.graphs._settings import GRAPH_FORMAT_VERSION, FeaturizerSettings

__all__ = sorted(["FeaturizerSettings", "GRAPH_FORMAT_VERSION", "GraphBatch", "collate",
                  "gaussian_expansion"])
