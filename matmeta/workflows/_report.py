"""Result folders that appear whole or not at all, and the short Markdown report inside them.

A workflow writes its CSV, plots and ``report.md`` into a staging folder beside the destination;
only when everything is written is the staging folder renamed into place. A failure (bad input
found late, a killed process) leaves the destination as it was: nothing half-written.

Example:
    >>> with result_folder("adapted/") as tmp:          # tmp: a staging Path
    ...     table.to_csv(tmp / "predictions.csv", index=False)
    ...     report = Report("Adapted model for Co-Cr-Ni")
    ...     report.table("Predictions", table.head(), note="MPa")
    ...     report.write(tmp / "report.md")
    >>> # adapted/ now holds predictions.csv and report.md
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from matmeta.checkpoint import atomic_write_text
from matmeta.errors import InputError

__all__ = ["MARKER", "Report", "result_folder"]

# marks a folder as matmeta's own result: only such a folder (or an empty one) is replaced
MARKER = ".matmeta-result"


@contextlib.contextmanager
def result_folder(out: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Stage a result folder and publish it atomically when the block ends without error.

    Example:
        >>> with result_folder("screen/") as tmp:
        ...     (tmp / "ranked.csv").write_text("...")

    Args:
        out: the destination folder. An existing folder is replaced only when the new one is
            complete (``overwrite``), and only if it is empty or an earlier matmeta result (it
            holds the ``.matmeta-result`` marker); any other folder or a file is an error.
        overwrite: replace an existing destination folder (else an error naming it).

    Yields:
        The staging folder (on the same file system as ``out``, so the final rename is atomic).

    Raises:
        InputError: ``out`` is a file, or exists and ``overwrite`` is false.
    """
    dest = Path(out)
    if dest.exists() and not dest.is_dir():
        raise InputError(f"{dest}: exists and is not a folder; choose another --out")
    if dest.exists() and not overwrite:
        raise InputError(f"{dest}: already exists; remove it or allow overwriting")
    if dest.exists() and any(dest.iterdir()) and not (dest / MARKER).is_file():
        # only a folder matmeta wrote is ever replaced: a user's folder is never deleted
        raise InputError(f"{dest}: exists and was not written by matmeta; choose another --out "
                         "(or remove the folder yourself)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        (tmp / MARKER).write_text("written by matmeta: the folder may be replaced by a new run\n")
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if dest.exists():
        # Swap in two renames so a reader never sees a folder with half the files.
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
    os.chmod(tmp, 0o755)
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _markdown_table(df: pd.DataFrame, floatfmt: str = ".4g") -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        cells = []
        for v in row:
            if isinstance(v, float):
                cells.append(format(v, floatfmt))
            else:
                cells.append(str(v).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


class Report:
    """A short Markdown report: a title, paragraphs, tables and figures, in the order added.

    Example:
        >>> r = Report("JMAK fit from 3 points")
        >>> r.text("Prior learned from 5 tungsten grades.")
        >>> r.table("Parameters", df)
        >>> r.figure("Fit", "fit.png")             # a path relative to the report
        >>> r.write(folder / "report.md")
    """

    def __init__(self, title: str) -> None:
        self.title = title
        self._parts: list[str] = []

    def text(self, paragraph: str) -> Report:
        self._parts.append(paragraph.strip())
        return self

    def heading(self, title: str) -> Report:
        self._parts.append(f"## {title}")
        return self

    def bullets(self, items: list[str]) -> Report:
        self._parts.append("\n".join(f"- {item}" for item in items))
        return self

    def table(self, title: str | None, df: pd.DataFrame, note: str | None = None,
              max_rows: int = 30) -> Report:
        if title:
            self.heading(title)
        shown = df.head(max_rows)
        self._parts.append(_markdown_table(shown))
        if len(df) > max_rows:
            self._parts.append(f"({len(df) - max_rows} more rows in the CSV.)")
        if note:
            self._parts.append(note)
        return self

    def figure(self, caption: str, path: str | os.PathLike) -> Report:
        self._parts.append(f"![{caption}]({Path(path).as_posix()})")
        return self

    def markdown(self) -> str:
        return f"# {self.title}\n\n" + "\n\n".join(self._parts) + "\n"

    def write(self, path: str | os.PathLike) -> Path:
        return atomic_write_text(path, self.markdown())
