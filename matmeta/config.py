"""Run-time configuration: device choice, thread count, seeding."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from matmeta.errors import InputError

__all__ = ["resolve_device", "set_threads", "seed_everything"]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"`` into a :class:`torch.device`.

    ``auto`` picks CUDA when available, else CPU. Asking for CUDA on a machine without it is
    an :class:`InputError`, not a crash deep inside torch.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise InputError(f"--device {device!r}: expected cpu, cuda, cuda:N or auto") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine; "
                         "use cpu or auto")
    return dev


def set_threads(n: int | None) -> None:
    """Set torch's intra-op thread count (``None`` keeps torch's default, or $MATMETA_THREADS).

    Small-operation workloads (meta-learning, parametric fits) often run faster on 1 thread
    than on 2 on a loaded machine (FINDINGS), so this is a user setting, not a hard-coded value.
    """
    if n is None:
        env = os.environ.get("MATMETA_THREADS")
        if not env:
            return
        n = int(env)
    if n < 1:
        raise InputError(f"--threads {n}: expected a positive integer")
    torch.set_num_threads(n)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator seeded with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def settings_from_dict(cls, d: dict, what: str, error: type[Exception] = InputError):
    """Build the settings dataclass ``cls`` from ``d``, refusing unknown keys in one line.

    Example:
        >>> settings_from_dict(MetaSettings, {"inner_steps": 3}, "meta-learning settings")
    """
    import dataclasses

    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise error(f"unknown {what} {unknown}; expected some of {sorted(known)}")
    return cls(**d)
