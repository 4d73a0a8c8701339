"""Graph cache on disk and the parallel builder.

An entry is keyed by the structure's content (atomic numbers, positions and cell rounded to
1e-5 angstrom, periodicity), the featurizer settings' key and the graph format version, so a
renamed file hits the cache and a changed setting misses it. Entries are plain binary arrays
with a JSON header and a checksum (nothing executable), written to a temporary name and renamed
into place; an entry that fails to load or does not match its structure is rebuilt and
overwritten.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import zlib
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from matmeta.errors import InputError
from matmeta.graphs._graph import (
    GRAPH_FIELDS,
    graph_arrays,
    graph_from_arrays,
    resolve_settings,
)
from matmeta.graphs._settings import GRAPH_FORMAT_VERSION, FeaturizerSettings
from matmeta.io._crystal import Crystal
from matmeta.io._readers import Disorder, read_structures

__all__ = ["GraphCache", "build_graphs", "structure_key"]

# Below this many graphs to build, forking a worker (~0.2 s with torch and pymatgen loaded)
# costs more than it saves.
_MIN_PARALLEL = 256

# Positions and cells are hashed after rounding to this many angstrom.
_HASH_RESOLUTION_A = 1e-5


def structure_key(crystal: Crystal) -> str:
    """Content hash of a structure (independent of its file name).

    Example:
        >>> structure_key(read_structure("a.cif")) == structure_key(read_structure("copy.cif"))
        True
    """
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(crystal.numbers, dtype=np.int64).tobytes())
    h.update(np.rint(crystal.positions / _HASH_RESOLUTION_A).astype(np.int64).tobytes())
    h.update(np.rint(crystal.cell / _HASH_RESOLUTION_A).astype(np.int64).tobytes())
    h.update(np.asarray(crystal.pbc, dtype=np.uint8).tobytes())
    return h.hexdigest()[:32]


class GraphCache:
    """Graphs on disk under ``root/<settings key>-v<format>/<content hash>.graph``.

    Example:
        >>> cache = GraphCache("~/.cache/matmeta/graphs", FeaturizerSettings())
        >>> arrays = cache.get(crystal)          # None on a miss or a corrupt entry
        >>> cache.put(crystal, graph_arrays(crystal, cache.settings))
    """

    def __init__(self, root: str | os.PathLike, settings: FeaturizerSettings) -> None:
        self.root = Path(root).expanduser()
        self.settings = settings
        self.folder = self.root / f"{settings.key()}-v{GRAPH_FORMAT_VERSION}"
        self._made: set[Path] = set()

    def path(self, crystal: Crystal, key: str | None = None) -> Path:
        """Entry path of ``crystal`` (``key``: its :func:`structure_key`, if already known)."""
        return self.folder / f"{key or structure_key(crystal)}.graph"

    def get(self, crystal: Crystal, key: str | None = None) -> dict[str, np.ndarray] | None:
        """The cached arrays of ``crystal``; ``None`` on a miss or an unusable entry."""
        try:
            blob = bytearray(self.path(crystal, key).read_bytes())
        except OSError:
            return None
        arrays = _decode(blob)
        if arrays is None or not _consistent(arrays, crystal):
            return None
        return arrays

    def put(self, crystal: Crystal, arrays: dict[str, np.ndarray],
            key: str | None = None) -> None:
        """Write an entry: temporary file in the same folder, then rename into place."""
        path = self.path(crystal, key)
        if path.parent not in self._made:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._made.add(path.parent)
        # No fsync and no mkstemp: an entry needs atomic visibility, not durability (a lost or
        # torn entry is rebuilt), the pid makes the temporary name unique among writers, and
        # both calls cost more than building the graph.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(_encode(arrays))
            os.replace(tmp, path)
        except BaseException:
            if tmp.exists():
                tmp.unlink()
            raise


# Entry layout: magic, header length (uint32 LE), JSON header [[name, dtype, shape], ...],
# CRC32 of the payload (uint32 LE), payload (the arrays' bytes in header order). A plain
# binary layout reads ~30x faster than .npz (whose per-array zip and header parsing dominated).
_MAGIC = b"MMGRAPH1"


def _encode(arrays: dict[str, np.ndarray]) -> bytes:
    fields, chunks = [], []
    for name in GRAPH_FIELDS:
        a = np.asarray(arrays[name])          # tobytes() below writes C order
        fields.append([name, a.dtype.str, list(a.shape)])
        chunks.append(a.tobytes())
    header = json.dumps(fields, separators=(",", ":")).encode()
    payload = b"".join(chunks)
    return b"".join([_MAGIC, struct.pack("<I", len(header)), header,
                     struct.pack("<I", zlib.crc32(payload)), payload])


def _decode(blob: bytearray) -> dict[str, np.ndarray] | None:
    try:
        if blob[:8] != _MAGIC:
            return None
        (hlen,) = struct.unpack_from("<I", blob, 8)
        fields = json.loads(bytes(blob[12:12 + hlen]))
        (crc,) = struct.unpack_from("<I", blob, 12 + hlen)
        start = 16 + hlen
        if zlib.crc32(memoryview(blob)[start:]) != crc:
            return None
        arrays, offset = {}, start
        for name, dtype, shape in fields:
            dt = np.dtype(dtype)
            count = math.prod(shape)
            arrays[name] = np.frombuffer(blob, dtype=dt, count=count,
                                         offset=offset).reshape(tuple(shape))
            offset += count * dt.itemsize
        if offset != len(blob) or set(arrays) != set(GRAPH_FIELDS):
            return None
        return arrays
    except (ValueError, struct.error, json.JSONDecodeError, TypeError):
        return None


def _consistent(arrays: dict[str, np.ndarray], crystal: Crystal) -> bool:
    z, ei = arrays["z"], arrays["edge_index"]
    e = ei.shape[1] if ei.ndim == 2 and ei.shape[0] == 2 else -1
    return (z.shape == crystal.numbers.shape and bool(np.array_equal(z, crystal.numbers))
            and e >= 0 and arrays["distance"].shape == (e,)
            and arrays["cell_offset"].shape == (e, 3)
            and (e == 0 or (int(ei.min()) >= 0 and int(ei.max()) < z.shape[0])))


def _build_chunk(crystals: list[Crystal], settings: FeaturizerSettings,
                 cache: GraphCache | None, keys: list[str] | None = None,
                 ) -> list[dict[str, np.ndarray]]:
    out = []
    for k, c in enumerate(crystals):
        arrays = graph_arrays(c, settings)
        if cache is not None:
            cache.put(c, arrays, keys[k] if keys is not None else None)
        out.append(arrays)
    return out


def _pool_context():
    import multiprocessing as mp

    # fork shares the already-imported modules (no re-import of pymatgen per worker); the
    # workers only run numpy and pymatgen code, never torch, so forking a torch process is safe.
    return mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()


def _build_parallel(crystals: list[Crystal], todo: list[int], arrays: list, settings,
                    cache: GraphCache | None, keys: list | None, workers: int, size: int,
                    bar) -> None:
    """Fill ``arrays[todo]`` with ``workers - 1`` processes plus this one.

    This process takes chunks from the back of the queue while the pool takes them from the
    front: one fewer process to fork and half the results to pickle, and no core idles while
    this process waits.
    """
    chunks = deque(todo[k:k + size] for k in range(0, len(todo), size))
    inflight: dict = {}

    def run(chunk: list[int]) -> tuple:
        return ([crystals[i] for i in chunk], settings, cache,
                None if keys is None else [keys[i] for i in chunk])

    def store(chunk: list[int], results: list) -> None:
        for i, a in zip(chunk, results, strict=True):
            arrays[i] = a
        bar.update(len(chunk))

    with ProcessPoolExecutor(max_workers=workers - 1, mp_context=_pool_context()) as pool:
        while chunks or inflight:
            while chunks and len(inflight) < 2 * (workers - 1):
                chunk = chunks.popleft()
                inflight[pool.submit(_build_chunk, *run(chunk))] = chunk
            for fut in [f for f in inflight if f.done()]:
                store(inflight.pop(fut), fut.result())
            if chunks:
                chunk = chunks.pop()
                store(chunk, _build_chunk(*run(chunk)))
            elif inflight:
                wait(inflight, return_when=FIRST_COMPLETED)


def build_graphs(structures: Any, settings: FeaturizerSettings | None = None, *,
                 cache_dir: str | os.PathLike | None = None, workers: int = 2,
                 progress: bool = True, chunk_size: int | None = None,
                 disorder: Disorder = "refuse") -> list[Any]:
    """Build the graphs of many structures, in parallel and through an on-disk cache.

    Example:
        >>> df = read_structure_table("mp.json.gz", target_column="bulk_modulus_vrh")
        >>> graphs = build_graphs(df["structure"], FeaturizerSettings(), cache_dir=".graphs")
        >>> batch = collate(graphs[:32], FeaturizerSettings())

    Args:
        structures: anything :func:`matmeta.io.read_structures` accepts (a list of
            :class:`~matmeta.io.Crystal` is cheapest).
        settings: featurizer settings (default ``FeaturizerSettings()``).
        cache_dir: folder of the graph cache; ``None`` builds without caching.
        workers: processes building graphs, this one included (1 builds here only; 2 adds
            one worker process).
        progress: show a tqdm bar (only on a terminal).
        chunk_size: structures per task sent to a worker (default: about 8 tasks per worker;
            without it, fewer than 256 structures are built in this process alone).
        disorder: ``"refuse"`` or ``"majority"`` for partially occupied sites.

    Returns:
        One ``torch_geometric.data.Data`` per structure, in input order (see
        :func:`structure_to_graph`).

    Raises:
        InputError: the first bad structure, naming it.
    """
    from tqdm.auto import tqdm

    settings = resolve_settings(settings)
    if workers < 1:
        raise InputError(f"workers={workers}: expected at least 1")
    items = None
    if not isinstance(structures, (str, os.PathLike, Crystal)) \
            and type(structures).__name__ != "DataFrame" and hasattr(structures, "__iter__"):
        items = list(structures)                # a list, tuple or pandas Series
    if items and all(isinstance(s, Crystal) for s in items):
        crystals = items
    else:
        crystals = read_structures(structures if items is None else items, disorder=disorder)
    n = len(crystals)
    if n == 0:
        raise InputError("empty list of structures; expected at least one structure")
    arrays: list[dict[str, np.ndarray] | None] = [None] * n
    cache = GraphCache(cache_dir, settings) if cache_dir is not None else None
    bar = tqdm(total=n, desc="graphs", unit="struct", disable=None if progress else True)
    try:
        keys = None
        if cache is not None:
            keys = [structure_key(c) for c in crystals]
            for i, c in enumerate(crystals):
                arrays[i] = cache.get(c, keys[i])
            bar.update(sum(a is not None for a in arrays))
        todo = [i for i in range(n) if arrays[i] is None]
        if workers == 1 or (len(todo) < _MIN_PARALLEL and chunk_size is None):
            for i in todo:
                arrays[i] = _build_chunk([crystals[i]], settings, cache,
                                         None if keys is None else [keys[i]])[0]
                bar.update(1)
        elif todo:
            size = chunk_size or max(1, math.ceil(len(todo) / (8 * workers)))
            _build_parallel(crystals, todo, arrays, settings, cache, keys, workers, size, bar)
    finally:
        bar.close()
    return [graph_from_arrays(a, c.source) for a, c in zip(arrays, crystals, strict=True)]
