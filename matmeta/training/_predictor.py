"""A trained property model: network, parameters, featurizer settings and target transform.

:class:`PropertyPredictor` is the transform wrapped around the functional model: it predicts in
the target's units, and it saves and loads as one checkpoint (kind ``"model"``) so that loading
rebuilds everything without the caller remembering settings.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from matmeta._version import __version__
from matmeta.errors import CheckpointError
from matmeta.graphs._batch import GraphBatch, collate
from matmeta.graphs._settings import FeaturizerSettings
from matmeta.models._protocol import FunctionalModel, Params
from matmeta.models._registry import load_model, save_model
from matmeta.models._transforms import TargetTransform

__all__ = ["PropertyPredictor", "check_graphs", "graph_elements", "load_predictor",
           "predict_graphs_batched", "predict_structures", "warn_unseen_elements"]


@dataclass
class PropertyPredictor:
    """A trained model that predicts a property in its units.

    Example:
        >>> pred = load_predictor("model.pt")
        >>> K_GPa = pred.predict_graphs(graphs)        # numpy array in the target's units
        >>> pred.save("copy.pt")

    Attributes:
        model: the functional model (e.g. :class:`~matmeta.models.CGCNN`).
        params: its parameter dict.
        settings: featurizer settings the graphs must be built with.
        transform: the target transform (model space <-> units).
        target: the target's name (the column the predictions are written to).
        metrics: training metrics (split -> metric -> value), stored in the checkpoint.
        info: other plain data kept in the checkpoint (history, training settings).
        elements: the element symbols of the training split, sorted; a structure holding any
            other element is predicted with a warning (:func:`warn_unseen_elements`). None for
            checkpoints from before they were recorded: no warning.
    """

    model: FunctionalModel
    params: Params
    settings: FeaturizerSettings
    transform: TargetTransform
    target: str = "target"
    metrics: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    elements: tuple[str, ...] | None = None

    def forward(self, params: Params, batch: GraphBatch) -> Tensor:
        """Pure forward in the target's units: ``transform.inverse(model.forward(...))``."""
        return self.transform.inverse(self.model.forward(params, batch))

    def check_settings(self, settings: FeaturizerSettings, what: str = "model") -> None:
        """Refuse graphs built with other featurizer settings (names the setting that differs)."""
        self.settings.check_compatible(settings, what=what)

    def predict_graphs(self, graphs: Sequence, batch_size: int = 256,
                       device: torch.device | str = "cpu", units: bool = True) -> np.ndarray:
        """Predictions for ``Data`` graphs built with :attr:`settings`.

        Args:
            graphs: ``torch_geometric.data.Data`` graphs (``z``, ``edge_index``, ``distance``).
            batch_size: graphs per forward pass.
            device: where to compute.
            units: return the target's units (default) or the model's transformed space.
        """
        check_graphs(graphs, self.settings)
        self.warn_unseen_elements(graphs)
        raw = predict_graphs_batched(self.model, self.params, graphs, self.settings,
                                     batch_size=batch_size, device=device)
        if units:
            raw = self.transform.inverse(raw)
        return raw.double().numpy()

    def warn_unseen_elements(self, graphs: Sequence) -> list[str]:
        """Warn once when graphs hold elements outside :attr:`elements`; return those elements.

        Example:
            >>> pred.warn_unseen_elements(graphs)      # ['He', 'Ne'] and one warning line
        """
        if self.elements is None:
            return []
        names = [getattr(g, "source", None) or f"graph {i}" for i, g in enumerate(graphs)]
        return warn_unseen_elements([graph_elements(g) for g in graphs], self.elements,
                                    names=names, what="structure(s)")

    def save(self, path: str | os.PathLike) -> Path:
        """Write the checkpoint atomically (loads with ``weights_only=True``)."""
        extra = {
            "featurizer_settings": self.settings.to_dict(),
            "target_transform": self.transform.to_dict(),
            "target": self.target,
            "metrics": self.metrics,
            "info": self.info,
            "matmeta_version": __version__,
        }
        if self.elements is not None:
            extra["train_elements"] = list(self.elements)
        return save_model(path, self.model, self.params, extra=extra, kind="model")


