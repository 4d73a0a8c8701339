"""What every figure shares: atomic saving in the format the file name asks for."""

from __future__ import annotations

import io
import os
from pathlib import Path

from matplotlib.figure import Figure

from matmeta.checkpoint import atomic_write_bytes

__all__ = ["save_figure"]


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 130) -> Path:
    """Save ``fig`` atomically; the format follows the suffix (png, pdf, svg; PNG by default).

    Example:
        >>> save_figure(plot_jmak_fits(curves, result), "fits.png")
    """
    path = Path(path)
    buf = io.BytesIO()
    fmt = path.suffix.lstrip(".").lower() or "png"
    fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())
