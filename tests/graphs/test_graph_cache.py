"""Graph cache (read back, content keys, corrupt entries) and the parallel builder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk

import matmeta.graphs._cache as cache_module
from matmeta.errors import InputError
from matmeta.graphs import FeaturizerSettings, GraphCache, build_graphs, structure_to_graph
from matmeta.io import Crystal, read_structures


def _crystals(n: int = 12) -> list[Crystal]:
    out = []
    for k in range(n):
        kind = k % 4
        atoms = bulk("NaCl", "rocksalt", a=5.64) if kind == 3 else bulk(
            ["Cu", "Fe", "Si"][kind], cubic=True)
        atoms.rattle(0.01, seed=k)
        out.append(read_structures(atoms)[0].with_source(f"s{k}"))
    return out


def _same(a, b) -> None:
    for key in ("z", "edge_index", "distance", "cell_offset", "pos", "cell"):
        assert torch.equal(getattr(a, key), getattr(b, key)), key
    assert a.cutoff_used == b.cutoff_used and a.num_truncated == b.num_truncated


def test_second_run_reads_the_cache(tmp_path, monkeypatch):
    settings = FeaturizerSettings(cutoff=5.0, max_neighbors=8)
    crystals = _crystals()
    first = build_graphs(crystals, settings, cache_dir=tmp_path, workers=1, progress=False)
    files = sorted(tmp_path.rglob("*.graph"))
    assert len(files) == len(crystals)

    def no_build(*args, **kwargs):
        raise AssertionError("graph rebuilt although cached")

    monkeypatch.setattr(cache_module, "graph_arrays", no_build)
    renamed = [c.with_source(f"other name {k}") for k, c in enumerate(crystals)]
    second = build_graphs(renamed, settings, cache_dir=tmp_path, workers=1, progress=False)
    for a, b, c in zip(first, second, renamed, strict=True):
        _same(a, b)
        _same(a, structure_to_graph(c, settings=settings))  # cache == direct build
        assert b.source == c.source


def test_a_table_column_keeps_each_structure_name():
    import pandas as pd

    crystals = _crystals(3)
    graphs = build_graphs(pd.Series(crystals), workers=1, progress=False)
    assert [g.source for g in graphs] == ["s0", "s1", "s2"]


def test_settings_change_misses_the_cache(tmp_path):
    crystals = _crystals(3)
    build_graphs(crystals, FeaturizerSettings(cutoff=5.0), cache_dir=tmp_path, workers=1,
                 progress=False)
    build_graphs(crystals, FeaturizerSettings(cutoff=4.0), cache_dir=tmp_path, workers=1,
                 progress=False)
    assert len(list(tmp_path.iterdir())) == 2           # one folder per settings key
    assert len(list(tmp_path.rglob("*.graph"))) == 6


def test_corrupt_entry_is_rebuilt(tmp_path):
    settings = FeaturizerSettings(cutoff=5.0)
    crystal = _crystals(1)[0]
    good = build_graphs([crystal], settings, cache_dir=tmp_path, workers=1, progress=False)[0]
    path = GraphCache(tmp_path, settings).path(crystal)
    for garbage in (b"not a zip file", path.read_bytes()[:100]):
        path.write_bytes(garbage)
        again = build_graphs([crystal], settings, cache_dir=tmp_path, workers=1,
                             progress=False)[0]
        _same(good, again)
        assert GraphCache(tmp_path, settings).get(crystal) is not None   # rewritten whole


def test_entry_of_another_structure_is_not_trusted(tmp_path):
    settings = FeaturizerSettings(cutoff=5.0)
    a, b = _crystals(2)
    cache = GraphCache(tmp_path, settings)
    build_graphs([b], settings, cache_dir=tmp_path, workers=1, progress=False)
    cache.path(a).parent.mkdir(parents=True, exist_ok=True)
    cache.path(a).write_bytes(cache.path(b).read_bytes())   # wrong content under a's key
    assert cache.get(a) is None


def test_content_key_ignores_tiny_noise_but_not_real_changes():
    from matmeta.graphs import structure_key

    c = _crystals(1)[0]
    nudged = Crystal.from_arrays(c.numbers, c.positions + 1e-8, c.cell)
    moved = Crystal.from_arrays(c.numbers, c.positions + np.array([0.01, 0, 0]), c.cell)
    assert structure_key(nudged) == structure_key(c) != structure_key(moved)


def test_two_workers_give_the_same_graphs(tmp_path):
    settings = FeaturizerSettings(cutoff=5.0, max_neighbors=12)
    crystals = _crystals(16)
    serial = build_graphs(crystals, settings, workers=1, progress=False)
    parallel = build_graphs(crystals, settings, workers=2, progress=False, chunk_size=3,
                            cache_dir=tmp_path)
    for a, b in zip(serial, parallel, strict=True):
        _same(a, b)
    assert len(list(tmp_path.rglob("*.graph"))) == 16        # workers wrote the cache


def test_bad_structure_in_a_worker_names_it():
    crystals = _crystals(8)
    bad = Crystal.from_arrays([29, 29], [[0, 0, 0], [0.2, 0, 0]], np.eye(3) * 4, source="bad.cif")
    with pytest.raises(InputError, match=r"bad.cif: atoms 0 and 1 \(Cu, Cu\) are 0.200 A apart"):
        build_graphs(crystals + [bad], workers=2, progress=False, chunk_size=2)