def load_predictor(path: str | os.PathLike, settings: FeaturizerSettings | None = None,
                   map_location: str | torch.device = "cpu") -> PropertyPredictor:
    """Load a :class:`PropertyPredictor` saved by :meth:`PropertyPredictor.save`.

    Example:
        >>> pred = load_predictor("model.pt")
        >>> pred.settings.cutoff                      # 6.0, read from the checkpoint

    Args:
        path: the checkpoint.
        settings: featurizer settings the caller's graphs were built with; a mismatch is refused
            with a message naming the setting that differs.
        map_location: device the parameters are loaded to.

    Raises:
        CheckpointError: missing/foreign file, no featurizer settings or target transform in it,
            or settings that differ from ``settings``.
    """
    model, params, extra = load_model(path, kind="model", map_location=map_location)
    for key in ("featurizer_settings", "target_transform"):
        if key not in extra:
            raise CheckpointError(f"{path}: holds no {key.replace('_', ' ')} (not a property "
                                  "model trained by `matmeta train`)")
    saved = FeaturizerSettings.from_dict(extra["featurizer_settings"])
    if settings is not None:
        try:
            saved.check_compatible(settings)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
    return PropertyPredictor(
        model=model, params=params, settings=saved,
        transform=TargetTransform.from_dict(extra["target_transform"]),
        target=str(extra.get("target", "target")),
        metrics=dict(extra.get("metrics", {})), info=dict(extra.get("info", {})),
        elements=(None if extra.get("train_elements") is None
                  else tuple(str(e) for e in extra["train_elements"])),
    )


def graph_elements(graph: Any) -> set[str]:
    """The element symbols of one graph (its atomic numbers ``z``)."""
    from pymatgen.core import Element

    return {Element.from_Z(int(z)).symbol for z in torch.unique(torch.as_tensor(graph.z))}


def warn_unseen_elements(rows: Sequence[set[str]], known: Sequence[str], *,
                         names: Sequence[str] | None = None, what: str = "structure(s)",
                         seen_in: str = "training") -> list[str]:
    """One warning naming the elements of ``rows`` outside ``known`` and how many rows hold them.

    A model has learned nothing about an element it never saw (a CGCNN's embedding of it is its
    untrained initial value), so its predictions for such rows are extrapolations; the
    composition models say the same for their inputs (:class:`UnknownElementWarning`).

    Example:
        >>> warn_unseen_elements([{"Cu"}, {"He"}], ["Al", "Cu"], names=["Cu.cif", "He.cif"])
        ['He']          # warns: element(s) He never seen in training (seen: Al, Cu): 1 of 2 ...

    Args:
        rows: the element symbols of each row.
        known: the elements seen in training.
        names: what to call each row in the message (the first affected one is named).
        what: how the rows are called in the message.
        seen_in: what "training" was, for the message.

    Returns:
        The unseen elements, sorted by atomic number (empty: no warning).
    """
    import warnings

    from pymatgen.core import Element

    from matmeta.models._composition import UnknownElementWarning

    known = set(known)
    hit = [i for i, els in enumerate(rows) if not els <= known]
    if not hit:
        return []

    def by_z(els: set[str]) -> list[str]:
        return sorted(els, key=lambda e: Element(e).Z)

    unseen = by_z({el for i in hit for el in rows[i] - known})
    seen = ", ".join(by_z(known)) if len(known) <= 12 else f"{len(known)} elements"
    first = f" (first: {names[hit[0]]})" if names is not None else ""
    warnings.warn(f"element(s) {', '.join(unseen)} never seen in {seen_in} (seen: {seen}): "
                  f"{len(hit)} of {len(rows)} {what} hold them{first}; their predictions are "
                  "extrapolations", UnknownElementWarning, stacklevel=3)
    return unseen


