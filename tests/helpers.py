"""Shared test helpers: seeding, tree comparison, paths to the real datasets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"
DATA = ROOT / "data"


def shared_dataset(relpath: str) -> Path:
    """Path of a file in ../shared/datasets; skip the test with a clear reason where absent."""
    path = SHARED_DATASETS / relpath
    if not path.exists():
        pytest.skip(f"real dataset {relpath} not found at {SHARED_DATASETS} "
                    "(../shared/datasets is present in CI, absent in a user's fresh clone)")
    return path


def seeded(seed: int = 0) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def assert_tree_close(a: dict, b: dict, rtol: float = 1e-6, atol: float = 1e-8) -> None:
    """Assert two parameter dicts have the same keys and close values."""
    assert set(a) == set(b), f"keys differ: {sorted(set(a) ^ set(b))}"
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=lambda m, k=k: f"{k}: {m}")
