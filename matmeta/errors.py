"""Errors that reach users.

Every error raised on bad input is a :class:`MatmetaError`: the command line prints its
message on one line and exits non-zero; ``--debug`` shows the traceback. Messages name the
file, row and field at fault and say what was expected.
"""

from __future__ import annotations

__all__ = ["MatmetaError", "InputError", "CheckpointError", "ConvergenceError", "where"]


class MatmetaError(Exception):
    """Base class of every error matmeta raises on purpose."""


class InputError(MatmetaError, ValueError):
    """Bad user input: a file, a table row, a structure, a parameter value."""


class CheckpointError(MatmetaError):
    """A checkpoint that cannot be used: missing, foreign, or from different settings."""


class ConvergenceError(MatmetaError, RuntimeError):
    """A numerical procedure failed (NaN loss, diverged fit)."""


def where(source: object | None = None, row: int | None = None, field: str | None = None) -> str:
    """Format a location prefix such as ``data.csv, row 7, column 'fraction': ``.

    Example:
        >>> where("data.csv", 7, "fraction")
        "data.csv, row 7, column 'fraction': "
    """
    parts = []
    if source is not None:
        parts.append(str(source))
    if row is not None:
        parts.append(f"row {row}")
    if field is not None:
        parts.append(f"column {field!r}")
    return (", ".join(parts) + ": ") if parts else ""