@torch.no_grad()
def predict_graphs_batched(model: FunctionalModel, params: Params, graphs: Sequence,
                           settings: FeaturizerSettings, batch_size: int = 256,
                           device: torch.device | str = "cpu") -> Tensor:
    """(G,) model outputs (transformed space) for graphs, batch by batch, on CPU at the end."""
    dtype = next(iter(params.values())).dtype
    dev_params = {k: v.to(device) for k, v in params.items()}
    out = []
    for start in range(0, len(graphs), batch_size):
        batch = collate(graphs[start:start + batch_size], settings, dtype=dtype).to(device)
        out.append(model.forward(dev_params, batch).detach().cpu())
    if not out:
        return torch.zeros(0, dtype=dtype)
    return torch.cat(out)


def predict_structures(model: PropertyPredictor | str | os.PathLike, structures: Any, *,
                       batch_size: int = 256, device: torch.device | str = "cpu",
                       workers: int = 1, cache_dir: str | os.PathLike | None = None,
                       progress: bool = False) -> np.ndarray:
    """Predictions in the target's units for structures (or graphs already built).

    Example:
        >>> K_GPa = predict_structures("model.pt", ["a.cif", "b.cif"])
        >>> K_GPa = predict_structures(predictor, graphs)   # graphs built with its settings

    Args:
        model: a :class:`PropertyPredictor` or the path of its checkpoint.
        structures: anything :func:`matmeta.graphs.build_graphs` accepts (files, folders,
            pymatgen/ASE objects, crystals), or a list of ``Data`` graphs built with the model's
            featurizer settings.
        batch_size: structures per forward pass.
        device: where to compute.
        workers, cache_dir, progress: passed to :func:`~matmeta.graphs.build_graphs`.

    Returns:
        (n,) numpy array in the target's units (``PropertyPredictor.target``).
    """
    predictor = model if isinstance(model, PropertyPredictor) else load_predictor(model)
    if isinstance(structures, Sequence) and not isinstance(structures, str) and structures \
            and all(hasattr(s, "edge_index") for s in structures):
        graphs = structures
    else:
        from matmeta.graphs import build_graphs

        graphs = build_graphs(structures, predictor.settings, cache_dir=cache_dir,
                              workers=workers, progress=progress)
    return predictor.predict_graphs(graphs, batch_size=batch_size, device=device)


def check_graphs(graphs: Sequence, settings: FeaturizerSettings) -> None:
    """Refuse graphs that cannot have been built with ``settings`` (cheap, per graph).

    Graphs from :func:`~matmeta.graphs.structure_to_graph` record the cutoff used and their format
    version; a graph built with a larger cutoff, another format or more neighbours per atom than
    the cap is an error naming the graph and the setting.

    Raises:
        InputError: an empty list or a graph inconsistent with ``settings``.
    """
    from matmeta.errors import InputError

    if len(graphs) == 0:
        raise InputError("no graphs: the input list is empty")
    for i, g in enumerate(graphs):
        name = getattr(g, "source", None) or f"graph {i}"
        version = getattr(g, "graph_format_version", settings.version)
        if version != settings.version:
            raise InputError(f"{name}: featurizer setting 'version' differs: built with graph "
                             f"format {version}, the model expects {settings.version}")
        used = getattr(g, "cutoff_used", None)
        if used is not None and not settings.grow_cutoff and abs(float(used) - settings.cutoff) \
                > 1e-9:
            raise InputError(f"{name}: featurizer setting 'cutoff' differs: built with "
                             f"{float(used)} A, the model expects {settings.cutoff} A")
        if settings.max_neighbors is not None and g.edge_index.shape[1]:
            most = int(torch.bincount(g.edge_index[1]).max())
            if most > settings.max_neighbors:
                raise InputError(f"{name}: featurizer setting 'max_neighbors' differs: an atom "
                                 f"has {most} neighbours, the model keeps at most "
                                 f"{settings.max_neighbors}")
