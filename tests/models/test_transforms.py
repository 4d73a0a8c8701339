"""Target transforms: standardisation and log10 standardisation, stored as plain dicts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from matmeta.errors import CheckpointError, InputError
from matmeta.models._transforms import TargetTransform

MODULI_GPA = np.array([0.8, 12.0, 45.5, 160.0, 411.0, 98.2])


def test_standardize_matches_numpy():
    t = TargetTransform.fit(MODULI_GPA, kind="standardize")
    y = t.forward(torch.tensor(MODULI_GPA)).numpy()
    np.testing.assert_allclose(y, (MODULI_GPA - MODULI_GPA.mean()) / MODULI_GPA.std(), rtol=1e-12)
    np.testing.assert_allclose(t.inverse(torch.tensor(y)).numpy(), MODULI_GPA, rtol=1e-12)


def test_log10_standardize_matches_numpy_and_round_trips():
    t = TargetTransform.fit(MODULI_GPA, kind="log10_standardize")
    logs = np.log10(MODULI_GPA)
    assert math.isclose(t.mean, logs.mean(), rel_tol=1e-12)
    assert math.isclose(t.std, logs.std(), rel_tol=1e-12)
    y = t.forward(torch.tensor(MODULI_GPA))
    np.testing.assert_allclose(y.mean().item(), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.std(unbiased=False).item(), 1.0, rtol=1e-12)
    np.testing.assert_allclose(t.inverse(y).numpy(), MODULI_GPA, rtol=1e-12)
    np.testing.assert_allclose(t.to_log_space(y).numpy(), logs, rtol=1e-12)


def test_round_trip_through_dict_and_identity():
    t = TargetTransform.fit(MODULI_GPA, kind="log10_standardize")
    assert TargetTransform.from_dict(t.to_dict()) == t
    ident = TargetTransform.fit(MODULI_GPA, kind="identity")
    x = torch.tensor(MODULI_GPA)
    assert torch.equal(ident.forward(x), x) and torch.equal(ident.inverse(x), x)
    constant = TargetTransform.fit([3.0, 3.0, 3.0])
    assert constant.std == 1.0  # no division by zero on a constant target


def test_bad_targets_are_refused_with_their_position():
    with pytest.raises(InputError, match=r"bulk_modulus: 1 NaN .* index 2"):
        TargetTransform.fit([1.0, 2.0, float("nan")], name="bulk_modulus")
    with pytest.raises(InputError, match=r"value -3.0 at index 1 cannot be log10"):
        TargetTransform.fit([1.0, -3.0], kind="log10_standardize")
    with pytest.raises(InputError, match="expected one of"):
        TargetTransform.fit([1.0], kind="log")
    with pytest.raises(CheckpointError):
        TargetTransform.from_dict({"kind": "standardize"})
