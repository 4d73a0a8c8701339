"""Supervised training: splits, metrics, a real small training, early stopping, checkpoints."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import scipy.stats
import torch

from matmeta.errors import InputError
from matmeta.graphs import FeaturizerSettings, build_graphs
from matmeta.models._composition import UnknownElementWarning
from matmeta.models._gnn import CGCNN
from matmeta.training import (
    TrainSettings,
    load_predictor,
    predict_structures,
    regression_metrics,
    split_indices,
    train_property_model,
)

SETTINGS = FeaturizerSettings(cutoff=6.0, max_neighbors=8, n_basis=16)


@functools.lru_cache(maxsize=1)
def dcdft_graphs():
    """ASE's Delta-codes elements with their WIEN2k bulk moduli (GPa)."""
    from ase.collections import dcdft

    names = list(dcdft.names)
    graphs = build_graphs([dcdft[n] for n in names], SETTINGS, workers=1, progress=False)
    moduli = np.array([dcdft.data[n]["wien2k_B"] for n in names], dtype=float)
    return graphs, moduli


def test_random_split_is_a_partition_with_the_asked_sizes():
    tr, va, te = split_indices(200, (0.7, 0.2, 0.1), seed=3)
    assert (len(tr), len(va), len(te)) == (140, 40, 20)
    assert np.array_equal(np.sort(np.concatenate([tr, va, te])), np.arange(200))
    again = split_indices(200, (0.7, 0.2, 0.1), seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((tr, va, te), again, strict=True))


def test_family_split_never_shares_a_family():
    rng = np.random.default_rng(0)
    families = rng.choice([f"F{i}" for i in range(15)], size=300)
    tr, va, te = split_indices(300, (0.8, 0.1, 0.1), seed=1, families=families, by="family")
    sets = [set(families[idx]) for idx in (tr, va, te)]
    assert all(sets) and not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert np.array_equal(np.sort(np.concatenate([tr, va, te])), np.arange(300))
    assert len(tr) > len(va) and len(tr) > len(te)
    with pytest.raises(InputError, match="at least 3 families"):
        split_indices(4, by="family", families=["a", "a", "b", "b"])
    with pytest.raises(InputError, match="family column"):
        split_indices(4, by="family")


def test_metrics_match_scipy_and_hand_values():
    m = regression_metrics([1.0, 2.0, 3.0, 4.0], [1.5, 2.0, 2.0, 4.0])
    assert m["mae"] == pytest.approx(0.375)
    assert m["rmse"] == pytest.approx(np.sqrt(1.25 / 4))
    # For a least-squares line, R^2 equals the squared Pearson correlation (scipy).
    rng = np.random.default_rng(0)
    x = rng.normal(size=50)
    y = 2 * x + rng.normal(size=50)
    fit = scipy.stats.linregress(x, y)
    m = regression_metrics(y, fit.intercept + fit.slope * x)
    assert m["r2"] == pytest.approx(fit.rvalue**2, rel=1e-10)


