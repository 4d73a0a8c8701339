"""The functional model protocol shared by every model kind.

A model is an object that knows its architecture and settings and nothing mutable: its
parameters live in a plain ``dict[str, Tensor]`` and its forward pass is a pure function of
``(params, inputs)``. The meta-learning engine, adaptation and the influence tools only ever see
that dict and that function, so a CGCNN-class GNN and a two-parameter JMAK law go through the same
code (``torch.func.grad``, ``vmap``, ``jvp``).

Example:
    >>> model = SomeModel(...)                       # any FunctionalModel
    >>> params = model.init_params(torch.Generator().manual_seed(0))
    >>> pred = model.forward(params, support.inputs)  # (n,) predictions
    >>> loss = weighted_mse(pred, support.y, support.weight)
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["Params", "Samples", "FunctionalModel", "weighted_mse", "sample_loss", "num_samples"]

Params = dict[str, Tensor]


class Samples(NamedTuple):
    """A set of labelled samples for one task: model inputs, targets and per-sample weights.

    A NamedTuple so that ``torch.func.vmap`` treats it as a pytree. ``inputs`` is whatever the
    model's ``forward`` takes (a :class:`~matmeta.graphs.GraphBatch`, a tensor of times, a dict of
    tensors). ``weight`` (n,) multiplies each sample's squared error; ``None`` means all ones.
    Setting one weight to zero removes that sample exactly (leave-one-out), and the derivative of
    an adapted model with respect to ``weight`` is the unrolled influence.

    Attributes:
        inputs: model inputs for n samples.
        y: (n,) targets in the model's (transformed) target space.
        weight: (n,) non-negative weights, or None.
    """

    inputs: Any
    y: Tensor
    weight: Tensor | None = None


@runtime_checkable
class FunctionalModel(Protocol):
    """What every model offers. Implementations are cheap, immutable descriptions.

    ``config()`` returns the constructor arguments (JSON-able) so a checkpoint can rebuild the
    model without the caller remembering settings.
    """

    name: str

    def init_params(self, generator: torch.Generator | None = None) -> Params: ...

    def forward(self, params: Params, inputs: Any) -> Tensor: ...

    def config(self) -> dict[str, Any]: ...


def num_samples(samples: Samples) -> int:
    """Number of samples (length of ``y``)."""
    return int(samples.y.shape[-1])


def weighted_mse(pred: Tensor, y: Tensor, weight: Tensor | None = None) -> Tensor:
    """Weighted mean squared error ``sum(w * (pred - y)^2) / sum(w)``.

    With all weights one this is the plain mean; with one weight zero it is the exact mean over the
    remaining samples (so leave-one-out needs no re-indexing and can be vmapped over deletions).
    """
    sq = (pred - y) ** 2
    if weight is None:
        return sq.mean(-1)
    return (weight * sq).sum(-1) / weight.sum(-1).clamp_min(torch.finfo(sq.dtype).tiny)


def sample_loss(model: FunctionalModel, params: Params, samples: Samples) -> Tensor:
    """The task loss every learner uses: weighted MSE of the model on ``samples``."""
    return weighted_mse(model.forward(params, samples.inputs), samples.y, samples.weight)
