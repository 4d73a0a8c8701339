"""Session-wide test settings and fixtures of real structures."""

from __future__ import annotations

import os

import pytest
import torch

# Small-operation workloads run faster and more reproducibly on one thread (FINDINGS).
torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def dcdft_atoms():
    """ASE's Delta-codes elemental crystals (ship with ASE): name -> Atoms."""
    from ase.collections import dcdft

    return {name: dcdft[name] for name in dcdft.names}
