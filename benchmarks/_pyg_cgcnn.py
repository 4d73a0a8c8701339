"""The baseline a user would otherwise write: matmeta's CGCNN as a standard ``nn.Module``.

Same architecture and arithmetic as :class:`matmeta.models._gnn.CGCNN` (embedding by atomic
number; gated convolutions with residual and LayerNorm, mean over neighbours; mean pooling over
atoms; softplus MLP readout), built the usual way from ``torch_geometric.nn.CGConv`` layers so
that ``higher`` can patch it. :meth:`PygCGCNN.from_params` loads matmeta's parameter dict, so
both sides of the speed benchmark start from identical weights.

PyG's ``CGConv`` (2.8) computes ``x_i + agg_j sigmoid(z W_f^T + b_f) * softplus(z W_s^T + b_s)``
with ``z = [x_i, x_j, e_ij]`` (``x_i`` the target, row 1 of ``edge_index``; ``x_j`` the source,
row 0) on every edge. matmeta stores the same linear map split by input block (``centre``,
``neighbor``, ``edge``; each ``(in, 2h)`` with the gate in the first ``h`` columns and the core in
the last ``h``) so that the node blocks are applied once per atom instead of once per edge.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import CGConv, global_mean_pool


class PygCGCNN(nn.Module):
    """CGCNN from ``CGConv`` layers, ``nn.Embedding``, ``nn.LayerNorm`` and ``nn.Linear``.

    Example:
        >>> net = PygCGCNN.from_params(model, params)      # model: matmeta CGCNN
        >>> net(batch)                                     # batch: matmeta GraphBatch -> (G,)
    """

    def __init__(self, hidden: int, n_conv: int, n_basis: int, max_z: int,
                 readout_hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.embedding = nn.Embedding(max_z + 1, hidden)
        self.convs = nn.ModuleList(
            CGConv(hidden, dim=n_basis, aggr="mean", batch_norm=False) for _ in range(n_conv))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(n_conv))
        widths = [hidden, *readout_hidden, 1]
        self.head = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:],
                                                                  strict=True))

    def forward(self, batch) -> Tensor:
        v = self.embedding(batch.z)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            v = norm(conv(v, batch.edge_index, batch.edge_attr))
        x = global_mean_pool(v, batch.graph_index, size=batch.num_atoms.shape[0])
        last = len(self.head) - 1
        for i, lin in enumerate(self.head):  # no slicing: `higher`'s patched ModuleList refuses it
            x = lin(x) if i == last else F.softplus(lin(x))
        return x[:, 0]

    @classmethod
    def from_params(cls, model, params: dict[str, Tensor]) -> PygCGCNN:
        """The module with matmeta ``model``'s ``params`` (mean aggregation and LayerNorm only)."""
        if model.aggregation != "mean" or not model.layer_norm:
            raise ValueError("the CGConv baseline covers aggregation='mean' with layer_norm=True")
        h = model.hidden
        net = cls(h, model.n_conv, model.n_basis, model.max_z, model.readout_hidden)
        with torch.no_grad():
            net.embedding.weight.copy_(params["embedding"])
            for c, (conv, norm) in enumerate(zip(net.convs, net.norms, strict=True)):
                p = f"conv.{c}."
                # rows of z = [x_i (centre), x_j (neighbour), e_ij]; columns [:h] gate, [h:] core
                w = torch.cat([params[p + "centre"], params[p + "neighbor"], params[p + "edge"]])
                conv.lin_f.weight.copy_(w[:, :h].T)
                conv.lin_s.weight.copy_(w[:, h:].T)
                conv.lin_f.bias.copy_(params[p + "bias"][:h])
                conv.lin_s.bias.copy_(params[p + "bias"][h:])
                norm.weight.copy_(params[p + "norm.weight"])
                norm.bias.copy_(params[p + "norm.bias"])
            for i, lin in enumerate(net.head):
                lin.weight.copy_(params[f"head.{i}.weight"].T)
                lin.bias.copy_(params[f"head.{i}.bias"])
        return net

    def to_params(self, model) -> dict[str, Tensor]:
        """This module's parameters in matmeta's parameter dict layout."""
        return self._as_params(model, lambda t: t.detach())

    def grads_as_params(self, model) -> dict[str, Tensor]:
        """The parameters' ``.grad`` in matmeta's parameter dict layout."""
        return self._as_params(model, lambda t: t.grad)

    def _as_params(self, model, get) -> dict[str, Tensor]:
        out = {"embedding": get(self.embedding.weight)}
        h = model.hidden
        for c, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            p = f"conv.{c}."
            w = torch.cat([get(conv.lin_f.weight).T, get(conv.lin_s.weight).T], dim=1)
            out[p + "centre"] = w[:h]
            out[p + "neighbor"] = w[h:2 * h]
            out[p + "edge"] = w[2 * h:]
            out[p + "bias"] = torch.cat([get(conv.lin_f.bias), get(conv.lin_s.bias)])
            out[p + "norm.weight"] = get(norm.weight)
            out[p + "norm.bias"] = get(norm.bias)
        for i, lin in enumerate(self.head):
            out[f"head.{i}.weight"] = get(lin.weight).T
            out[f"head.{i}.bias"] = get(lin.bias)
        return {k: out[k] for k in model._shapes()}
