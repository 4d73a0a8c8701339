"""Atomic writes and safe checkpoints.

Checkpoints are plain dicts of tensors, numbers, strings, lists and dicts, saved with
:func:`torch.save` and loaded with ``weights_only=True`` so that a checkpoint file can never
run code. Every write goes to a temporary file in the target folder and is renamed into place,
so a killed process leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from matmeta._version import __version__
from matmeta.errors import CheckpointError

__all__ = ["atomic_write_bytes", "atomic_write_text", "save_checkpoint", "load_checkpoint"]


def check_writable(path: str | os.PathLike) -> Path:
    """A one-line error unless a file can be written at ``path``: not a folder, and no file
    where one of its folders would go (call before any output of a command is written)."""
    from matmeta.errors import InputError

    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; expected a file name to write")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{path}: cannot write there: {parent} is a file, not a folder")
            break
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    check_writable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write text atomically (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any], kind: str) -> Path:
    """Save ``payload`` atomically, stamped with ``kind`` and the matmeta version.

    ``kind`` names what the checkpoint holds (``"gnn"``, ``"meta"``, ...); :func:`load_checkpoint`
    refuses a file of another kind with a clear message.
    """
    buf = io.BytesIO()
    torch.save({"matmeta_kind": kind, "matmeta_version": __version__, **payload}, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike, kind: str | tuple[str, ...] | None = None,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; check its kind.

    Raises:
        CheckpointError: missing file, unreadable file, a file that would need code to load,
            or a checkpoint of another kind.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    with open(path, "rb") as fh:
        head = fh.read(64).lstrip()
    if head[:1] in (b"{", b"["):
        raise CheckpointError(f"{path}: a JSON file, not a model checkpoint (a prior written by "
                              "`matmeta meta-train --prior` is given with --prior)")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types here
        if head[:2] != b"PK" and head[:1] != b"\x80":  # neither a zip nor a pickle
            why = "not a torch checkpoint file"
        elif "weights only load failed" in str(exc).lower():
            # (torch's own advice, to load with weights_only=False, would let the file run code)
            why = "it holds objects that only code could rebuild, which matmeta never runs"
        else:
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a loadable matmeta checkpoint ({why})") from exc
    if not isinstance(obj, dict) or "matmeta_kind" not in obj:
        raise CheckpointError(f"{path}: not a matmeta checkpoint (no 'matmeta_kind' entry)")
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds is not None and obj["matmeta_kind"] not in kinds:
        raise CheckpointError(
            f"{path}: holds a {obj['matmeta_kind']!r} checkpoint, expected {' or '.join(kinds)}"
        )
    return obj


def to_jsonable(obj: Any) -> Any:
    """Convert tensors / numpy scalars inside ``obj`` to plain Python for JSON output."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    return obj


def dumps_json(obj: Any) -> str:
    """JSON text with NaN written as null (strict JSON readers reject NaN)."""
    def clean(o: Any) -> Any:
        if isinstance(o, float) and o != o:
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, list):
            return [clean(v) for v in o]
        return o

    return json.dumps(clean(to_jsonable(obj)), indent=2)