def test_training_learns_bulk_moduli_and_the_checkpoint_reloads(tmp_path):
    graphs, moduli = dcdft_graphs()
    model = CGCNN(hidden=24, n_conv=2, n_basis=SETTINGS.n_basis)
    opts = TrainSettings(epochs=40, batch_size=16, lr=5e-3, patience=0, warmup_epochs=1)
    # Every element occurs once, so validation cannot improve on memorisation: train without a
    # validation split (the last epoch is kept) and check the fit to the training set.
    result = train_property_model(graphs, moduli, model, SETTINGS, train=opts,
                                  target_transform="log10_standardize", fractions=(0.9, 0, 0.1),
                                  target="bulk_modulus_GPa", seed=0, progress=False)
    tr = result.splits["train"]
    assert len(result.splits["val"]) == 0 and result.best_epoch == 40
    logk = np.log10(moduli)
    # Baseline we did not write: always predict the training median (best constant for MAE).
    baseline = np.abs(logk[tr] - np.median(logk[tr])).mean()
    assert result.metrics["train_transformed"]["mae"] < 0.2 * baseline
    assert result.history["train_loss"][-1] < 0.5 * result.history["train_loss"][0]
    # Metrics in GPa and in log10(GPa) agree with the returned predictions.
    t, p = result.predictions["test"]
    np.testing.assert_allclose(t, moduli[result.splits["test"]])
    assert result.metrics["test"]["mae"] == pytest.approx(np.abs(t - p).mean(), rel=1e-9)
    assert result.metrics["test_transformed"]["mae"] == pytest.approx(
        np.abs(np.log10(t) - np.log10(p)).mean(), rel=1e-6)

    path = result.predictor.save(tmp_path / "model.pt")
    raw = torch.load(path, weights_only=True)
    assert raw["extra"]["featurizer_settings"] == SETTINGS.to_dict()
    assert raw["extra"]["target_transform"]["kind"] == "log10_standardize"
    assert isinstance(raw["matmeta_version"], str)
    loaded = load_predictor(path)
    assert loaded.settings == SETTINGS and loaded.target == "bulk_modulus_GPa"
    test_graphs = [graphs[i] for i in result.splits["test"]]
    # the checkpoint records the training split's elements (symbols from ASE's own table)
    from ase.data import chemical_symbols

    symbols = sorted({chemical_symbols[int(z)] for i in tr for z in graphs[i].z})
    assert loaded.elements == tuple(symbols)
    # every element occurs once: each test structure's element was never seen in training
    n = len(test_graphs)
    with pytest.warns(UnknownElementWarning, match=f"never seen in training .*: {n} of {n} "
                      "structure"):
        np.testing.assert_allclose(predict_structures(path, test_graphs), p, rtol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownElementWarning)
        predict_structures(path, [graphs[i] for i in tr[:3]])       # training elements only


def test_early_stopping_keeps_the_best_validation_epoch():
    graphs, moduli = dcdft_graphs()
    model = CGCNN(hidden=16, n_conv=1, n_basis=SETTINGS.n_basis)
    # A learning rate far too high makes validation worsen, so patience must stop the run.
    opts = TrainSettings(epochs=60, batch_size=16, lr=3e-2, patience=4, warmup_epochs=0,
                         final_lr_ratio=1.0)
    result = train_property_model(graphs, moduli, model, SETTINGS, train=opts,
                                  target_transform="log10_standardize", seed=1, progress=False)
    h = result.history
    assert len(h["epoch"]) < 60
    assert result.best_epoch == h["epoch"][int(np.argmin(h["val_mae"]))]
    assert len(h["epoch"]) - result.best_epoch == 4
    # The kept parameters reproduce the best validation MAE (transformed space).
    va = result.splits["val"]
    with pytest.warns(UnknownElementWarning):      # one structure per element: val is unseen
        pred = result.predictor.predict_graphs([graphs[i] for i in va], units=False)
    y = result.predictor.transform.forward(torch.tensor(moduli[va])).numpy()
    assert np.abs(pred - y).mean() == pytest.approx(min(h["val_mae"]), rel=1e-5)


def test_bad_targets_are_refused():
    graphs, moduli = dcdft_graphs()
    bad = moduli.copy()
    bad[5] = np.nan
    model = CGCNN(hidden=8, n_conv=1, n_basis=SETTINGS.n_basis)
    with pytest.raises(InputError, match="NaN or infinite.*sample 5"):
        train_property_model(graphs, bad, model, SETTINGS, progress=False)
    negative = moduli.copy()
    negative[7] = -2.0
    with pytest.raises(InputError, match="value -2.0 at sample 7 cannot be log10"):
        train_property_model(graphs, negative, model, SETTINGS, progress=False,
                             target_transform="log10_standardize")
    with pytest.raises(InputError, match="71 graphs but 3 targets"):
        train_property_model(graphs, moduli[:3], model, SETTINGS, progress=False)


def test_graphs_built_with_other_settings_are_refused():
    graphs, moduli = dcdft_graphs()
    model = CGCNN(hidden=8, n_conv=1, n_basis=SETTINGS.n_basis)
    other_cutoff = FeaturizerSettings(cutoff=5.5, max_neighbors=8, n_basis=16)
    with pytest.raises(InputError, match="'cutoff' differs: built with 6.0 A.*5.5 A"):
        train_property_model(graphs, moduli, model, other_cutoff, progress=False)
    smaller_cap = FeaturizerSettings(cutoff=6.0, max_neighbors=4, n_basis=16)
    with pytest.raises(InputError, match="'max_neighbors' differs: an atom has 8 neighbours"):
        train_property_model(graphs, moduli, model, smaller_cap, progress=False)
