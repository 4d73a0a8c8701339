"""CGCNN-class crystal graph network on the functional core.

Parameters are a plain dict and :meth:`CGCNN.forward` is a pure function of ``(params, batch)``,
so the same model trains with an optimiser, adapts in the MAML inner loop (``torch.func.grad``,
second derivatives) and runs under ``torch.func.vmap`` over stacked parameter dicts.

Message passing is hand-written on plain tensors (``index_select`` + ``index_add``): it was the
fastest CPU path measured and it composes with ``torch.func``. The convolution's linear layer is
split into a centre part, a neighbour part and an edge part, so the node parts are computed once
per atom instead of once per edge.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from matmeta.errors import InputError
from matmeta.graphs._batch import GraphBatch
from matmeta.models._protocol import Params

__all__ = ["CGCNN"]

_AGGREGATIONS = ("mean", "sum")


class CGCNN:
    r"""Crystal graph convolutional network (Xie & Grossman, PRL 120, 145301, 2018), functional.

    Each convolution updates atom features :math:`v_i` from its neighbours :math:`j` with
    :math:`z_{ij} = [v_i, v_j, e_{ij}]`:

    .. math::
        v_i \leftarrow \mathrm{LN}\Big(v_i + \operatorname{agg}_{j}
            \sigma(z_{ij} W_f + b_f) \odot \operatorname{softplus}(z_{ij} W_s + b_s)\Big)

    where :math:`e_{ij}` is the Gaussian expansion of the distance, ``agg`` is the mean (default)
    or sum over neighbours and LN an optional LayerNorm. Atoms start from an embedding indexed by
    atomic number; the crystal vector is the mean over atoms (an intensive property), followed by
    an MLP readout with softplus activations. No BatchNorm: its train-mode statistics break
    ``vmap`` and per-task adaptation.

    Example:
        >>> model = CGCNN(hidden=64, n_conv=3, n_basis=settings.n_basis)
        >>> params = model.init_params(torch.Generator().manual_seed(0))
        >>> pred = model.forward(params, collate(graphs, settings))   # (G,)

    Args:
        hidden: width of the atom features [default: 64].
        n_conv: number of gated convolutions [default: 3].
        n_basis: size of the distance expansion (``FeaturizerSettings.n_basis``) [default: 40].
        max_z: largest atomic number the embedding table covers [default: 100].
        readout_hidden: widths of the readout's hidden layers [default: (hidden,)].
        aggregation: ``"mean"`` (default) or ``"sum"`` over neighbours. Sum without LayerNorm
            diverged in MAML inner loops, so it is refused unless ``layer_norm`` is on.
        layer_norm: apply LayerNorm after each convolution's residual [default: True].

    Shapes:
        input: a :class:`~matmeta.graphs.GraphBatch` of G graphs.
        output: (G,) predictions in the (transformed) target space.
    """

    name = "cgcnn"

    def __init__(self, hidden: int = 64, n_conv: int = 3, n_basis: int = 40, max_z: int = 100,
                 readout_hidden: tuple[int, ...] | list[int] | None = None,
                 aggregation: str = "mean", layer_norm: bool = True) -> None:
        if hidden < 1 or n_conv < 0 or n_basis < 1 or max_z < 1:
            raise InputError(
                f"CGCNN(hidden={hidden}, n_conv={n_conv}, n_basis={n_basis}, max_z={max_z}): "
                "expected positive sizes"
            )
        if aggregation not in _AGGREGATIONS:
            raise InputError(f"aggregation {aggregation!r}: expected one of {_AGGREGATIONS}")
        if aggregation == "sum" and not layer_norm:
            raise InputError(
                "aggregation 'sum' without layer_norm diverges in meta-learning inner loops: "
                "use aggregation='mean' or layer_norm=True"
            )
        self.hidden = int(hidden)
        self.n_conv = int(n_conv)
        self.n_basis = int(n_basis)
        self.max_z = int(max_z)
        self.readout_hidden = tuple(int(w) for w in (
            (self.hidden,) if readout_hidden is None else readout_hidden))
        self.aggregation = aggregation
        self.layer_norm = bool(layer_norm)

    # ------------------------------------------------------------------ description
    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-able), enough to rebuild the model."""
        return {
            "hidden": self.hidden, "n_conv": self.n_conv, "n_basis": self.n_basis,
            "max_z": self.max_z, "readout_hidden": list(self.readout_hidden),
            "aggregation": self.aggregation, "layer_norm": self.layer_norm,
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"CGCNN({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CGCNN) and self.config() == other.config()

    def __hash__(self) -> int:
        return hash(repr(self))

    def _readout_widths(self) -> list[int]:
        return [self.hidden, *self.readout_hidden, 1]

    def head_names(self) -> list[str]:
        """Names of the readout (head) parameters: what ANIL adapts."""
        names = []
        for i in range(len(self._readout_widths()) - 1):
            names += [f"head.{i}.weight", f"head.{i}.bias"]
        return names

    def body_names(self) -> list[str]:
        """Names of every parameter that is not in the head."""
        heads = set(self.head_names())
        return [k for k in self._shapes() if k not in heads]

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        h, two_h = self.hidden, 2 * self.hidden
        shapes: dict[str, tuple[int, ...]] = {"embedding": (self.max_z + 1, h)}
        for c in range(self.n_conv):
            shapes[f"conv.{c}.centre"] = (h, two_h)
            shapes[f"conv.{c}.neighbor"] = (h, two_h)
            shapes[f"conv.{c}.edge"] = (self.n_basis, two_h)
            shapes[f"conv.{c}.bias"] = (two_h,)
            if self.layer_norm:
                shapes[f"conv.{c}.norm.weight"] = (h,)
                shapes[f"conv.{c}.norm.bias"] = (h,)
        widths = self._readout_widths()
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            shapes[f"head.{i}.weight"] = (a, b)
            shapes[f"head.{i}.bias"] = (b,)
        return shapes

    # ------------------------------------------------------------------ parameters
    def init_params(self, generator: torch.Generator | None = None,
                    dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> Params:
        """Fresh parameters, deterministic given ``generator``.

        Linear weights are uniform in +-1/sqrt(fan_in) (PyTorch's default for ``nn.Linear``);
        the convolution's fan-in is the full ``2 * hidden + n_basis`` input of ``z_ij``.
        Embeddings are unit-scale normal, like ``nn.Embedding``.
        """
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        params: Params = {}
        conv_fan_in = 2 * self.hidden + self.n_basis
        for name, shape in self._shapes().items():
            if name == "embedding":
                t = torch.randn(shape, generator=gen, dtype=torch.float64)
            elif name.endswith("norm.weight"):
                t = torch.ones(shape, dtype=torch.float64)
            elif name.endswith("norm.bias"):
                t = torch.zeros(shape, dtype=torch.float64)
            else:
                if name.startswith("conv."):
                    fan_in = conv_fan_in
                else:
                    layer = int(name.split(".")[1])
                    fan_in = self._readout_widths()[layer]
                bound = 1.0 / math.sqrt(fan_in)
                t = (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound
            params[name] = t.to(dtype=dtype, device=device)
        return params

    # ------------------------------------------------------------------ forward
    def _check(self, batch: GraphBatch) -> None:
        if batch.edge_attr.shape[-1] != self.n_basis:
            raise InputError(
                f"graphs have {batch.edge_attr.shape[-1]} distance basis functions, the model "
                f"expects n_basis={self.n_basis}: build graphs with the model's featurizer settings"
            )

    def atom_features(self, params: Params, batch: GraphBatch) -> Tensor:
        """(N, hidden) atom features after the convolutions."""
        self._check(batch)
        h = self.hidden
        src, dst = batch.edge_index[0], batch.edge_index[1]
        n_atoms = batch.z.shape[0]
        v = F.embedding(batch.z, params["embedding"])
        if self.aggregation == "mean":
            # Degree depends only on the graph, never on params: safe under vmap and grad.
            degree = torch.zeros(n_atoms, dtype=v.dtype, device=v.device).index_add(
                0, dst, torch.ones_like(dst, dtype=v.dtype))
            inv_degree = (1.0 / degree.clamp_min(1.0))[:, None]
        for c in range(self.n_conv):
            p = f"conv.{c}."
            centre = v @ params[p + "centre"]            # (N, 2h): once per atom
            neighbour = v @ params[p + "neighbor"]       # (N, 2h): once per atom
            z = (centre.index_select(-2, dst) + neighbour.index_select(-2, src)
                 + batch.edge_attr @ params[p + "edge"] + params[p + "bias"][..., None, :])
            gate, core = z[..., :h], z[..., h:]
            message = torch.sigmoid(gate) * F.softplus(core)
            agg = torch.zeros(v.shape, dtype=message.dtype, device=message.device).index_add(
                -2, dst, message)
            if self.aggregation == "mean":
                agg = agg * inv_degree
            v = v + agg
            if self.layer_norm:
                v = F.layer_norm(v, (h,), params[p + "norm.weight"], params[p + "norm.bias"])
        return v

    def features(self, params: Params, batch: GraphBatch) -> Tensor:
        """(G, d) crystal features: the readout's last hidden layer (input of the output layer)."""
        v = self.atom_features(params, batch)
        pooled = torch.zeros((batch.num_atoms.shape[0], self.hidden), dtype=v.dtype,
                             device=v.device).index_add(-2, batch.graph_index, v)
        x = pooled / batch.num_atoms[:, None].to(v.dtype)
        n_layers = len(self._readout_widths()) - 1
        for i in range(n_layers - 1):
            x = F.softplus(x @ params[f"head.{i}.weight"] + params[f"head.{i}.bias"])
        return x

    def forward(self, params: Params, batch: GraphBatch) -> Tensor:
        """(G,) predictions in the transformed target space (pure in ``params``)."""
        last = len(self._readout_widths()) - 2
        x = self.features(params, batch)
        return (x @ params[f"head.{last}.weight"] + params[f"head.{last}.bias"])[..., 0]

    __call__ = forward
