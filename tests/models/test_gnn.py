"""CGCNN on the functional core: second derivatives, symmetries, intensivity, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.neighborlist import neighbor_list
from torch_geometric.data import Data

from matmeta.errors import CheckpointError, InputError
from matmeta.graphs import FeaturizerSettings, collate
from matmeta.models import Samples, load_model, sample_loss, save_model
from matmeta.models._gnn import CGCNN
from matmeta.models._transforms import TargetTransform
from matmeta.training import PropertyPredictor, load_predictor
from tests.helpers import assert_tree_close

SETTINGS = FeaturizerSettings(cutoff=4.5, max_neighbors=None, n_basis=12)


def ase_graph(atoms, cutoff: float = SETTINGS.cutoff) -> Data:
    """Reference graph straight from ASE's neighbour list (every neighbour within the cutoff)."""
    i, j, d = neighbor_list("ijd", atoms, cutoff)
    return Data(z=torch.as_tensor(atoms.numbers, dtype=torch.long),
                edge_index=torch.as_tensor(np.stack([j, i]), dtype=torch.long),
                distance=torch.as_tensor(d, dtype=torch.float64))


def crystals():
    rng = np.random.default_rng(0)
    nacl = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    nacl.rattle(0.05, rng=rng)  # break the symmetry so invariances are not trivially true
    tio = bulk("Ti", "hcp", a=2.95, c=4.68)
    tio.rattle(0.05, rng=rng)
    gaas = bulk("GaAs", "zincblende", a=5.65)
    return [nacl, tio, gaas]


def batch_of(atoms_list, dtype=torch.float64):
    return collate([ase_graph(a) for a in atoms_list], SETTINGS, dtype=dtype)


def small_model(**kw) -> CGCNN:
    cfg = {"hidden": 8, "n_conv": 2, "n_basis": SETTINGS.n_basis, "readout_hidden": (6,)}
    cfg.update(kw)
    return CGCNN(**cfg)


def params64(model, seed=0):
    return model.init_params(torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_repr_config_and_init_are_deterministic():
    model = CGCNN(hidden=16, n_conv=2, n_basis=12, readout_hidden=(8,))
    assert repr(model) == ("CGCNN(hidden=16, n_conv=2, n_basis=12, max_z=100, readout_hidden=[8], "
                           "aggregation='mean', layer_norm=True)")
    assert CGCNN(**model.config()) == model
    a = model.init_params(torch.Generator().manual_seed(3))
    b = model.init_params(torch.Generator().manual_seed(3))
    c = model.init_params(torch.Generator().manual_seed(4))
    assert_tree_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a["conv.0.centre"], c["conv.0.centre"])
    assert set(model.head_names()) | set(model.body_names()) == set(a)
    assert set(model.head_names()) == {"head.0.weight", "head.0.bias", "head.1.weight",
                                       "head.1.bias"}


def test_refuses_unstable_or_mismatched_configurations():
    with pytest.raises(InputError, match="sum"):
        CGCNN(aggregation="sum", layer_norm=False)
    model = CGCNN(n_basis=7)
    with pytest.raises(InputError, match="n_basis=7"):
        model.forward(model.init_params(), batch_of(crystals()[:1], torch.float32))


@pytest.mark.parametrize("layer_norm", [True, False])
def test_second_derivatives_match_finite_differences(layer_norm):
    """Hessian-vector product through the message passing vs central differences of gradients."""
    model = small_model(layer_norm=layer_norm)
    params = params64(model)
    batch = batch_of(crystals())
    y = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    loss = lambda p: sample_loss(model, p, Samples(batch, y))  # noqa: E731
    grad = torch.func.grad(loss)
    gen = torch.Generator().manual_seed(1)
    v = {k: torch.randn(t.shape, generator=gen, dtype=torch.float64) for k, t in params.items()}
    _, hvp = torch.func.jvp(grad, (params,), (v,))
    eps = 1e-5
    plus = grad({k: params[k] + eps * v[k] for k in params})
    minus = grad({k: params[k] - eps * v[k] for k in params})
    for k in params:
        fd = (plus[k] - minus[k]) / (2 * eps)
        torch.testing.assert_close(hvp[k], fd, rtol=1e-5, atol=1e-8, msg=k)
    # The curvature of the convolution weights is what MAML differentiates through.
    for c in range(model.n_conv):
        assert hvp[f"conv.{c}.neighbor"].abs().max() > 1e-6
        assert hvp[f"conv.{c}.edge"].abs().max() > 1e-6


def test_maml_outer_gradient_matches_finite_differences():
    """d/dp loss(p - a * grad loss(p)): the second-order MAML gradient, grad of grad."""
    model = small_model()
    params = params64(model)
    atoms = crystals()
    support = Samples(batch_of(atoms[:2]), torch.tensor([0.4, -0.1], dtype=torch.float64))
    query = Samples(batch_of(atoms[2:]), torch.tensor([0.2], dtype=torch.float64))
    inner = torch.func.grad(lambda p: sample_loss(model, p, support))

    def outer(p):
        g = inner(p)
        return sample_loss(model, {k: p[k] - 0.5 * g[k] for k in p}, query)

    g_outer = torch.func.grad(outer)(params)
    gen = torch.Generator().manual_seed(2)
    v = {k: torch.randn(t.shape, generator=gen, dtype=torch.float64) for k, t in params.items()}
    eps = 1e-6
    fd = (outer({k: params[k] + eps * v[k] for k in params})
          - outer({k: params[k] - eps * v[k] for k in params})) / (2 * eps)
    analytic = sum((g_outer[k] * v[k]).sum() for k in params)
    torch.testing.assert_close(analytic, fd, rtol=1e-6, atol=1e-10)
    # The second-order term is not negligible: the first-order gradient differs.
    first_order = torch.func.grad(lambda p: sample_loss(model, p, query))(
        {k: params[k] - 0.5 * inner(params)[k] for k in params})
    assert any((g_outer[k] - first_order[k]).abs().max() > 1e-6 for k in params)


