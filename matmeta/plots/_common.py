"""What every figure shares: atomic saving in the format the file name asks for."""

from __future__ import annotations

import io
import os
from pathlib import Path

from matplotlib.figure import Figure

from matmeta.checkpoint import atomic_write_bytes

__all__ = ["figure_format", "save_figure"]


def figure_format(path: str | os.PathLike) -> str:
    """The image format a figure path asks for (its suffix; PNG without one), or a one-line
    error naming the formats matplotlib writes (check before writing any other output)."""
    from matplotlib.backend_bases import FigureCanvasBase

    from matmeta.errors import InputError

    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    known = FigureCanvasBase.get_supported_filetypes()
    if fmt not in known:
        raise InputError(f"{path}: cannot write a figure as {fmt!r}; use one of "
                         f"{', '.join('.' + k for k in sorted(known))}")
    return fmt


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 130) -> Path:
    """Save ``fig`` atomically; the format follows the suffix (png, pdf, svg; PNG by default).

    Example:
        >>> save_figure(plot_jmak_fits(curves, result), "fits.png")
    """
    path = Path(path)
    buf = io.BytesIO()
    fmt = figure_format(path)
    fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())
