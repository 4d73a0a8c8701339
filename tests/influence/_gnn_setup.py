"""A small CGCNN pretrained briefly on MP binary elasticity, and one held-out family to adapt.

Shared by the GNN influence tests and benchmarks/bench_influence.py.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import torch

from matmeta.graphs import FeaturizerSettings, collate, structure_to_graph
from matmeta.models import Samples, sample_loss
from matmeta.models._gnn import CGCNN

SETTINGS = FeaturizerSettings(cutoff=5.0, max_neighbors=8, n_basis=16)


def load_rows(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as fh:
        rows = json.load(fh)
    return [r for r in rows if float(r["bulk_modulus_vrh"]) > 1.0]


def _samples(rows: list[dict]) -> Samples:
    graphs = [structure_to_graph(r["structure"], settings=SETTINGS) for r in rows]
    y = torch.tensor([math.log10(float(r["bulk_modulus_vrh"])) for r in rows],
                     dtype=torch.float64)
    return Samples(collate(graphs, SETTINGS, dtype=torch.float64), y)


def pretrained_family(path: Path, family: str = "Se", n_train: int = 160, k_support: int = 15,
                      n_query: int = 10, train_steps: int = 150, seed: int = 0):
    """Pretrain on other families (small structures), return model, params, support, query."""
    rows = load_rows(path)
    small = [r for r in rows if len(r["structure"]["sites"]) <= 8]
    gen = torch.Generator().manual_seed(seed)
    fam = [r for r in small if r["family"] == family]
    others = [r for r in small if r["family"] != family]
    pick = torch.randperm(len(others), generator=gen)[:n_train].tolist()
    train = _samples([others[i] for i in pick])
    order = torch.randperm(len(fam), generator=gen).tolist()
    fam = [fam[i] for i in order][:k_support + n_query]
    support = _samples(fam[:k_support])
    query = _samples(fam[k_support:])
    model = CGCNN(hidden=16, n_conv=2, n_basis=SETTINGS.n_basis, readout_hidden=(16,))
    params = {k: v.double() for k, v in model.init_params(gen).items()}
    params = {k: v.requires_grad_() for k, v in params.items()}
    opt = torch.optim.Adam(params.values(), lr=1e-2)
    for _ in range(train_steps):
        opt.zero_grad()
        loss = sample_loss(model, params, train)
        loss.backward()
        opt.step()
    params = {k: v.detach() for k, v in params.items()}
    ids = [r["mp_id"] for r in fam[:k_support]]
    return model, params, support, query, ids, float(loss.detach())