def test_vmap_over_stacked_params_matches_a_loop():
    model = small_model()
    batch = batch_of(crystals())
    many = [params64(model, seed) for seed in range(4)]
    stacked = {k: torch.stack([p[k] for p in many]) for k in many[0]}
    out = torch.func.vmap(model.forward, in_dims=(0, None))(stacked, batch)
    loop = torch.stack([model.forward(p, batch) for p in many])
    torch.testing.assert_close(out, loop, rtol=1e-12, atol=1e-12)


def test_features_feed_the_output_layer():
    model = small_model()
    params = params64(model)
    batch = batch_of(crystals())
    feats = model.features(params, batch)
    assert feats.shape == (3, 6)
    manual = feats @ params["head.1.weight"][:, 0] + params["head.1.bias"][0]
    torch.testing.assert_close(model.forward(params, batch), manual)


def _rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


@pytest.mark.parametrize("layer_norm", [True, False])
def test_invariant_to_rotation_translation_and_atom_order(layer_norm):
    model = small_model(layer_norm=layer_norm)
    params = params64(model)
    atoms = crystals()
    base = model.forward(params, batch_of(atoms))
    moved = []
    for k, a in enumerate(atoms):
        b = a.copy()
        rot = _rotation(k)
        b.set_cell(a.cell.array @ rot.T, scale_atoms=False)
        b.positions = a.positions @ rot.T + np.array([0.7, -1.3, 2.9])
        perm = np.random.default_rng(k).permutation(len(b))
        moved.append(b[perm])
    torch.testing.assert_close(model.forward(params, batch_of(moved)), base, rtol=1e-10,
                               atol=1e-10)
    # Different structures really give different predictions (the check is not vacuous).
    assert base.unique().numel() == 3


def test_supercell_gives_the_same_intensive_prediction():
    model = small_model()
    params = params64(model)
    atoms = crystals()
    base = model.forward(params, batch_of(atoms))
    big = model.forward(params, batch_of([a.repeat((2, 2, 2)) for a in atoms]))
    torch.testing.assert_close(big, base, rtol=1e-10, atol=1e-10)


def test_save_load_round_trip(tmp_path):
    model = small_model()
    params = model.init_params(torch.Generator().manual_seed(5))
    path = save_model(tmp_path / "m.pt", model, params, extra={"note": "x"})
    # The file loads with weights_only=True without matmeta's help.
    raw = torch.load(path, weights_only=True)
    assert raw["model_name"] == "cgcnn"
    loaded, loaded_params, extra = load_model(path)
    assert repr(loaded) == repr(model)
    assert_tree_close(loaded_params, params, rtol=0, atol=0)
    assert extra == {"note": "x"}
    batch = batch_of(crystals(), torch.float32)
    torch.testing.assert_close(loaded.forward(loaded_params, batch), model.forward(params, batch))


def test_predictor_refuses_mismatched_featurizer_settings(tmp_path):
    model = small_model()
    pred = PropertyPredictor(model, model.init_params(), SETTINGS,
                             TargetTransform("log10_standardize", 2.0, 0.3), target="K_GPa")
    path = pred.save(tmp_path / "p.pt")
    again = load_predictor(path, settings=SETTINGS)
    assert again.settings == SETTINGS and again.transform == pred.transform
    assert again.target == "K_GPa"
    with pytest.raises(CheckpointError, match="'cutoff'.*4.5.*5.0"):
        load_predictor(path, settings=FeaturizerSettings(cutoff=5.0, max_neighbors=None,
                                                         n_basis=12))
    with pytest.raises(CheckpointError, match="'max_neighbors'"):
        load_predictor(path, settings=FeaturizerSettings(cutoff=4.5, max_neighbors=12,
                                                         n_basis=12))
    graphs = [ase_graph(a) for a in crystals()]
    np.testing.assert_allclose(again.predict_graphs(graphs), pred.predict_graphs(graphs),
                               rtol=1e-6)


def test_symmetries_hold_through_the_projects_capped_graphs():
    """The same checks with matmeta's own graphs (12 nearest neighbours, cutoff 6 A)."""
    from matmeta.graphs import structure_to_graph

    settings = FeaturizerSettings(n_basis=SETTINGS.n_basis)
    model = small_model()
    params = params64(model)

    def predict(atoms_list):
        graphs = [structure_to_graph(a, settings=settings) for a in atoms_list]
        return model.forward(params, collate(graphs, settings, dtype=torch.float64))

    atoms = crystals()
    base = predict(atoms)
    moved = []
    for k, a in enumerate(atoms):
        b = a.copy()
        rot = _rotation(10 + k)
        b.set_cell(a.cell.array @ rot.T, scale_atoms=False)
        b.positions = a.positions @ rot.T + np.array([-2.1, 0.4, 1.7])
        moved.append(b[np.random.default_rng(k).permutation(len(b))])
    torch.testing.assert_close(predict(moved), base, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(predict([a.repeat((2, 2, 2)) for a in atoms]), base, rtol=1e-9,
                               atol=1e-9)
